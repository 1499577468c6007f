"""A Rerun recording of a real streaming run, read back chunk by chunk and compared with the
engine's ``ReconstructedFrame``s and ``WindowStats`` (poses, intrinsics, points, images, layers,
time series, timelines), plus ``rerun rrd verify`` and the replay of the same run's directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.integrations.rerun import RerunConfig, make_rerun_sink
from laser_plugin.io.run_dir import RunWriter
from laser_plugin.models.synthetic import make_model, make_scene

rr = pytest.importorskip("rerun")
pa = pytest.importorskip("pyarrow")
RrdReader = pytest.importorskip("rerun.chunk").RrdReader
sink_module = pytest.importorskip("laser_plugin.integrations.rerun.sink")
RerunSink, points_stride = sink_module.RerunSink, sink_module.points_stride

NUM_FRAMES = 24
MAP_CAP = 3000
CONFIG = RerunConfig(
    recording_id="laser-test", map_max_points=MAP_CAP, map_every_saved=7, jpeg_quality=None
)


class StatsCollector:
    """A plain sink keeping the engine's per-window statistics."""

    def __init__(self) -> None:
        self.windows = []

    def on_frame(self, frame) -> None:
        pass

    def on_window(self, stats) -> None:
        self.windows.append(stats)

    def close(self) -> None:
        pass


def read_rows(chunks, entity: str) -> list[dict]:
    """All rows logged to ``entity``, ordered by (frame, logging order). Time columns as int64."""
    rows = []
    for chunk in chunks:
        if chunk.entity_path != "/" + entity:
            continue
        batch = chunk.to_record_batch()
        cols = {}
        for name in batch.schema.names:
            col = batch.column(name)
            if name in ("log_time", "video_time"):
                col = col.cast(pa.int64())
            cols[name] = col.to_pylist()
        for i in range(batch.num_rows):
            row = {name: values[i] for name, values in cols.items()}
            row["static"] = chunk.is_static
            rows.append(row)
    rows.sort(key=lambda r: (r.get("frame", -1), r["rerun.controls.RowId"]))
    return rows


def latest_per_frame(rows: list[dict], column: str) -> dict[int, object]:
    """Latest-at value of ``column`` on each frame where it was logged."""
    out = {}
    for r in rows:
        if column in r and r[column] is not None and "frame" in r:
            out[r["frame"]] = r[column]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rerun")
    scene = make_scene("demo", num_frames=NUM_FRAMES, height=96, width=160)
    rrd = tmp / "demo.rrd"
    stats = StatsCollector()
    sinks = [make_rerun_sink(f"save:{rrd}", CONFIG), RunWriter(tmp / "run"), stats]
    cfg = LaserConfig(window_size=8, overlap=2)
    frames = StreamingReconstructor(make_model(scene=scene), cfg).reconstruct(
        scene.frames(), sinks=sinks
    )
    # The chunks as the file holds them (a collected ChunkStore keeps only the last static row).
    store = list(RrdReader(str(rrd)).stream())
    return {"frames": frames, "windows": stats.windows, "rrd": rrd, "store": store, "dir": tmp}


def test_recording_identity_and_timelines(run):
    (entry,) = RrdReader(str(run["rrd"])).recordings()
    assert entry.application_id == "laser" and entry.recording_id == "laser-test"
    rows = read_rows(run["store"], "world/camera")
    frames = run["frames"]
    assert len(frames) == NUM_FRAMES
    assert [r["frame"] for r in rows] == [f.index for f in frames]
    # video_time is a duration timeline in nanoseconds.
    np.testing.assert_allclose(
        [r["video_time"] for r in rows], [f.timestamp * 1e9 for f in frames], atol=1
    )


def test_every_pose_and_intrinsics_matrix_read_back(run):
    rows = read_rows(run["store"], "world/camera")
    for frame, row in zip(run["frames"], rows, strict=True):
        # Rerun stores matrices column-major, as float32.
        rot = np.asarray(row["Transform3D:mat3x3"], np.float32).reshape(3, 3).T
        np.testing.assert_array_equal(rot, frame.cam_to_world[:3, :3].astype(np.float32))
        np.testing.assert_array_equal(
            row["Transform3D:translation"][0], frame.cam_to_world[:3, 3].astype(np.float32)
        )
        k = np.asarray(row["Pinhole:image_from_camera"], np.float32).reshape(3, 3).T
        np.testing.assert_array_equal(k, frame.intrinsics.astype(np.float32))
        assert row["Pinhole:resolution"] == [[frame.width, frame.height]]
    (world,) = read_rows(run["store"], "world")
    assert world["static"]
    assert world["ViewCoordinates:xyz"] == [[3, 2, 5]]  # Rerun's codes: Right=3, Down=2, Forward=5


def test_points_of_sampled_frames_equal_the_frames(run):
    frames = run["frames"]
    logged = latest_per_frame(read_rows(run["store"], "world/points"), "Points3D:positions")
    colours = latest_per_frame(read_rows(run["store"], "world/points"), "Points3D:colors")
    assert sorted(logged) == [f.index for f in frames]
    for frame in (frames[0], frames[len(frames) // 2], frames[-1]):
        stride = points_stride(frame.height, frame.width, CONFIG.frame_points)
        pts, cols = frame.points_world(min_conf=CONFIG.min_conf, stride=stride)
        assert 100 < len(pts) <= CONFIG.frame_points
        np.testing.assert_array_equal(np.asarray(logged[frame.index], np.float32), pts)
        # Colours are packed 0xRRGGBBAA.
        packed = np.asarray(colours[frame.index], np.uint32)
        rgb = np.stack([(packed >> 24) & 255, (packed >> 16) & 255, (packed >> 8) & 255], 1)
        np.testing.assert_array_equal(rgb, cols)


def test_images_depth_and_confidence_read_back(run):
    frame = run["frames"][11]
    store = run["store"]
    rgb = latest_per_frame(read_rows(store, "world/camera/rgb"), "Image:buffer")[frame.index]
    np.testing.assert_array_equal(np.asarray(rgb, np.uint8).reshape(frame.image.shape), frame.image)
    depth = latest_per_frame(read_rows(store, "world/camera/depth"), "DepthImage:buffer")[
        frame.index
    ]
    depth = np.frombuffer(np.asarray(depth, np.uint8).tobytes(), np.float32).reshape(
        frame.depth.shape
    )
    np.testing.assert_array_equal(depth, frame.depth)
    conf = latest_per_frame(read_rows(store, "world/camera/confidence"), "Image:buffer")[
        frame.index
    ]
    conf = np.asarray(conf, np.uint8).reshape(frame.conf.shape)
    np.testing.assert_allclose(conf / 255.0, frame.conf, atol=0.5 / 255 + 1e-6)


def test_depth_layers_and_their_scale_labels(run):
    frames = [f for f in run["frames"] if f.layers is not None]
    assert frames, "the demo run should produce depth layers"
    rows = read_rows(run["store"], "world/camera/layers")
    segs = latest_per_frame(rows, "SegmentationImage:buffer")
    contexts = latest_per_frame(rows, "AnnotationContext:context")
    # The first frame, and the one whose layers LASER rescaled the most.
    most = max(
        frames,
        key=lambda f: (
            float(np.abs(np.log(f.layer_scales)).max()) if f.layer_scales is not None else 0.0
        ),
    )
    for frame in (frames[0], most):
        seg = np.frombuffer(np.asarray(segs[frame.index], np.uint8).tobytes(), np.uint16)
        np.testing.assert_array_equal(
            seg.reshape(frame.layers.shape), (frame.layers.astype(np.int32) + 1).clip(0)
        )
        labels = {
            c["class_id"]: c["class_description"]["info"]["label"] for c in contexts[frame.index][0]
        }
        assert labels[0] == "no layer"
        for k in range(int(frame.layers.max()) + 1):
            assert labels[k + 1] == f"layer {k}: scale {float(frame.layer_scales[k]):.3f}"


def test_window_time_series_equal_the_window_stats(run):
    windows = run["windows"]
    assert len(windows) >= 3
    store = run["store"]
    expected = {
        "metrics/scale": [w.scale for w in windows],
        "metrics/residual/depth": [w.depth_residual for w in windows],
        "metrics/residual/pose": [w.pose_residual for w in windows],
        "metrics/layers/count": [w.num_layers for w in windows],
        "metrics/layers/scale_spread": [w.layer_scale_spread for w in windows],
    }
    for entity, values in expected.items():
        rows = [r for r in read_rows(store, entity) if not r["static"]]
        assert [r["frame"] for r in rows] == [w.frame_indices[-1] for w in windows], entity
        np.testing.assert_allclose(
            [r["Scalars:scalars"][0] for r in rows], values, rtol=0, atol=0, err_msg=entity
        )
    fps = [r["Scalars:scalars"][0] for r in read_rows(store, "metrics/fps") if not r["static"]]
    assert len(fps) == len(windows) and all(v > 0 for v in fps)
    names = [r for r in read_rows(store, "metrics/scale") if r["static"]]
    assert names[0]["SeriesLines:names"] == ["window Sim(3) scale"]


def test_trajectory_and_bounded_static_map(run):
    frames = run["frames"]
    store = run["store"]
    strips = [r for r in read_rows(store, "world/trajectory") if "LineStrips3D:strips" in r]
    final = np.asarray(strips[-1]["LineStrips3D:strips"][0], np.float32)
    np.testing.assert_array_equal(
        final, np.stack([f.cam_to_world[:3, 3] for f in frames]).astype(np.float32)
    )
    # Each strip is a prefix of the path, logged at the time of its last camera (no future leak).
    for r in strips:
        strip = np.asarray(r["LineStrips3D:strips"][0], np.float32)
        assert len(strip) == r["frame"] + 1
    maps = [r for r in read_rows(store, "world/map")]
    assert maps and all(r["static"] for r in maps)
    assert len(maps) == NUM_FRAMES // CONFIG.map_every_saved + 1
    sizes = [len(r["Points3D:positions"]) for r in maps]
    assert all(0 < n <= MAP_CAP for n in sizes), sizes
    assert max(sizes) > MAP_CAP // 4  # the cap binds, it does not starve the map
    # Every map point lies inside the hull box of the frames' points.
    strides = [points_stride(f.height, f.width, CONFIG.frame_points) for f in frames]
    all_pts = np.concatenate(
        [f.points_world(CONFIG.min_conf, s)[0] for f, s in zip(frames, strides)]
    )
    lo, hi = all_pts.min(0), all_pts.max(0)
    m = np.asarray(maps[-1]["Points3D:positions"], np.float32)
    assert ((m >= lo - 1e-4) & (m <= hi + 1e-4)).all()


def test_rrd_verify_passes(run):
    exe = shutil.which("rerun") or str(Path(sys.executable).parent / "rerun")
    out = subprocess.run(
        [exe, "rrd", "verify", str(run["rrd"])], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "1 file verified without error" in out.stdout + out.stderr


def test_replay_of_the_run_directory_matches_the_live_recording(run):
    from laser_plugin.integrations.rerun import replay

    path = run["dir"] / "replay.rrd"
    sink = replay(run["dir"] / "run", f"save:{path}", RerunConfig(recording_id="replay"))
    assert sink.url == str(path) and sink.num_frames == NUM_FRAMES
    store = list(RrdReader(str(path)).stream())
    live = read_rows(run["store"], "world/camera")
    again = read_rows(store, "world/camera")
    assert [r["frame"] for r in again] == [r["frame"] for r in live]
    for a, b in zip(live, again, strict=True):
        assert a["Transform3D:translation"] == b["Transform3D:translation"]
        assert a["Transform3D:mat3x3"] == b["Transform3D:mat3x3"]
        assert a["Pinhole:image_from_camera"] == b["Pinhole:image_from_camera"]
    # Window statistics come back from summary.json at the same frames.
    live_scale = [
        (r["frame"], r["Scalars:scalars"])
        for r in read_rows(run["store"], "metrics/scale")
        if not r["static"]
    ]
    again_scale = [
        (r["frame"], r["Scalars:scalars"])
        for r in read_rows(store, "metrics/scale")
        if not r["static"]
    ]
    assert [f for f, _ in again_scale] == [f for f, _ in live_scale]
    np.testing.assert_allclose(
        [v[0] for _, v in again_scale], [v[0] for _, v in live_scale], rtol=1e-9
    )


def test_sink_counts_frames_like_the_engine(run):
    # The python API form: RerunSink(mode=..., path_or_url=...) on a fresh file.
    path = run["dir"] / "api.rrd"
    sink = RerunSink(mode="save", path_or_url=path, config=RerunConfig(recording_id="api"))
    for f in run["frames"][:5]:
        sink.on_frame(f)
    sink.close()
    sink.close()  # idempotent
    rows = read_rows(RrdReader(str(path)).stream(), "world/camera")
    assert [r["frame"] for r in rows] == [f.index for f in run["frames"][:5]]


def _vulkan_available() -> bool:
    icd_dirs = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")
    return any(Path(d).is_dir() and any(Path(d).glob("*.json")) for d in icd_dirs)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def viewer(run):
    """A real headless Rerun viewer (software Vulkan), shared by the tests below."""

    from rerun.experimental import ViewerClient

    if not _vulkan_available():
        pytest.skip("needs a Vulkan driver (Debian: mesa-vulkan-drivers)")
    # The viewer is a separate binary: find it next to this interpreter, render with lavapipe.
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WGPU_BACKEND": "vulkan",
        "RERUN_ANALYTICS": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = ViewerClient.spawn(headless=True, port=_free_port(), hide_welcome_screen=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get_state()
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield client
    finally:
        client.quit()


def test_headless_viewer_renders_the_3d_view(run, viewer):
    import io

    from PIL import Image

    viewer.open(str(run["rrd"]))
    shots = {}
    for index in (0, NUM_FRAMES - 1):
        viewer.set_time("frame", sequence=index, play_state="paused")
        deadline = time.monotonic() + 20
        while True:  # reports settle once the data is loaded
            state = viewer.get_state()
            world = [v for v in state.views if v.view_class == "3D"]
            if world and not world[0].reports:
                break
            assert time.monotonic() < deadline, f"3D view not ready: {world}"
            time.sleep(0.5)
        assert world[0].origin == "/world" and world[0].name == "World"
        time.sleep(1.0)
        png = viewer.take_screenshot(view_id=world[0].view_id, max_size=640)
        shots[index] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
        Image.open(io.BytesIO(png)).save(run["dir"] / f"world_view_{index}.png")
    Image.open(io.BytesIO(viewer.take_screenshot(max_size=1200))).save(run["dir"] / "viewer.png")
    assert {"3D", "2D", "TimeSeries"} <= {v.view_class for v in viewer.get_state().views}
    for img in shots.values():
        assert img.shape[0] > 100 and img.shape[1] > 100
        # Not blank: the scene's points stand out of the dark background. Measured with lavapipe:
        # ~4% bright pixels for this scene; 1.2% for the same view with cameras and trajectory
        # but no points; ~0 for an empty grid.
        bright = (img.mean(axis=2) > 80).mean()
        coloured = ((img.max(axis=2) - img.min(axis=2)) > 40).mean()
        assert bright > 0.025 and coloured > 0.005, (
            f"3D view looks empty ({bright:.3f}, {coloured:.3f})"
        )
    # The view follows the timeline: the first and the last frame render differently.
    assert np.abs(shots[0] - shots[NUM_FRAMES - 1]).mean() > 2.0


def _timelines(viewer, recording_id: str, timeout: float = 10.0) -> dict:

    deadline = time.monotonic() + timeout
    while True:
        for rec in viewer.get_state().recordings:
            if rec.store_id.endswith(":" + recording_id):
                spans = {t.name: (t.start, t.end) for t in rec.timelines}
                if spans.get("frame", (0, -1))[1] >= 8:
                    return spans
        assert time.monotonic() < deadline, f"recording {recording_id} never reached the viewer"
        time.sleep(0.3)


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    import socket
    import struct

    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16))))
    return found


def test_live_connect_and_serve_reach_a_real_viewer(run, viewer):
    frames = run["frames"][:9]
    # connect: the sink streams into the running viewer.
    sink = make_rerun_sink(f"connect:{viewer.url}", RerunConfig(recording_id="live-connect"))
    for f in frames:
        sink.on_frame(f)
    sink.close()
    assert not sink.lost
    spans = _timelines(viewer, "live-connect")
    assert spans["frame"] == (0, 8) and "video_time" in spans
    # serve: the sink hosts the data; the viewer connects afterwards and still gets all of it.
    port = _free_port()
    served = make_rerun_sink(
        "serve", RerunConfig(recording_id="live-serve", grpc_port=port, web_viewer=False)
    )
    try:
        # Our server listens on the loopback address only (no authentication: not exposed
        # unless asked with RerunConfig.bind).
        assert _listening_addresses(port) == {"127.0.0.1"}
        for f in frames:
            served.on_frame(f)
        served.close()
        viewer.open(served.url)
        assert _timelines(viewer, "live-serve")["frame"] == (0, 8)
    finally:
        served.shutdown()


def test_laser_view_replays_a_run_into_a_recording(run):
    import tyro

    from laser_plugin.cli.view import View

    out = run["dir"] / "view.rrd"
    command = tyro.cli(View, args=[str(run["dir"] / "run"), "--rerun", f"save:{out}"])
    assert command.main() == 0
    rows = read_rows(RrdReader(str(out)).stream(), "world/camera")
    assert [r["frame"] for r in rows] == [f.index for f in run["frames"]]


def test_laser_view_user_errors_are_laser_errors(run, tmp_path):
    from laser_plugin.cli.view import View
    from laser_plugin.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="choose a viewer"):
        View(str(run["dir"] / "run")).main()
    with pytest.raises(ConfigError, match="--rerun"):
        View(str(run["dir"] / "run"), rerun="bogus").main()
    with pytest.raises(InputError, match="not a laser run directory"):
        View(str(tmp_path / "nothing"), rerun=f"save:{tmp_path / 'x.rrd'}").main()


def test_laser_view_through_the_laser_command(run, capsys):
    cli = pytest.importorskip(
        "laser_plugin.cli.main", reason="the laser command is not assembled yet"
    )
    out = run["dir"] / "cli.rrd"
    assert cli.main(["view", str(run["dir"] / "run"), "--rerun", f"save:{out}"]) == 0
    assert out.stat().st_size > 10_000
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["view", str(run["dir"] / "run"), "--rerun", "save"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "save" in err[-1]
