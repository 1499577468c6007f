"""The work of one batch task: reconstruct one video into its run directory.

Plain Python with no Ray import, so it runs (and is tested) the same inside a Ray worker and in
this process. Failures come back as a result record rather than an exception, with ``retryable``
saying whether another attempt could help: a user error (unreadable input, bad settings) fails the
same way every time, anything else (a device out of memory, a lost node) may not.
"""

from __future__ import annotations

import socket
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laser_plugin.batch.manifest import Job
from laser_plugin.config import LaserConfig
from laser_plugin.errors import LaserError


@dataclass
class TaskSpec:
    """Everything a task needs besides its video (shipped once to every worker)."""

    model: str = "pi3"
    """Backend name in the ``laser_plugin.models`` registry."""
    weights: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the backend's factory. For ``synthetic``: ``scene`` (a name),
    ``num_frames``, ``height``, ``width``, ``seed`` select the synthetic scene the inputs were
    rendered from (the emulated model recognises only its own scene's frames)."""
    laser: LaserConfig = field(default_factory=LaserConfig)
    device: str = "cpu"
    """Device inside the task (``cuda`` is the GPU Ray assigned to it)."""
    threads: int = 1
    """CPU threads for torch inside the task."""
    stride: int = 1
    fps: float = 30.0
    max_frames: int | None = None
    save_source_images: bool = True
    model_factory: Callable[[str], Any] | None = None
    """Python API only: ``factory(device) -> model``, used instead of the registry."""


_MODEL_CACHE: dict[tuple, Any] = {}


def build_model(spec: TaskSpec):
    """The task's model; cached per worker process, since Ray reuses workers across tasks."""
    if spec.model_factory is not None:
        return spec.model_factory(spec.device)
    key = (
        spec.model,
        spec.weights,
        spec.device,
        tuple(sorted((k, repr(v)) for k, v in spec.model_options.items())),
    )
    if key not in _MODEL_CACHE:
        from laser_plugin.models import load_model

        _MODEL_CACHE.clear()  # one model per worker: a GPU holds one replica at a time
        _MODEL_CACHE[key] = load_model(
            spec.model, weights=spec.weights, device=spec.device, **spec.model_options
        )
    return _MODEL_CACHE[key]


class _BatchNotes:
    """Sink beside the run writer: reports fleet progress after each window, and puts a failed
    run's error in its summary.json (on_interrupt comes before the writer's close)."""

    def __init__(self, writer, on_window: Callable[[int], None] | None = None):
        self.writer = writer
        self._on_window = on_window

    def on_window(self, stats) -> None:
        if self._on_window is not None:
            self._on_window(self.writer.num_frames)

    def on_interrupt(self, exc: BaseException) -> None:
        self.writer.extra["error"] = _one_line(exc)

    def close(self) -> None:
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_job(
    job: Job,
    output_root: str,
    spec: TaskSpec,
    attempt: int = 1,
    report: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Reconstruct ``job`` into ``output_root/job.name``; return its result record.

    ``report(name, frames_so_far)`` is called after each window (fleet progress).
    """
    import torch

    from laser_plugin.engine import StreamingReconstructor
    from laser_plugin.io.run_dir import RunWriter, prepare_output_dir

    start = time.perf_counter()
    record: dict[str, Any] = {
        "name": job.name,
        "path": job.path,
        "output": str(Path(output_root) / job.name),
        "attempt": attempt,
        "host": socket.gethostname(),
        "device": spec.device,
    }
    writer = None
    try:
        torch.set_num_threads(max(1, spec.threads))
        out = prepare_output_dir(Path(output_root) / job.name, overwrite=True)
        model = build_model(spec)
        settings = {
            "command": "batch",
            "input": job.path,
            "name": job.name,
            "model": spec.model,
            "weights": spec.weights,
            "device": spec.device,
            "stride": spec.stride,
            "attempt": attempt,
        }
        writer = RunWriter(out, settings=settings, save_source_images=spec.save_source_images)
        notes = _BatchNotes(writer, None if report is None else (lambda n: report(job.name, n)))
        engine = StreamingReconstructor(
            model, spec.laser, keep_source_images=spec.save_source_images
        )
        # Warnings are kept in engine.warnings (and the record), not printed by every worker.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            frames = engine.run(
                job.path,
                [writer, notes],
                max_frames=spec.max_frames,
                fps=spec.fps,
                stride=spec.stride,
            )
            for _ in frames:
                pass
        seconds = time.perf_counter() - start
        record.update(
            ok=True,
            frames=writer.num_frames,
            windows=writer.num_windows,
            seconds=round(seconds, 3),
            warnings=len(engine.warnings),
            first_warning=engine.warnings[0] if engine.warnings else None,
        )
    except Exception as exc:
        record.update(
            ok=False,
            retryable=not isinstance(exc, LaserError),
            error=_one_line(exc),
            traceback=None if isinstance(exc, LaserError) else traceback.format_exc(limit=8),
            frames=writer.num_frames if writer is not None else 0,
            seconds=round(time.perf_counter() - start, 3),
        )
    return record
