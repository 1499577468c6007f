"""Replay a finished (or interrupted) run directory into Rerun: ``laser view RUN --rerun SPEC``."""

from __future__ import annotations

from pathlib import Path

from laser_plugin.errors import InputError
from laser_plugin.io.run_dir import load_run
from laser_plugin.types import WindowStats

from .config import RerunConfig
from .sink import RerunSink
from .spec import RerunTarget, parse_rerun_spec


def _window_stats(record: dict) -> WindowStats | None:
    """A ``summary.json`` window record back into :class:`WindowStats` (None if malformed)."""
    try:
        first, last = (int(v) for v in record["frames"])
        return WindowStats(
            window=int(record["window"]),
            frame_indices=list(range(first, last + 1)),
            new_frame_indices=[],
            scale=float(record["scale"]),
            depth_residual=float(record["depth_residual"]),
            pose_residual=float(record["pose_residual"]),
            overlap_pixels=int(record.get("overlap_pixels", 0)),
            num_layers=float(record["num_layers"]),
            layer_scale_spread=float(record["layer_scale_spread"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def replay(
    run_dir: str | Path, spec: str | RerunTarget = "spawn", config: RerunConfig | None = None
) -> RerunSink:
    """Log every frame of ``run_dir`` (and its window statistics) as the live run did; returns the
    closed sink (its ``url`` says where the recording went)."""
    run = load_run(run_dir)
    if not run.frames:
        raise InputError(f"{run_dir} holds no finished frames to replay")
    target = spec if isinstance(spec, RerunTarget) else parse_rerun_spec(spec)
    windows = [
        w for w in map(_window_stats, run.summary.get("window_stats") or []) if w is not None
    ]
    windows.sort(key=lambda w: w.frame_indices[-1])
    sink = RerunSink(target.mode, target.path_or_url, config)
    try:
        pending = 0
        for i, record in enumerate(run.frames):
            sink.on_frame(run.load_frame(i))
            # A window's statistics go out once its last frame is in, as they did live.
            while pending < len(windows) and windows[pending].frame_indices[-1] <= record.index:
                sink.log_window_stats(windows[pending])
                pending += 1
        for w in windows[pending:]:
            sink.log_window_stats(w)
    finally:
        sink.close()
    return sink
