"""Video or image folder -> LASER -> nerfstudio dataset, in one streaming pass (no nerfstudio
import: usable from ``ns-process-data laser``, ``laser`` and plain scripts alike)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laser_plugin.config import LaserConfig
from laser_plugin.errors import InputError
from laser_plugin.integrations.nerfstudio.writer import NerfstudioExportConfig, NerfstudioWriter


@dataclass
class ExportSummary:
    """What one export produced."""

    output_dir: Path
    num_frames: int
    num_points: int
    seconds: float


def provenance_source(src) -> str:
    return str(src) if isinstance(src, Path) else f"an in-memory {type(src).__name__}"


def reconstruct_to_nerfstudio(
    source: str | Path | Iterable,
    output_dir: str | Path,
    *,
    model: Any,
    laser: LaserConfig | None = None,
    export: NerfstudioExportConfig | None = None,
    max_frames: int | None = None,
    stride: int = 1,
    provenance: dict[str, Any] | None = None,
    extra_sinks: tuple = (),
) -> ExportSummary:
    """Stream ``source`` (video file, image folder, or iterable of HxWx3 uint8 arrays) through
    LASER with ``model`` and write a nerfstudio dataset.

    Frames are written as soon as they are final; ``transforms.json`` is written at the end
    (also after an interruption, for the frames finished so far).
    """
    from laser_plugin.engine import StreamingReconstructor

    src = source
    if isinstance(source, (str, Path)):
        src = Path(source).expanduser()
        if not src.exists():
            raise InputError(f"input not found: {src}")
    laser = laser or LaserConfig()
    writer = NerfstudioWriter(
        output_dir,
        export,
        provenance={
            "source": provenance_source(src),
            "model": getattr(model, "name", type(model).__name__),
            "laser_config": laser.to_dict(),
            **(provenance or {}),
        },
    )
    rec = StreamingReconstructor(model, laser)
    start = time.perf_counter()
    for _ in rec.run(src, sinks=[writer, *extra_sinks], max_frames=max_frames, stride=stride):
        pass
    if writer.num_frames == 0:
        raise InputError(f"no frames could be reconstructed from {provenance_source(src)}")
    return ExportSummary(
        Path(output_dir), writer.num_frames, writer.num_points, time.perf_counter() - start
    )
