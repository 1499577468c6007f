"""One stream into one run directory, built the same way by every driver.

``laser run`` (:func:`laser_plugin.cli.run.execute`) and a batch task
(:func:`laser_plugin.batch.task.run_job`) both open a :class:`Session`: the engine for the chosen
predictor (:mod:`laser_plugin.predictors`: inline by default, or pipelined, per-device replicas,
worker processes), loop closure attached as a hook whatever the predictor, the run writer, and the saver
of the state a resumed run continues from, in that order. So the features combine the same way
whoever drives the run, and a resumed run continues exactly (its state, loop closure's included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.io.run_dir import RunWriter
from laser_plugin.predictors import Predictor
from laser_plugin.resume import EngineState, StateSaver
from laser_plugin.types import ReconstructedFrame


class LoopNotes:
    """Sink after the run writer: loop closure's counts in summary.json (``loop_closure``), and
    whether it ran at all (a backend without place descriptors turns it off)."""

    def __init__(self, writer: RunWriter, loop) -> None:
        self.writer, self.loop = writer, loop

    def on_window(self, stats) -> None:
        self.writer.extra["loop_closure"] = {"enabled": self.loop.enabled, **self.loop.counts}

    def close(self) -> None:
        pass


def loop_settings(loop_closure: bool) -> dict[str, Any]:
    """The part of a run's settings loop closure adds (it changes the frames, so a resumed run
    must match it): on/off and its settings (the defaults: drivers expose no loop options)."""
    from laser_plugin.loop import LoopClosure

    return {
        "loop_closure": loop_closure,
        "loop": LoopClosure().settings() if loop_closure else None,
    }


@dataclass
class Session:
    """An engine wired to a run directory (see module doc); :meth:`run` streams the frames."""

    engine: StreamingReconstructor
    writer: RunWriter
    sinks: list = field(default_factory=list)
    state: EngineState | None = None
    """The saved state this session continues from (None: from the first frame)."""

    def run(self, source: Any, **kw) -> Iterator[ReconstructedFrame]:
        """``engine.run`` over ``source`` into the sinks (``kw``: max_frames, fps, stride)."""
        yield from self.engine.run(source, self.sinks, resume=self.state, **kw)
        for hook in self.engine.hooks:  # a complete run is not resumed: its spill is not needed
            hook.cleanup()


def build_engine(
    model: Any,
    config: LaserConfig,
    *,
    predictor: Predictor | None = None,
    loop_closure: bool = False,
    loop_dir: Path | None = None,
    loop_archive: Any = None,
    keep_source_images: bool = False,
) -> StreamingReconstructor:
    """The engine every driver runs (``laser run`` and batch through :func:`open_session`,
    ``laser eval`` directly, as it writes no run directory): the predictor and, with
    ``loop_closure``, the loop-closure hook with its records in ``loop_dir`` (None: a temporary
    directory) and moved frames found in ``loop_archive`` (None: loop closure keeps them)."""
    hooks = []
    if loop_closure:
        from laser_plugin.loop import LoopClosure, LoopConfig

        spill = None if loop_dir is None else str(loop_dir)
        hooks.append(LoopClosure(LoopConfig(spill_dir=spill), loop_archive))
    return StreamingReconstructor(
        model, config, keep_source_images=keep_source_images, hooks=hooks, predictor=predictor
    )


def open_session(
    out: Path,
    model: Any,
    config: LaserConfig,
    settings: dict[str, Any],
    *,
    state: EngineState | None = None,
    predictor: Predictor | None = None,
    loop_closure: bool = False,
    save_source_images: bool | None = None,
    outputs: str | None = None,
    checkpoint_interval: float = 0.0,
    extra_sinks: Sequence = (),
) -> Session:
    """Build the session of a run directory ``out`` (already prepared and locked).

    ``predictor``: where the network runs (:mod:`laser_plugin.predictors`; default inline).
    ``loop_closure``: its keyframes and pose log go to ``out/state/loop-*`` beside the resume
    state (a resumed run continues the same pose graph); frames a loop moves are read back from
    the run directory itself (:class:`~laser_plugin.loop.archive.RunDirFrames`).
    ``extra_sinks`` come after the writer and the state saver.
    """
    writer = RunWriter(
        out,
        settings=settings,
        save_source_images=save_source_images,
        resume_frames=None if state is None else state.num_frames,
        outputs=outputs,
    )
    if state is not None:
        writer.num_windows = state.num_windows
        writer.window_stats = [
            w for w in writer.window_stats if w.get("window", 0) < state.num_windows
        ]
    from laser_plugin.loop.archive import RunDirFrames

    engine = build_engine(
        model,
        config,
        predictor=predictor,
        loop_closure=loop_closure,
        loop_dir=Path(out) / "state",
        # Moved frames are read back from the run itself: each frame is written once.
        loop_archive=RunDirFrames(writer) if loop_closure else None,
        keep_source_images=writer.save_source_images,
    )
    writer.engine_timings = engine.timings  # stage timings into summary.json
    sinks = [
        writer,  # first: it makes the window's frames durable...
        # ...then the state that refers to them, saved only once they are.
        StateSaver(engine, out, settings, checkpoint_interval, before_save=writer.wait_durable),
        *[LoopNotes(writer, h) for h in engine.hooks],
        *extra_sinks,
    ]
    return Session(engine, writer, sinks, state)
