"""Export a finished (or interrupted) run directory as a nerfstudio dataset or a COLMAP model.

Reads the run only through :func:`laser_plugin.io.run_dir.load_run`, one frame at a time, so the
memory use does not grow with the length of the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from laser_plugin.errors import InputError
from laser_plugin.integrations.nerfstudio.colmap import ColmapExportConfig, ColmapWriter
from laser_plugin.integrations.nerfstudio.pipeline import ExportSummary
from laser_plugin.integrations.nerfstudio.writer import NerfstudioExportConfig, NerfstudioWriter
from laser_plugin.io import lock
from laser_plugin.io.ownership import check_export_outside_run
from laser_plugin.io.run_dir import load_run


def _feed(run_dir: str | Path, writer, resolution: str = "source") -> int:
    # A shared lock: a laser process rewriting the run (--overwrite, --resume) cannot start
    # while it is exported, nor the export while it runs (laser_plugin.io.lock).
    with lock.reading(run_dir):
        run = load_run(run_dir)
        if not run.frames:
            raise InputError(f"run {run.path} holds no finished frames (status: {run.status})")
        # Original frames not kept in the run (format 2 default) are decoded again from its
        # input, in order (one pass over a video); the model-resolution export never reads them.
        source = resolution == "source"
        for i in range(len(run.frames)):
            writer.on_frame(run.load_frame(i, source=source))
        writer.close()
        return len(run.frames)


def export_run_nerfstudio(
    run_dir: str | Path, output_dir: str | Path, config: NerfstudioExportConfig | None = None
) -> ExportSummary:
    """Write ``output_dir`` as a nerfstudio dataset from the run in ``run_dir``."""
    check_export_outside_run(run_dir, output_dir)
    start = time.perf_counter()
    run = load_run(run_dir)
    config = config or NerfstudioExportConfig()
    if config.image_resolution == "source":
        run.check_sources()  # a missing input video/folder in one line, before anything is written
    writer = NerfstudioWriter(
        output_dir,
        config,
        provenance={
            "run_dir": str(Path(run_dir).resolve()),
            "run_status": run.status,
            "run_settings": run.summary.get("settings", {}),
        },
    )
    n = _feed(run_dir, writer, config.image_resolution)
    return ExportSummary(Path(output_dir), n, writer.num_points, time.perf_counter() - start)


def export_run_colmap(
    run_dir: str | Path, output_dir: str | Path, config: ColmapExportConfig | None = None
) -> ExportSummary:
    """Write ``output_dir/images`` and ``output_dir/sparse/0`` from the run in ``run_dir``."""
    check_export_outside_run(run_dir, output_dir)
    start = time.perf_counter()
    run = load_run(run_dir)  # a clear error before anything is created
    config = config or ColmapExportConfig()
    if config.image_resolution == "source":
        run.check_sources()
    writer = ColmapWriter(output_dir, config)
    n = _feed(run_dir, writer, config.image_resolution)
    points = 0 if writer._cloud is None else len(writer._cloud)
    return ExportSummary(Path(output_dir), n, points, time.perf_counter() - start)
