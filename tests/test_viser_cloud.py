"""The viser viewer's pure parts: bounded voxel cloud, colours, frame sampling, conventions.

None of these need viser itself; they run in every environment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from laser_plugin.errors import ConfigError
from laser_plugin.integrations.viser.cloud import COARSEN_FACTOR, VoxelCloud, voxel_keys
from laser_plugin.integrations.viser.colors import (
    COLOR_MODES,
    label_colors,
    point_colors,
    ramp_colors,
)
from laser_plugin.integrations.viser.config import ViserConfig
from laser_plugin.integrations.viser.sampling import (
    pixel_stride,
    rotation_to_wxyz,
    sample_frame,
    thumbnail,
    vertical_fov,
)
from laser_plugin.integrations.viser.sink import is_loopback
from laser_plugin.types import ReconstructedFrame


def _attrs(n: int, conf: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return {
        "colors": np.full((n, 3), 7, np.uint8),
        "conf": np.full(n, 0.5, np.float32) if conf is None else conf,
        "depth": np.ones(n, np.float32),
        "layer": np.zeros(n, np.int16),
    }


def test_voxel_keys_distinct_per_voxel_and_equal_inside_one():
    pts_world = np.array([[0.05, 0.05, 0.05], [0.09, 0.01, 0.02], [0.15, 0.0, 0.0], [-0.05, 0, 0]])
    keys = voxel_keys(pts_world, 0.1)
    assert keys[0] == keys[1]  # same voxel [0, 0.1)^3
    assert len({int(keys[0]), int(keys[2]), int(keys[3])}) == 3  # +x and -x neighbours differ


def test_one_point_per_voxel_and_the_most_confident_wins():
    cloud = VoxelCloud(max_points=100, voxel_size=1.0)
    # Frame 0: two points in voxel (0,0,0), one in (5,0,0).
    pts0 = np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [5.5, 0.5, 0.5]], np.float32)
    cloud.add(pts0, **_attrs(3, np.array([0.2, 0.7, 0.4], np.float32)), frame=0)
    assert len(cloud) == 2
    row = int(np.argmin(cloud.points[:, 0]))
    np.testing.assert_allclose(cloud.points[row], [0.9, 0.9, 0.9])  # conf 0.7 beat 0.2
    # Frame 1: a better point in (0,0,0) replaces it, a worse one in (5,0,0) does not.
    pts1 = np.array([[0.5, 0.5, 0.5], [5.2, 0.2, 0.2]], np.float32)
    cloud.add(pts1, **_attrs(2, np.array([0.9, 0.1], np.float32)), frame=1)
    assert len(cloud) == 2
    order = np.argsort(cloud.points[:, 0])
    np.testing.assert_allclose(cloud.points[order], [[0.5, 0.5, 0.5], [5.5, 0.5, 0.5]])
    np.testing.assert_array_equal(cloud.frame[order], [1, 0])
    np.testing.assert_allclose(cloud.conf[order], [0.9, 0.4])


def test_cloud_stays_bounded_and_still_covers_every_input_point():
    rng = np.random.default_rng(0)
    cloud = VoxelCloud(max_points=2000, voxel_size=0.01)
    seen = []
    for frame in range(20):
        pts_world = rng.uniform(-1, 1, (1500, 3)).astype(np.float32)
        seen.append(pts_world)
        cloud.add(pts_world, **_attrs(1500, rng.random(1500).astype(np.float32)), frame=frame)
        assert len(cloud) <= 2000
    assert cloud.voxel_size > 0.01  # it had to coarsen
    # Coverage: every input point has a kept point in its own (final) voxel, i.e. closer than
    # the voxel diagonal; a bound enforced by dropping points would fail this.
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(cloud.points).query(np.concatenate(seen))
    assert dist.max() <= math.sqrt(3) * cloud.voxel_size
    # Coarsening is geometric in COARSEN_FACTOR.
    steps = math.log(cloud.voxel_size / 0.01) / math.log(COARSEN_FACTOR)
    assert abs(steps - round(steps)) < 1e-6


def test_select_filters_by_frame_and_confidence():
    cloud = VoxelCloud(max_points=100, voxel_size=1.0)
    for frame in range(4):
        pts_world = np.array([[frame * 10.0, 0, 0], [frame * 10.0, 5, 0]], np.float32)
        cloud.add(pts_world, **_attrs(2, np.array([0.25, 0.75], np.float32)), frame=frame)
    assert cloud.select().sum() == 8
    assert cloud.select(max_frame=1).sum() == 4
    assert cloud.select(max_frame=1, min_conf=0.5).sum() == 2
    assert cloud.select(min_conf=0.8).sum() == 0


def test_transform_frames_moves_only_that_frames_points():
    cloud = VoxelCloud(max_points=100, voxel_size=0.5)
    for frame in range(3):
        cloud.add(np.array([[frame * 10.0, 0, 0]], np.float32), **_attrs(1), frame=frame)
    shift = np.eye(4)
    shift[:3, 3] = [0, 2.0, 0]
    cloud.transform_frames({1: shift})
    by_frame = {int(f): p for f, p in zip(cloud.frame, cloud.points)}
    np.testing.assert_allclose(by_frame[0], [0, 0, 0])
    np.testing.assert_allclose(by_frame[1], [10, 2, 0])
    np.testing.assert_allclose(by_frame[2], [20, 0, 0])


def test_colours():
    np.testing.assert_array_equal(ramp_colors(np.array([0.0]), 0, 1)[0], [38, 16, 96])
    np.testing.assert_array_equal(ramp_colors(np.array([1.0, 7.0]), 0, 1), [[250, 235, 40]] * 2)
    labels = label_colors(np.arange(-1, 24))
    np.testing.assert_array_equal(labels[0], [128, 128, 128])  # -1: no layer
    assert len({tuple(c) for c in labels[1:]}) == 24  # distinct layer colours
    n = 50
    rgb = np.random.default_rng(1).integers(0, 255, (n, 3)).astype(np.uint8)
    depth = np.linspace(1, 5, n).astype(np.float32)
    for mode in COLOR_MODES:
        out = point_colors(mode, rgb, np.linspace(0, 1, n), depth, np.arange(n) % 3)
        assert out.shape == (n, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(point_colors("rgb", rgb, depth, depth, depth), rgb)
    # Depth colours are monotonic in lightness along the ramp (sum of channels here).
    lum = point_colors("depth", rgb, depth, depth, depth).astype(int).sum(1)
    assert np.all(np.diff(lum) >= 0) and lum[-1] > lum[0]
    with pytest.raises(ValueError, match="unknown colour mode"):
        point_colors("bogus", rgb, depth, depth, depth)  # type: ignore[arg-type]


def _plane_frame(h: int = 60, w: int = 80) -> ReconstructedFrame:
    """A camera looking at the plane z_cam = 2 - 0.01*u, posed by a known rotation+translation."""
    k = np.array([[70.0, 0, w / 2], [0, 70.0, h / 2], [0, 0, 1]])
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = Rotation.from_euler("xyz", [0.1, -0.3, 0.2]).as_matrix()
    cam_to_world[:3, 3] = [1.0, -0.5, 3.0]
    v, u = np.mgrid[0:h, 0:w]
    depth = (2.0 - 0.01 * u).astype(np.float32)
    depth[:5] = 0  # invalid rows
    image = np.stack([u * 3, v * 4, np.full_like(u, 90)], -1).astype(np.uint8)
    conf = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    layers = (u // 20).astype(np.int16)
    return ReconstructedFrame(
        index=0,
        timestamp=0.0,
        image=image,
        cam_to_world=cam_to_world,
        intrinsics=k,
        depth=depth,
        conf=conf,
        layers=layers,
    )


def test_sample_frame_matches_closed_form_geometry():
    frame = _plane_frame()
    stride = pixel_stride(60, 80, 1200)
    assert stride == 2
    samples = sample_frame(frame, 1200)
    assert len(samples.points) == 30 * 40 - 3 * 40  # rows 0, 2, 4 are invalid
    # Back in the camera frame, each point sits on the planted plane at the pixel it came from.
    world_from_cam = frame.cam_to_world
    pts_cam = (samples.points - world_from_cam[:3, 3]) @ world_from_cam[:3, :3]
    u = pts_cam[:, 0] / pts_cam[:, 2] * 70.0 + 40
    np.testing.assert_allclose(pts_cam[:, 2], 2.0 - 0.01 * u, atol=1e-4)
    np.testing.assert_allclose(samples.depth, pts_cam[:, 2], rtol=1e-5)
    np.testing.assert_allclose(u, np.round(u), atol=1e-3)  # pixel centres on the grid
    assert np.all(np.round(u) % 2 == 0)
    # Same points and colours as the engine's own unprojection.
    ref_pts, ref_rgb = frame.points_world(stride=stride)
    np.testing.assert_allclose(samples.points, ref_pts, atol=1e-5)
    np.testing.assert_array_equal(samples.colors, ref_rgb)
    np.testing.assert_array_equal(samples.layer, (np.round(u) // 20).astype(np.int16))


def test_rotation_to_wxyz_matches_scipy_including_half_turns():
    rots = list(Rotation.random(200, random_state=3).as_matrix())
    rots += [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)]
    for rot in rots:
        wxyz = rotation_to_wxyz(rot)
        assert wxyz[0] >= 0 and abs(np.linalg.norm(wxyz) - 1) < 1e-12
        xyzw = Rotation.from_matrix(rot).as_quat()
        ref = np.array([xyzw[3], *xyzw[:3]])
        ref = ref if ref[0] >= 0 else -ref
        if abs(ref[0]) < 1e-9:  # w = 0: q and -q both have w >= 0
            assert min(np.abs(wxyz - ref).max(), np.abs(wxyz + ref).max()) < 1e-9
        else:
            np.testing.assert_allclose(wxyz, ref, atol=1e-9)


def test_vertical_fov_and_thumbnail():
    k = np.array([[50.0, 0, 40], [0, 30.0, 30], [0, 0, 1]])
    assert vertical_fov(k, 60) == pytest.approx(math.pi / 2)  # fy = H/2 -> 90 degrees
    img = np.zeros((60, 200, 3), np.uint8)
    assert thumbnail(img, 100).shape == (30, 100, 3)
    assert thumbnail(img, 400).shape == (60, 200, 3)  # never upscaled


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 70000, "port"),
        ("max_points", 0, "max_points"),
        ("color_mode", "rainbow", "color_mode"),
        ("min_conf", 1.5, "min_conf"),
        ("voxel_size", -1.0, "voxel_size"),
        ("max_frustums", 0, "max_frustums"),
    ],
)
def test_config_rejects_bad_values_with_one_line(field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        ViserConfig(**{field: value}).validate()
    assert "\n" not in str(info.value)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("myhost.example")


def test_pausable_worker_keeps_order_holds_while_paused_and_reports_errors():
    import threading
    import time

    from laser_plugin.integrations.viser.worker import PausableWorker

    handled: list[int] = []

    def handle(kind: str, item: int) -> None:
        if kind == "boom":
            raise ValueError("bad item")
        handled.append(item)

    worker = PausableWorker(handle, tick=lambda: None, interval=0.05, max_queue=2)
    try:
        for i in range(5):
            worker.put("item", i)
        worker.drain()
        assert handled == [0, 1, 2, 3, 4]

        worker.pause()
        assert worker.wait_if_paused(timeout=0.05) is False
        returned: list[int] = []

        def produce():
            for i in range(5, 10):
                worker.put("item", i)  # the queue holds 2: the third put blocks
                returned.append(i)

        thread = threading.Thread(target=produce)
        thread.start()
        time.sleep(0.4)
        assert handled == [0, 1, 2, 3, 4]  # nothing handled while paused
        assert len(returned) <= 3  # the producer is held by the bounded queue
        worker.resume()
        thread.join(5)
        worker.drain()
        assert handled == list(range(10))

        worker.put("boom", 0)
        worker.drain()
        with pytest.raises(RuntimeError, match="the test worker failed: bad item"):
            worker.raise_error("the test worker")
    finally:
        worker.stop()
    worker.put("item", 99)  # after stop: dropped, never blocks
    assert 99 not in handled
