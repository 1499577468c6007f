"""The Rerun sink's contract beyond the read-back: ``--rerun`` parsing, lazy import, one-line
errors, surviving a broken or vanished viewer without raising, and bounded memory on long streams."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from laser_plugin.errors import ConfigError, OutputError
from laser_plugin.integrations.rerun import (
    RerunConfig,
    RerunTarget,
    make_rerun_sink,
    parse_rerun_spec,
)
from laser_plugin.types import ReconstructedFrame, WindowStats

rr = pytest.importorskip("rerun")
RrdReader = pytest.importorskip("rerun.chunk").RrdReader
sink_module = pytest.importorskip("laser_plugin.integrations.rerun.sink")
RerunSink = sink_module.RerunSink


@pytest.mark.parametrize(
    ("spec", "mode", "arg"),
    [
        ("spawn", "spawn", None),
        ("serve", "serve", None),
        ("save:out/run.rrd", "save", "out/run.rrd"),
        ("save out/run.rrd", "save", "out/run.rrd"),
        (["save", "a b.rrd"], "save", "a b.rrd"),
        ("SAVE:C:/x.rrd", "save", "C:/x.rrd"),
        ("connect", "connect", None),
        ("connect:rerun+http://10.0.0.2:9876/proxy", "connect", "rerun+http://10.0.0.2:9876/proxy"),
        ("connect rerun+http://h:1/proxy", "connect", "rerun+http://h:1/proxy"),
    ],
)
def test_spec_forms(spec, mode, arg):
    assert parse_rerun_spec(spec) == RerunTarget(mode, arg)


@pytest.mark.parametrize("spec", ["", "save", "save:", "bogus", "spawn:x", "serve 9000", "web"])
def test_bad_specs_are_one_line_config_errors(spec):
    with pytest.raises(ConfigError) as err:
        make_rerun_sink(spec)
    assert "\n" not in str(err.value) and "rerun" in str(err.value).lower()


def test_save_into_a_missing_directory_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="not a directory"):
        make_rerun_sink(f"save:{tmp_path / 'missing' / 'x.rrd'}")


def test_importing_the_integration_does_not_import_rerun():
    code = "import sys, laser_plugin.integrations.rerun as m; m.parse_rerun_spec('spawn'); print('rerun' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def make_frame(i: int, h: int = 24, w: int = 32, layers: bool = True) -> ReconstructedFrame:
    """A camera moving along x, looking at a fronto-parallel plane at depth 2 + i/100."""
    rng = np.random.default_rng(i)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.05 * i, 0.01 * np.sin(i), 0.0]
    k = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    lab = np.zeros((h, w), np.int16)
    lab[:, w // 2 :] = 1
    return ReconstructedFrame(
        index=i,
        timestamp=i / 30.0,
        image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        cam_to_world=c2w,
        intrinsics=k,
        depth=np.full((h, w), 2.0 + i / 100.0, np.float32),
        conf=rng.random((h, w), dtype=np.float32),
        layers=lab if layers else None,
        layer_scales=np.array([1.0, 1.0 + 0.001 * i], np.float32) if layers else None,
    )


def make_stats(window: int, last: int) -> WindowStats:
    return WindowStats(
        window=window,
        frame_indices=list(range(max(0, last - 9), last + 1)),
        new_frame_indices=list(range(max(0, last - 7), last + 1)),
        scale=1.0 + window / 10,
        depth_residual=0.01,
        pose_residual=0.02,
        overlap_pixels=1000,
        num_layers=2.0,
        layer_scale_spread=0.05,
    )


def rss_mib() -> float:
    """Resident memory after handing freed heap back to the OS, so allocator slack left by
    earlier tests in the same process does not read as growth."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_broken_frame_warns_once_and_the_stream_goes_on(tmp_path, caplog):
    path = tmp_path / "x.rrd"
    sink = RerunSink("save", path, RerunConfig(recording_id="broken"))
    bad = make_frame(1)
    bad.conf = np.ones((3, 3), np.float32)  # wrong shape: points_world cannot mask the depth
    with caplog.at_level(logging.WARNING):
        sink.on_frame(make_frame(0))
        sink.on_frame(bad)
        sink.on_frame(bad)
        sink.on_frame(make_frame(2))
        sink.close()
    warnings = [r for r in caplog.records if "Rerun sink" in r.getMessage()]
    assert len(warnings) == 1 and "frame" in warnings[0].getMessage()
    cams = [
        ch.to_record_batch().column("frame").to_pylist()
        for ch in RrdReader(str(path)).stream()
        if ch.entity_path == "/world/points"
    ]
    logged = {i for frame_ids in cams for i in frame_ids}
    assert {0, 2} <= logged and 1 not in logged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_viewer_never_raises_and_stops_queueing(caplog):
    url = f"rerun+http://127.0.0.1:{free_port()}/proxy"  # nothing listens there
    with caplog.at_level(logging.WARNING):
        sink = make_rerun_sink(f"connect:{url}", RerunConfig(check_every=10, check_timeout_s=0.5))
        big = [make_frame(i, h=120, w=160) for i in range(4)]
        for i in range(40):
            big[i % 4].index = i
            sink.on_frame(big[i % 4])
        assert sink.lost, "an unreachable viewer must be detected"
        before = rss_mib()
        for i in range(40, 240):  # ~120 KiB per frame: 24 MiB if it were still queued
            big[i % 4].index = i
            sink.on_frame(big[i % 4])
        sink.on_window(make_stats(0, 239))
        grew = rss_mib() - before
        start = time.perf_counter()
        sink.close()
    assert grew < 8, f"RSS grew {grew:.1f} MiB after the viewer was found unreachable"
    assert time.perf_counter() - start < 15
    assert sink.num_frames == 240
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("laser_plugin")]
    assert len(msgs) == 1 and "unreachable" in msgs[0]


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process of its group (it was started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _still_listening(port: int, wait: float = 10.0) -> bool:
    """Whether something still accepts connections on 127.0.0.1:``port`` after ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def test_viewer_killed_mid_run_does_not_raise():
    port = free_port()
    exe = Path(sys.executable).parent / "rerun"
    # `rerun` is a Python wrapper that starts the real binary as its child: give them a process
    # group of their own and kill the whole group, or the binary keeps listening after the test.
    server = subprocess.Popen(
        [str(exe), "--serve-grpc", "--port", str(port), "--bind", "127.0.0.1"],
        env={**os.environ, "RERUN_ANALYTICS": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(1.5)
        assert server.poll() is None, "the rerun gRPC server did not start"
        sink = make_rerun_sink(
            f"connect:rerun+http://127.0.0.1:{port}/proxy", RerunConfig(check_every=10)
        )
        frames = [make_frame(i, h=120, w=160) for i in range(4)]
        for i in range(30):
            frames[i % 4].index = i
            sink.on_frame(frames[i % 4])
        sink.on_window(make_stats(0, 29))
    finally:
        _kill_group(server)
    assert not _still_listening(port), f"the rerun server still listens on port {port}"
    before = rss_mib()
    for i in range(30, 230):
        frames[i % 4].index = i
        sink.on_frame(frames[i % 4])
    sink.on_window(make_stats(1, 229))
    grew = rss_mib() - before
    start = time.perf_counter()
    sink.close()
    assert time.perf_counter() - start < 15
    assert grew < 12, f"RSS grew {grew:.1f} MiB after the viewer went away"


def test_long_stream_memory_and_logged_volume_stay_bounded(tmp_path):
    n, cap, history = 1500, 500, 20
    path = tmp_path / "long.rrd"
    cfg = RerunConfig(
        recording_id="long", map_max_points=cap, map_every_saved=50, trajectory_history=history
    )
    sink = RerunSink("save", path, cfg)
    frames = [make_frame(i) for i in range(8)]
    samples = []
    for i in range(n):
        f = frames[i % 8]
        f.index, f.timestamp = i, i / 30.0
        f.cam_to_world[:3, 3] = [0.05 * i, 0.01 * np.sin(i), 0.0]
        sink.on_frame(f)
        if i % 10 == 9:
            sink.on_window(make_stats(i // 10, i))
        if i in (750, n - 1):
            # Drain the SDK's write queue first: on a loaded machine its writer thread lags, and
            # queued-but-unwritten batches are not what this test is about.
            sink.rec.flush(timeout_sec=30)
            samples.append(rss_mib())
    sink.close()
    assert samples[1] - samples[0] < 15, f"RSS grew from {samples[0]:.0f} to {samples[1]:.0f} MiB"
    assert len(sink.map) <= cap
    maps, strip_points, cams = [], 0, 0
    for ch in RrdReader(str(path)).stream():
        batch = ch.to_record_batch()
        if ch.entity_path == "/world/map":
            maps += [len(p) for p in batch.column("Points3D:positions").to_pylist()]
        elif ch.entity_path == "/world/trajectory":
            strip_points += sum(len(s[0]) for s in batch.column("LineStrips3D:strips").to_pylist())
        elif ch.entity_path == "/world/camera":
            cams += batch.num_rows
    assert cams == n
    assert maps and max(maps) <= cap
    # Whole-path re-logging would be n²/2 = 1.1 M points; the schedule keeps it near history·n.
    assert n <= strip_points <= 2 * history * n


def test_corrections_override_poses_and_the_trajectory(tmp_path):
    import copy

    path = tmp_path / "corr.rrd"
    sink = RerunSink("save", path, RerunConfig(recording_id="corr"))
    frames = [make_frame(i) for i in range(10)]
    for f in frames:
        sink.on_frame(f)
    fixed = [copy.deepcopy(frames[i]) for i in (3, 4, 5)]
    for f in fixed:
        f.cam_to_world[:3, 3] += [0.0, 1.0, 0.0]  # e.g. after a loop closure
    sink.on_correction(fixed)
    sink.close()
    poses, strips = {}, []
    rows = []
    for ch in RrdReader(str(path)).stream():
        batch = ch.to_record_batch()
        if ch.entity_path == "/world/camera":
            rows += zip(
                batch.column("frame").to_pylist(),
                batch.column("rerun.controls.RowId").to_pylist(),
                batch.column("Transform3D:translation").to_pylist(),
            )
        elif ch.entity_path == "/world/trajectory":
            strips += zip(
                batch.column("rerun.controls.RowId").to_pylist(),
                batch.column("LineStrips3D:strips").to_pylist(),
            )
    for frame, _, t in sorted(rows):  # latest row per frame wins, as in the viewer
        poses[frame] = np.asarray(t[0])
    expected = np.stack([f.cam_to_world[:3, 3] for f in frames])
    expected[3:6, 1] += 1.0
    np.testing.assert_allclose(np.stack([poses[i] for i in range(10)]), expected, atol=1e-6)
    final = np.asarray(max(strips)[1][0])
    np.testing.assert_allclose(final, expected, atol=1e-6)
