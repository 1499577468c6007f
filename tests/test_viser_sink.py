"""ViserSink on a real viser server (no browser): counts, bounds, pause back-pressure, scrubbing,
pose corrections, the exposure warning, the engine and run-directory replay.

The browser side is in test_viser_browser.py. Runs with viser 0.2.7 and 1.1.x.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("viser")

from laser_plugin.errors import InputError
from laser_plugin.integrations.viser import ViserSink, make_viser_sink, replay
from laser_plugin.types import ReconstructedFrame

H, W = 24, 32
K = np.array([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]])


def make_frame(index: int, depth: float = 2.0) -> ReconstructedFrame:
    """Camera ``index`` steps of 0.1 along +x, looking at the plane z_world = depth."""
    cam_to_world = np.eye(4)
    cam_to_world[0, 3] = 0.1 * index
    v, u = np.mgrid[0:H, 0:W]
    image = np.stack([u * 8, v * 10, np.full_like(u, 120)], -1).astype(np.uint8)
    return ReconstructedFrame(
        index=index,
        timestamp=index / 30,
        image=image,
        cam_to_world=cam_to_world,
        intrinsics=K,
        depth=np.full((H, W), depth, np.float32),
        conf=np.full((H, W), 0.8, np.float32),
        layers=np.zeros((H, W), np.int16),
    )


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def sink():
    s = make_viser_sink(port=0, update_interval=0.05, verbose=False)
    yield s
    s.stop()


def test_counts_readout_and_bounded_cloud(sink: ViserSink):
    for i in range(10):
        sink.on_frame(make_frame(i))
    sink.close()
    assert sink.frames_received == 10
    assert sink.num_frustums == 10
    cloud = sink._cloud
    assert cloud is not None and sink.points_shown == len(cloud) > 0
    # All cloud points lie on the planted plane z = 2.
    np.testing.assert_allclose(cloud.points[:, 2], 2.0, atol=1e-5)
    text = sink._controls.readout.content
    assert "finished" in text and "10 frames" in text and f"{len(cloud)} points shown" in text
    assert int(sink._controls.frame.value) == 9


def test_cloud_bound_and_frustum_thinning():
    s = make_viser_sink(port=0, max_points=500, max_frustums=4, verbose=False)
    try:
        for i in range(10):
            s.on_frame(make_frame(i))
        s.flush()
        assert 0 < s.points_shown <= 500
        # 5th frustum -> keep every 2nd; 5th again -> every 4th: frames 0, 4, 8.
        assert sorted(s._frustums) == [0, 4, 8]
    finally:
        s.stop()


def _producer(sink: ViserSink, indices, done: threading.Event, errors: list, returned=None):
    try:
        for i in indices:
            sink.on_frame(make_frame(i))
            if returned is not None:
                returned.append(i)  # on_frame came back: the engine could go on
            time.sleep(0.01)
    except Exception as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        done.set()


def test_pause_blocks_the_producer_and_resume_releases_it(sink: ViserSink):
    done, errors, returned = threading.Event(), [], []
    sink.on_frame(make_frame(0))
    sink.flush()
    sink.pause()
    thread = threading.Thread(target=_producer, args=(sink, range(1, 30), done, errors, returned))
    thread.start()
    time.sleep(0.6)
    assert sink.paused and not done.is_set()
    assert returned == []  # the engine's call blocks: no frame is buffered behind the pause
    assert sink.frames_received == 1  # the producer is stuck in on_frame, nothing got through
    assert "paused" in sink._controls.readout.content
    assert sink.wait_if_paused(timeout=0.1) is False
    sink.resume()
    assert done.wait(5.0) and not errors
    sink.flush()
    assert sink.frames_received == 30


def test_stop_releases_a_paused_producer(sink: ViserSink):
    done, errors = threading.Event(), []
    sink.pause()
    thread = threading.Thread(target=_producer, args=(sink, range(5), done, errors))
    thread.start()
    time.sleep(0.3)
    assert not done.is_set()
    sink.stop()
    assert done.wait(3.0) and not errors
    assert sink.frames_received == 0  # frames after stop are ignored, not queued


def test_scrubbing_shows_the_map_as_of_a_frame(sink: ViserSink):
    # Distinct depths per frame: no two frames share a voxel, so counts add up per frame.
    for i in range(6):
        sink.on_frame(make_frame(i, depth=2.0 + i))
    sink.flush()
    per_frame = sink.points_shown // 6
    assert per_frame * 6 == sink.points_shown
    sink._controls.frame.value = 2  # what dragging the slider does on the server
    assert wait_for(lambda: sink.points_shown == 3 * per_frame)
    # A new frame while scrubbed back does not move the view.
    sink.on_frame(make_frame(6, depth=8.0))
    sink.flush()
    assert sink.points_shown == 3 * per_frame
    sink._controls.frame.value = 6  # back to the newest frame: live again
    assert wait_for(lambda: sink.points_shown == 7 * per_frame)
    sink.on_frame(make_frame(7, depth=9.0))
    sink.flush()
    assert sink.points_shown == 8 * per_frame and int(sink._controls.frame.value) == 7


def test_confidence_threshold_control(sink: ViserSink):
    frame = make_frame(0)
    frame.conf[:, : W // 2] = 0.2  # left half unreliable
    sink.on_frame(frame)
    sink.flush()
    full = sink.points_shown
    sink._controls.min_conf.value = 0.5
    assert wait_for(lambda: sink.points_shown == full // 2)


def test_pose_correction_moves_frustums_and_points(sink: ViserSink):
    for i in range(3):
        sink.on_frame(make_frame(i, depth=2.0 + i))
    corrected = make_frame(1, depth=3.0)
    corrected.cam_to_world[1, 3] = 0.5  # loop closure moved camera 1 by +0.5 in y
    sink.on_correction([corrected])
    sink.flush()
    cloud = sink._cloud
    assert cloud is not None
    ys = {f: cloud.points[cloud.frame == f][:, 1] for f in range(3)}
    ref = {f: make_frame(f, 2.0 + f) for f in range(3)}
    for f in range(3):
        y_ref = ref[f].points_world()[0][:, 1]
        shift = 0.5 if f == 1 else 0.0
        assert abs(np.median(ys[f]) - (np.median(y_ref) + shift)) < 0.02
    np.testing.assert_allclose(sink._frustums[1].position, [0.1, 0.5, 0.0], atol=1e-6)


def test_out_of_order_frames_are_refused(sink: ViserSink):
    sink.on_frame(make_frame(3))
    with pytest.raises(ValueError, match="increasing index"):
        sink.on_frame(make_frame(2))


def test_warns_when_exposed_beyond_loopback(capfd):
    local = make_viser_sink("127.0.0.1", port=0, verbose=False)
    local.stop()
    assert "warning" not in capfd.readouterr().err
    exposed = make_viser_sink("0.0.0.0", port=0, verbose=False)
    exposed.stop()
    err = capfd.readouterr().err
    assert "warning: the viser viewer listens on 0.0.0.0" in err and "127.0.0.1" in err


def _demo_frames(num_frames: int = 14):
    from laser_plugin import LaserConfig, StreamingReconstructor
    from laser_plugin.models.synthetic import make_model, make_scene

    scene = make_scene("demo", num_frames=num_frames, height=48, width=80)
    rec = StreamingReconstructor(make_model(scene=scene), LaserConfig(window_size=6, overlap=2))
    return rec, scene


def test_engine_streams_into_the_viewer(sink: ViserSink):
    rec, scene = _demo_frames()
    frames = rec.reconstruct(scene.frames(), sinks=[sink])
    assert len(frames) == 14 and sink.frames_received == 14
    assert (
        "finished" in sink._controls.readout.content and "window" in sink._controls.readout.content
    )
    # Frustums sit at the engine's camera centres.
    for frame in frames:
        np.testing.assert_allclose(
            sink._frustums[frame.index].position, frame.cam_to_world[:3, 3], atol=1e-5
        )


def test_replay_of_a_run_directory(tmp_path):
    from laser_plugin.io.run_dir import RunWriter

    rec, scene = _demo_frames(10)
    writer = RunWriter(tmp_path / "run")
    frames = rec.reconstruct(scene.frames(), sinks=[writer])
    s = replay(tmp_path / "run", port=0, block=False, verbose=False)
    try:
        assert s.frames_received == len(frames) == 10
        for frame in frames:
            np.testing.assert_allclose(
                s._frustums[frame.index].position, frame.cam_to_world[:3, 3], atol=1e-5
            )
        assert "finished" in s._controls.readout.content
    finally:
        s.stop()
    with pytest.raises(InputError, match="not a laser run directory"):
        replay(tmp_path / "nothing-here", port=0, block=False)


def test_interrupted_run_is_shown_as_such(sink: ViserSink):
    sink.on_frame(make_frame(0))
    sink.on_interrupt(KeyboardInterrupt())
    sink.close()
    assert "**interrupted** · 1 frames" in sink._controls.readout.content


def test_live_viser_example_runs_on_the_demo_scene(capsys, monkeypatch):
    """The example, in-process (its command line parsed by tyro, as ``__main__`` does)."""
    import importlib.util
    import sys
    from pathlib import Path

    import tyro

    script = Path(__file__).resolve().parents[1] / "examples" / "live_viser.py"
    spec = importlib.util.spec_from_file_location("live_viser_example", script)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses resolve it by name
    spec.loader.exec_module(example)
    argv = ["--max-frames", "10", "--demo-size", "48", "80", "--no-keep-open", "--viewer.port", "0"]
    argv += ["--laser.window-size", "6", "--laser.overlap", "2", "--viewer.no-verbose"]
    s = example.main(tyro.cli(example.Args, args=argv))
    try:
        assert s.frames_received == 10 and s.num_frustums == 10
        assert "10 frames" in capsys.readouterr().out
    finally:
        s.stop()


def test_a_viewer_failure_reaches_the_engine_as_an_error(sink: ViserSink):
    broken = make_frame(0)
    broken.image = np.concatenate([broken.image, broken.image[..., :1]], -1)  # RGBA, not RGB
    sink.on_frame(broken)  # queued: the viewer thread fails on its colours
    with pytest.raises(RuntimeError, match="the viser viewer failed"):
        sink.close()
    with pytest.raises(RuntimeError, match="the viser viewer failed"):
        sink.on_frame(make_frame(1))


def test_busy_port_moves_to_the_next_free_one_and_the_url_says_so():
    import socket
    import urllib.request

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        s = make_viser_sink(port=busy, verbose=False)
        try:
            assert s.port != busy and s.url == f"http://127.0.0.1:{s.port}"
            html = urllib.request.urlopen(s.url, timeout=10).read().decode()
            assert "<html" in html.lower()
        finally:
            s.stop()
