"""One stream on several model replicas: same frames as the single-device run, in order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.errors import ConfigError
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.multi_device import load_replicas, parse_devices
from laser_plugin.predictors import Replicas


@pytest.fixture(scope="module")
def scene():
    return make_scene("demo", 40, 64, 112)


@pytest.fixture(scope="module")
def single_run(scene):
    return StreamingReconstructor(
        make_model(scene=scene), LaserConfig(window_size=8, overlap=3)
    ).reconstruct(scene.frames())


def assert_same_frames(frames, reference):
    assert [f.index for f in frames] == [f.index for f in reference]
    for f, r in zip(frames, reference):
        assert f.window == r.window
        np.testing.assert_array_equal(f.image, r.image)
        np.testing.assert_array_equal(f.cam_to_world, r.cam_to_world)
        np.testing.assert_array_equal(f.intrinsics, r.intrinsics)
        np.testing.assert_array_equal(f.depth, r.depth)
        np.testing.assert_array_equal(f.conf, r.conf)
        np.testing.assert_array_equal(f.layers, r.layers)


def test_two_cpu_replicas_equal_single_device(scene, single_run):
    replicas = load_replicas("synthetic", parse_devices("cpu,cpu"), scene=scene)
    assert len(replicas) == 2 and replicas[0] is not replicas[1]
    p = Replicas(replicas)
    engine = StreamingReconstructor(replicas[0], LaserConfig(window_size=8, overlap=3), predictor=p)
    frames = engine.reconstruct(scene.frames())
    assert len(frames) == scene.num_frames
    assert_same_frames(frames, single_run)
    assert sum(p.windows_per_replica) == engine.num_windows == single_run[-1].window + 1
    assert p.max_buffered <= p.max_pending == 4


class _Slow:
    """A replica that takes a varying time per window, so predictions finish out of order."""

    def __init__(self, model, delays, log):
        self.model, self.delays, self.log = model, delays, log
        self.input_size = model.input_size

    def __call__(self, images):
        n = len(self.log)
        self.log.append(threading.current_thread().name)
        time.sleep(self.delays[n % len(self.delays)])
        return self.model(images)


def test_out_of_order_completion_keeps_stream_order(scene, single_run):
    log_a, log_b = [], []
    replicas = [
        _Slow(make_model(scene=scene), [0.2, 0.0, 0.1], log_a),
        _Slow(make_model(scene=scene), [0.0, 0.05], log_b),
    ]

    class Order:
        def __init__(self):
            self.frames, self.windows, self.closed = [], [], False

        def on_frame(self, f):
            self.frames.append(f.index)

        def on_window(self, stats):
            self.windows.append(stats.window)

        def close(self):
            self.closed = True

    sink = Order()
    p = Replicas(replicas, max_pending=3)
    engine = StreamingReconstructor(replicas[0], LaserConfig(window_size=8, overlap=3), predictor=p)
    frames = list(engine.run(scene.frames(), [sink]))
    assert_same_frames(frames, single_run)
    assert sink.frames == list(range(scene.num_frames)) and sink.closed
    assert sink.windows == sorted(sink.windows) == list(range(len(sink.windows)))
    # Both replicas worked, and the slow one did not hold the stream back to one window at a time.
    assert log_a and log_b and len(log_a) + len(log_b) == len(sink.windows)
    assert p.max_buffered == 3
    assert engine.timings["model"] > 0


def test_replica_failure_stops_the_stream_and_interrupts_sinks(scene):
    class Broken:
        input_size = staticmethod(lambda h, w: (h, w))

        def __call__(self, images):
            raise RuntimeError("device lost")

    class Sink:
        interrupted = closed = None

        def on_frame(self, f):
            pass

        def on_interrupt(self, exc):
            self.interrupted = exc

        def close(self):
            self.closed = True

    sink = Sink()
    replicas = [make_model(scene=scene), Broken()]
    engine = StreamingReconstructor(
        replicas[0], LaserConfig(window_size=8, overlap=3), predictor=Replicas(replicas)
    )
    with pytest.raises(RuntimeError, match="device lost"):
        list(engine.run(scene.frames(), [sink]))
    assert isinstance(sink.interrupted, RuntimeError) and sink.closed


def test_parse_devices():
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"]
    assert parse_devices(["cpu"]) == ["cpu"]
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available"):
            parse_devices("cuda:0,cuda:1")
        with pytest.raises(ConfigError, match="no CUDA device"):
            parse_devices("all")
    with pytest.raises(ConfigError, match="not a device name"):
        parse_devices("gpu0")
    with pytest.raises(ConfigError, match="empty"):
        parse_devices(" , ")
    with pytest.raises(ConfigError):
        Replicas([])


def test_resume_from_a_single_device_state(scene, single_run):
    """A run stopped after three windows continues on two replicas with the frames it lacked."""
    from laser_plugin.resume import capture, from_bytes, to_bytes

    first = StreamingReconstructor(make_model(scene=scene), LaserConfig(window_size=8, overlap=3))
    done = []
    for frame in first.run(scene.frames()):
        done.append(frame)
        if first.num_windows == 3 and len(done) == first.num_frames:
            break
    state = from_bytes(to_bytes(capture(first)))
    assert state.num_windows == 3
    replicas = load_replicas("synthetic", ["cpu", "cpu"], scene=scene)
    p = Replicas(replicas)
    engine = StreamingReconstructor(replicas[0], LaserConfig(window_size=8, overlap=3), predictor=p)
    rest = list(engine.run(scene.frames(), resume=state))
    assert_same_frames(done + rest, single_run)
    assert sum(p.windows_per_replica) == single_run[-1].window + 1 - 3
