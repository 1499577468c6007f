"""Every way of predicting windows x loop closure on/off x resumed after an interrupt or not.

Each combination must give the sinks the frames of the inline, uninterrupted run (byte for byte:
on the CPU every predictor computes the same numbers in the same order), or be refused at start
in one line. The stream is two laps of the synthetic loop scene, so loops are closed both before
and after the interruption, and the frames a loop moved come back through ``on_correction``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sink_helpers import StopAfter

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.errors import ConfigError
from laser_plugin.loop import LoopClosure, LoopConfig
from laser_plugin.models.synthetic import make_model
from laser_plugin.predictors import Pipelined, Replicas, Workers
from laser_plugin.resume import StateSaver, load_state
from laser_plugin.worker import WorkerPool, model_factory

SCENE = dict(scene="loop", num_frames=50, height=32, width=56, drift_rot_deg=0.15, drift_scale=0.02)
LAPS = 2
CONFIG = LaserConfig(window_size=8, overlap=3)
STOP_AFTER = 11  # windows; loops are closed at windows 9, 13 and 17 of 20
PREDICTORS = ("inline", "pipelined", "replicas", "workers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small tensors: torch's thread pool only adds contention (and time) here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frames():
    scene = make_model(**SCENE).scene
    return [f for _ in range(LAPS) for f in scene.frames()]


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(model_factory("synthetic", **SCENE), ["cpu", "cpu"], threads=1) as p:
        yield p


class Final:
    """What the sinks end up with: each frame as last sent (``on_frame``, then corrections)."""

    def __init__(self, frames: dict | None = None):
        self.frames = {} if frames is None else frames
        self.corrections = 0

    def on_frame(self, frame):
        self.frames[frame.index] = frame

    def on_correction(self, frames):
        self.corrections += len(frames)
        for f in frames:
            self.frames[f.index] = f

    def close(self):
        pass


def build(predictor: str, loop: bool, spill, pool):
    """The engine for one way of predicting (every one runs the same loop)."""
    hooks = [LoopClosure(LoopConfig(spill_dir=str(spill)))] if loop else []
    model = pool if predictor == "workers" else make_model(**SCENE)
    strategy = {
        "inline": lambda: None,
        "pipelined": lambda: Pipelined(),
        "replicas": lambda: Replicas([model, make_model(**SCENE)]),
        "workers": lambda: Workers(pool, sink_thread=True),
    }[predictor]()
    return StreamingReconstructor(model, CONFIG, hooks=hooks, predictor=strategy)


def run(predictor, loop, frames, tmp_path, pool, stop_after=None, final=None, resume=None):
    """One run into ``final``; returns the engine."""
    rec = build(predictor, loop, tmp_path / "spill", pool)
    final = final if final is not None else Final()
    sinks = [final, StateSaver(rec, tmp_path / "out", {})]
    if stop_after is not None:
        sinks.append(StopAfter(stop_after))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in rec.run(frames, sinks, resume=resume):
            pass
    return rec


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory, pool):
    """The inline, uninterrupted run, with and without loop closure."""
    out = {}
    for loop in (False, True):
        final = Final()
        rec = run("inline", loop, frames, tmp_path_factory.mktemp("ref"), pool, final=final)
        out[loop] = (final, rec)
    return out


def test_the_reference_closes_loops_on_both_sides_of_the_interruption(reference, frames):
    final, rec = reference[True]
    plain, _ = reference[False]
    assert sorted(final.frames) == sorted(plain.frames) == list(range(len(frames)))
    accepted = [e.window for e in rec.loop.events if e.accepted]
    assert min(accepted) < STOP_AFTER <= max(accepted), accepted
    assert final.corrections > 0
    # The loops matter: without them the trajectory is another one.
    moved = max(
        np.abs(final.frames[i].cam_to_world - plain.frames[i].cam_to_world).max()
        for i in final.frames
    )
    assert moved > 1e-2


@pytest.mark.parametrize("interrupted", [False, True], ids=["straight", "resumed"])
@pytest.mark.parametrize("loop", [False, True], ids=["plain", "loop"])
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_every_combination_gives_the_inline_frames(
    predictor, loop, interrupted, frames, reference, tmp_path, pool
):
    final = Final()
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            run(predictor, loop, frames, tmp_path, pool, stop_after=STOP_AFTER, final=final)
        state = load_state(tmp_path / "out")
        # The state of the window before the one interrupted in its sinks.
        assert state is not None and state.num_windows == STOP_AFTER - 1
        assert ("loop" in state.hooks) == loop
        rec = run(predictor, loop, frames, tmp_path, pool, final=final, resume=state)
    else:
        rec = run(predictor, loop, frames, tmp_path, pool, final=final)
    ref, ref_rec = reference[loop]
    assert sorted(final.frames) == sorted(ref.frames)
    for i, r in ref.frames.items():
        f = final.frames[i]
        assert f.window == r.window, i
        for key in ("cam_to_world", "intrinsics", "depth", "conf", "layers"):
            np.testing.assert_array_equal(getattr(f, key), getattr(r, key), err_msg=f"{key} {i}")
    if loop:
        assert list(rec.loop.events) == list(ref_rec.loop.events)
        assert rec.loop.counts == ref_rec.loop.counts


def test_a_state_with_loop_closure_is_not_resumed_without_it(frames, tmp_path, pool):
    with pytest.raises(KeyboardInterrupt):
        run("inline", True, frames, tmp_path, pool, stop_after=3)
    state = load_state(tmp_path / "out")
    rec = build("inline", False, tmp_path / "spill", pool)
    with pytest.raises(ConfigError, match="cannot resume") as err:
        rec.start_stream(state)
    assert "\n" not in str(err.value)
    # Nor the other way round.
    with pytest.raises(KeyboardInterrupt):
        run("inline", False, frames, tmp_path / "b", pool, stop_after=3)
    rec = build("inline", True, tmp_path / "spill", pool)
    with pytest.raises(ConfigError, match="cannot resume"):
        rec.start_stream(load_state(tmp_path / "b" / "out"))


def test_loop_closure_and_its_settings_are_in_the_resume_fingerprint():
    from laser_plugin.resume import check_settings
    from laser_plugin.session import loop_settings

    on = loop_settings(True)
    check_settings(on, loop_settings(True))
    with pytest.raises(ConfigError, match="loop_closure"):
        check_settings(on, loop_settings(False))
    changed = {**on, "loop": {**on["loop"], "min_similarity": 0.5}}
    with pytest.raises(ConfigError, match=r"loop\.min_similarity"):
        check_settings(on, changed)
    # Where the records spill is not a result-changing setting.
    assert "spill_dir" not in on["loop"]
