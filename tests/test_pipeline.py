"""The pipelined predictor gives the same frames as the plain engine (synthetic scene, CPU)."""

import numpy as np
import pytest
import torch
from sink_helpers import Recorder

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.fast import accelerate
from laser_plugin.models.pi3 import make_model as make_pi3
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.models.synthetic.evaluate import evaluate_frames
from laser_plugin.predictors import Pipelined


def _assert_same(a, b):
    assert [f.index for f in a] == [f.index for f in b]
    for x, y in zip(a, b, strict=True):
        assert x.window == y.window
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.depth, y.depth)
        np.testing.assert_array_equal(x.conf, y.conf)
        np.testing.assert_array_equal(x.cam_to_world, y.cam_to_world)
        np.testing.assert_array_equal(x.intrinsics, y.intrinsics)
        np.testing.assert_array_equal(x.layers, y.layers)


@pytest.mark.parametrize("estimate", ["earlier", "later"])
def test_pipelined_frames_equal_plain_engine(estimate):
    scene = make_scene("demo", 40, 64, 112)
    cfg = LaserConfig(window_size=10, overlap=3, overlap_estimate=estimate)
    plain_sink, piped_sink = Recorder(), Recorder()
    plain = StreamingReconstructor(make_model(scene=scene), cfg).reconstruct(
        scene.frames(), [plain_sink]
    )
    runner = StreamingReconstructor(make_model(scene=scene), cfg, predictor=Pipelined())
    piped = runner.reconstruct(scene.frames(), [piped_sink])
    assert len(piped) == 40
    _assert_same(piped, plain)
    # Sinks see the same calls in the same order, and are closed.
    assert piped_sink.calls == plain_sink.calls and piped_sink.closed
    assert {"decode", "predict", "align", "sinks"} <= set(runner.timings)
    # And the result is still an accurate reconstruction of the ground truth.
    assert evaluate_frames(piped, scene)["ate"] == evaluate_frames(plain, scene)["ate"]


def test_pipelined_fast_pi3_with_token_cache_equals_plain_engine():
    """Tiny π³ in fp32: the fast path (cached overlap tokens) through the pipeline gives the same
    frames as the reference model through the plain engine."""
    rng = np.random.default_rng(0)
    canvas = (rng.random((56, 84 + 3 * 14, 3)) * 255).astype(np.uint8)
    frames = [canvas[:, 3 * i : 3 * i + 84].copy() for i in range(14)]
    cfg = LaserConfig(window_size=6, overlap=2)
    ref = StreamingReconstructor(make_pi3(size="tiny", random_init=True), cfg).reconstruct(frames)
    fast = accelerate(make_pi3(size="tiny", random_init=True), dtype=torch.float32)
    piped = StreamingReconstructor(fast, cfg, predictor=Pipelined()).reconstruct(frames)
    assert fast.cache.hits > 0
    _assert_same(piped, ref)


class Boom(Exception):
    pass


def test_failure_in_the_network_thread_reaches_the_caller_and_sinks():
    scene = make_scene("demo", 30, 64, 112)
    model = make_model(scene=scene)
    calls = {"n": 0}

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("network failed")
        return model(images)

    sink = Recorder()
    runner = StreamingReconstructor(
        flaky, LaserConfig(window_size=10, overlap=3), predictor=Pipelined()
    )
    got = []
    with pytest.raises(Boom):
        for f in runner.run(scene.frames(), [sink]):
            got.append(f.index)
    assert got == list(range(10))  # the first window's frames came out before the failure
    assert sink.calls[-1] == ("interrupt", "Boom") and sink.closed


def test_stopping_early_ends_the_worker_threads():
    import threading

    scene = make_scene("demo", 40, 64, 112)
    runner = StreamingReconstructor(
        make_model(scene=scene), LaserConfig(window_size=10, overlap=3), predictor=Pipelined()
    )
    gen = runner.run(scene.frames())
    first = next(gen)
    gen.close()
    assert first.index == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("laser-")]


class DiskFull:
    """An essential sink (like the run writer) that fails on its fifth frame."""

    essential = True

    def __init__(self):
        self.frames = 0
        self.interrupted = None
        self.closed = False

    def on_frame(self, frame):
        self.frames += 1
        if self.frames == 5:
            raise OSError(28, "No space left on device")

    def on_interrupt(self, exc):
        self.interrupted = exc

    def close(self):
        self.closed = True


@pytest.mark.parametrize("sink_thread", [True, False])
def test_essential_sink_failure_stops_the_run(sink_thread):
    # A failing essential sink must end the run with its error (not hang the caller on a full
    # sink queue, not finish as if the results were complete).
    scene = make_scene("demo", 60, 64, 112)
    runner = StreamingReconstructor(
        make_model(scene=scene),
        LaserConfig(window_size=10, overlap=3),
        predictor=Pipelined(sink_thread=sink_thread),
    )
    sink = DiskFull()
    with pytest.raises(OSError, match="No space"):
        for _ in runner.run(scene.frames(), [sink]):
            pass
    assert sink.frames == 5 and sink.closed
    assert isinstance(sink.interrupted, OSError)
