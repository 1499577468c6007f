"""The work of one batch task: reconstruct one video into its run directory.

Plain Python with no Ray import, so it runs (and is tested) the same inside a Ray worker and in
this process. Failures come back as a result record rather than an exception, with ``retryable``
saying whether another attempt could help: a user error (unreadable input, bad settings) fails the
same way every time, anything else (a device out of memory, a lost node) may not.
"""

from __future__ import annotations

import dataclasses
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
    loop_closure: bool = False
    """Close loops, as ``laser run`` does by default (off here: a batch of separate videos is
    usually reconstructed as plain LASER). Works with ``resume_partial``."""
    resume_partial: bool = True
    """Continue an unfinished run of the same video and settings from its last finished window
    (the engine state saved after every window) instead of starting it again."""
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
            # Frames taken in: the writer commits them in its own thread, a little later.
            self._on_window(self.writer.frames_received)

    def on_interrupt(self, exc: BaseException) -> None:
        self.writer.extra["error"] = _one_line(exc)

    def close(self) -> None:
        pass


def _resumable_state(run_dir: Path, settings: dict[str, Any]):
    """The engine state of an unfinished run of the same video and settings in ``run_dir``, if
    any (a crashed or preempted attempt continues from its last finished window)."""
    from laser_plugin.resume import check_settings, load_state, read_settings

    if not (run_dir / "summary.json").is_file() or read_settings(run_dir, "status") == "complete":
        return None  # nothing to continue, or a finished run being redone (--force)
    try:
        state = load_state(run_dir)
        if state is not None:
            check_settings(state.settings, settings)
    except LaserError:  # unreadable, or other settings: start again
        return None
    return state


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

    from laser_plugin.errors import OutputError
    from laser_plugin.io import lock, ownership
    from laser_plugin.io.run_dir import prepare_output_dir
    from laser_plugin.resume import input_fingerprint
    from laser_plugin.session import loop_settings, open_session

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
    run_dir = Path(output_root) / job.name
    try:
        torch.set_num_threads(max(1, spec.threads))
        ownership.check_input_outside_output(job.path, run_dir)
        model = build_model(spec)
        settings = {
            "command": "batch",
            "input": job.path,
            "input_digest": input_fingerprint(job.path),  # a changed input is started again
            "name": job.name,
            "model": spec.model,
            "weights": spec.weights,
            "model_options": {k: repr(v) for k, v in sorted(spec.model_options.items())},
            "device": spec.device,
            "laser": dataclasses.asdict(spec.laser),
            "stride": spec.stride,
            "fps": spec.fps,
            "max_frames": spec.max_frames,
            "save_source_images": spec.save_source_images,
            **loop_settings(spec.loop_closure),
        }
        state = _resumable_state(run_dir, settings) if spec.resume_partial else None
        # A batch has no --overwrite: it replaces only a run an earlier batch made (and of that,
        # prepare_output_dir removes only the run's own files); anything else is left alone.
        if (
            state is None
            and ownership.entries(run_dir)
            and ownership.run_command(run_dir) != "batch"
        ):
            raise OutputError(
                f"{run_dir} is not empty and holds no earlier batch run, so nothing in it is "
                "replaced: move it away or choose another --output-root"
            )
        out = prepare_output_dir(run_dir, overwrite=state is None, resume=state is not None)
        notes = _BatchNotes(None, None if report is None else (lambda n: report(job.name, n)))
        session = open_session(
            out,
            model,
            spec.laser,
            settings,
            state=state,
            loop_closure=spec.loop_closure,
            save_source_images=spec.save_source_images,
            extra_sinks=[notes],
        )
        engine, writer = session.engine, session.writer
        notes.writer = writer
        writer.extra["batch_attempt"] = attempt
        if state is not None:
            record["resumed_frames"] = state.num_frames
        # Warnings are kept in engine.warnings (and the record), not printed by every worker.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            frames = session.run(
                job.path, max_frames=spec.max_frames, fps=spec.fps, stride=spec.stride
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
    finally:
        lock.release(run_dir)  # Ray reuses this worker process for other tasks
    return record
