"""Each reader on a tiny fixture written here in the dataset's exact on-disk format."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from laser_plugin.datasets import load_dataset
from laser_plugin.datasets.tum import nearest, read_tum_trajectory
from laser_plugin.errors import InputError

H, W = 6, 8


def write_rgb(path: Path, value: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((H, W, 3), value, dtype=np.uint8)
    img[0, 0] = (255 - value, 1, 2)  # not uniform, so a channel swap would show
    Image.fromarray(img).save(path)
    return img


def write_depth_png(path: Path, depth_m: np.ndarray, units_per_m: float) -> np.ndarray:
    """Write metres as uint16; return the exact metres the file can represent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.round(depth_m * units_per_m).astype(np.uint16)
    Image.fromarray(raw).save(path)
    return raw.astype(np.float32) / np.float32(units_per_m)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    pose[:3, 3] = rng.normal(size=3)
    return pose


def fmt(values) -> str:
    return " ".join(f"{v:.17g}" for v in np.ravel(values))


# ----------------------------------------------------------------------------- TUM / Bonn


def write_tum_sequence(seq: Path, rng) -> dict:
    seq.mkdir(parents=True)
    rgb_t = np.array([10.0, 10.033, 10.066, 10.5])  # the last has no depth within 0.02 s
    depth_t = np.array([10.004, 10.031, 10.07])
    gt_t = np.arange(9.99, 10.1, 0.01)
    rgb_lines = ["# color images", "# file: 'x.bag'", "# timestamp filename"]
    for i, t in enumerate(rgb_t):
        write_rgb(seq / "rgb" / f"{t:.6f}.png", 10 * i)
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
    (seq / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    depth_lines = ["# depth maps"]
    depths = []
    for t in depth_t:
        depths.append(
            write_depth_png(seq / "depth" / f"{t:.6f}.png", rng.uniform(0.5, 5, (H, W)), 5000)
        )
        depth_lines.append(f"{t:.6f} depth/{t:.6f}.png")
    (seq / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    poses = [random_pose(rng) for _ in gt_t]
    gt_lines = ["# ground truth trajectory", "# timestamp tx ty tz qx qy qz qw"]
    for t, pose in zip(gt_t, poses):
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()  # scipy: x, y, z, w
        gt_lines.append(f"{t:.4f} {fmt(pose[:3, 3])} {fmt(q)}")
    (seq / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    return {"rgb_t": rgb_t, "gt_t": gt_t, "poses": np.stack(poses), "depths": depths}


@pytest.mark.parametrize("dataset", ["tum", "bonn"])
def test_tum_layout_reader(tmp_path: Path, dataset: str) -> None:
    rng = np.random.default_rng(0)
    name = "rgbd_dataset_freiburg1_xyz" if dataset == "tum" else "rgbd_bonn_balloon"
    truth = write_tum_sequence(tmp_path / name, rng)
    (seq,) = load_dataset(dataset, tmp_path)
    assert seq.name == name and seq.dataset == dataset
    assert len(seq) == 3  # the colour frame without depth is dropped
    np.testing.assert_allclose(seq.timestamps, truth["rgb_t"][:3])
    for i in range(3):
        # nearest ground-truth stamp to each colour frame
        j = int(np.argmin(np.abs(truth["gt_t"] - truth["rgb_t"][i])))
        np.testing.assert_allclose(seq.cam_to_world[i], truth["poses"][j], atol=1e-9)
        np.testing.assert_allclose(seq.load_depth(i), truth["depths"][i], atol=1e-6)
        assert seq.load_image(i)[1, 1, 0] == 10 * i and seq.load_image(i)[0, 0, 0] == 255 - 10 * i
    fx = 517.3 if dataset == "tum" else 542.822841
    np.testing.assert_allclose(seq.intrinsics[0, 0, 0], fx)


def test_tum_trajectory_and_nearest(tmp_path: Path) -> None:
    path = tmp_path / "traj.txt"
    rot = Rotation.from_euler("xyz", [10, 20, 30], degrees=True)
    path.write_text(f"# c\n1.5 1 2 3 {fmt(rot.as_quat())}\n")
    stamps, poses = read_tum_trajectory(path)
    np.testing.assert_allclose(stamps, [1.5])
    np.testing.assert_allclose(poses[0, :3, :3], rot.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(poses[0, :3, 3], [1, 2, 3])
    np.testing.assert_array_equal(
        nearest(np.array([0.0, 1.04, 2.0, 9.0]), np.array([2.01, 1.0, 1.05]), 0.02), [-1, 2, 0, -1]
    )


# ----------------------------------------------------------------------------- KITTI


def test_kitti_odometry_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seq_dir = tmp_path / "sequences" / "00"
    for i in range(3):
        write_rgb(seq_dir / "image_2" / f"{i:06d}.png", 20 * i)
    k = np.array([[700.0, 0, 600], [0, 700, 180], [0, 0, 1]])
    t_cam2 = np.array([0.06, -0.0003, 0.002])  # camera2_from_camera0 translation
    p2 = np.hstack([k, (k @ t_cam2)[:, None]])
    p0 = np.hstack([k, np.zeros((3, 1))])
    lines = [f"P{j}: {fmt(p0 if j != 2 else p2)}" for j in range(4)] + [f"Tr: {fmt(np.eye(4)[:3])}"]
    (seq_dir / "calib.txt").write_text("\n".join(lines) + "\n")
    (seq_dir / "times.txt").write_text("0.0\n0.1036\n0.2072\n")
    world_from_cam0 = np.stack([np.eye(4)] + [random_pose(rng) for _ in range(2)])
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "00.txt").write_text(
        "\n".join(fmt(p[:3]) for p in world_from_cam0) + "\n"
    )
    (seq,) = load_dataset("kitti", tmp_path)
    assert seq.name == "00" and len(seq) == 3
    np.testing.assert_allclose(seq.timestamps, [0.0, 0.1036, 0.2072])
    np.testing.assert_allclose(seq.intrinsics[1], k)
    # Camera 2's centre sits at -t in camera-0 coordinates.
    expected_centres = np.einsum("nij,j->ni", world_from_cam0, np.append(-t_cam2, 1.0))[:, :3]
    np.testing.assert_allclose(seq.cam_to_world[:, :3, 3], expected_centres, atol=1e-12)
    np.testing.assert_allclose(seq.cam_to_world[:, :3, :3], world_from_cam0[:, :3, :3])
    assert not seq.has_depth


def test_kitti_depth_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    drive = tmp_path / "2011_09_26_drive_0002_sync"
    write_rgb(drive / "image_02" / "data" / "0000000004.png", 7)  # no depth: dropped
    truth = {}
    for i in (5, 6):
        write_rgb(drive / "image_02" / "data" / f"{i:010d}.png", i)
        depth = rng.uniform(1, 80, (H, W))
        depth[0, :3] = 0  # LiDAR holes
        truth[i] = write_depth_png(
            drive / "proj_depth" / "groundtruth" / "image_02" / f"{i:010d}.png", depth, 256
        )
    p_rect = np.array([[721.5, 0, 609.6, 44.9], [0, 721.5, 172.9, 0.2], [0, 0, 1, 0.003]])
    (tmp_path / "calib_cam_to_cam.txt").write_text(
        f"calib_time: 09-Jan-2012 13:57:47\nP_rect_02: {fmt(p_rect)}\n"
    )
    (seq,) = load_dataset("kitti", tmp_path)
    assert len(seq) == 2 and seq.cam_to_world is None
    np.testing.assert_allclose(seq.timestamps, [0.5, 0.6])
    np.testing.assert_allclose(seq.load_depth(0), truth[5], atol=1e-6)
    assert np.all(seq.load_depth(1)[0, :3] == 0)
    np.testing.assert_allclose(seq.intrinsics[0], p_rect[:, :3])


# ----------------------------------------------------------------------------- Sintel

SINTEL_TAG = 202021.25


def write_dpt(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = depth.shape
    path.write_bytes(struct.pack("<fii", SINTEL_TAG, w, h) + depth.astype("<f4").tobytes())


def write_cam(path: Path, k: np.ndarray, cam_from_world_3x4: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        struct.pack("<f", SINTEL_TAG)
        + struct.pack("<9d", *k.ravel())
        + struct.pack("<12d", *cam_from_world_3x4.ravel())
    )


@pytest.mark.parametrize("render_pass", ["final", "clean"])
def test_sintel_reader(tmp_path: Path, render_pass: str) -> None:
    rng = np.random.default_rng(3)
    train = tmp_path / "training"
    truth = []
    for seq in ("alley_1", "market_2"):
        for i in (1, 2):
            name = f"frame_{i:04d}"
            write_rgb(train / render_pass / seq / f"{name}.png", i)
            depth = rng.uniform(0.1, 200, (H, W)).astype(np.float32)
            write_dpt(train / "depth" / seq / f"{name}.dpt", depth)
            k = np.array([[1120.0, 0, 511.5], [0, 1120.0 + i, 217.5], [0, 0, 1]])
            world_from_cam = random_pose(rng)
            write_cam(
                train / "camdata_left" / seq / f"{name}.cam", k, np.linalg.inv(world_from_cam)[:3]
            )
            truth.append((depth, k, world_from_cam))
    seqs = load_dataset("sintel", tmp_path, render_pass=render_pass)
    assert [s.name for s in seqs] == ["alley_1", "market_2"]
    flat = [(s, i) for s in seqs for i in range(len(s))]
    for (s, i), (depth, k, world_from_cam) in zip(flat, truth):
        np.testing.assert_array_equal(s.load_depth(i), depth)
        np.testing.assert_allclose(s.intrinsics[i], k)
        np.testing.assert_allclose(s.cam_to_world[i], world_from_cam, atol=1e-12)
    np.testing.assert_allclose(seqs[0].timestamps, [0, 1 / 24])


def test_sintel_rejects_a_corrupt_dpt(tmp_path: Path) -> None:
    from laser_plugin.datasets.sintel import read_dpt

    bad = tmp_path / "x.dpt"
    bad.write_bytes(struct.pack("<fii", 1.0, 4, 4))
    with pytest.raises(InputError, match="bad tag"):
        read_dpt(bad)
    bad.write_bytes(struct.pack("<fii", SINTEL_TAG, 4, 4) + b"\0" * 8)
    with pytest.raises(InputError, match="truncated"):
        read_dpt(bad)


# ----------------------------------------------------------------------------- ScanNet


def test_scannet_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    scene = tmp_path / "scene0000_00"
    depths, poses = [], []
    for i in (0, 1, 10):
        (scene / "color").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 5 * i, np.uint8)).save(scene / "color" / f"{i}.jpg")
        depths.append(
            write_depth_png(scene / "depth" / f"{i}.png", rng.uniform(0.3, 6, (H, W)), 1000)
        )
        pose = random_pose(rng)
        (scene / "pose").mkdir(exist_ok=True)
        text = "\n".join(fmt(r) for r in pose)
        if i == 1:
            text = "\n".join(["-inf -inf -inf -inf"] * 4)
        (scene / "pose" / f"{i}.txt").write_text(text + "\n")
        poses.append(pose)
    k = np.array([[1170.2, 0, 647.8, 0], [0, 1170.2, 483.8, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (scene / "intrinsic").mkdir()
    (scene / "intrinsic" / "intrinsic_color.txt").write_text("\n".join(fmt(r) for r in k) + "\n")
    (seq,) = load_dataset("scannet", tmp_path)
    assert len(seq) == 3
    np.testing.assert_allclose(seq.timestamps, np.array([0, 1, 10]) / 30)
    np.testing.assert_array_equal(seq.pose_valid, [True, False, True])
    np.testing.assert_allclose(seq.cam_to_world[2], poses[2], atol=1e-12)
    np.testing.assert_allclose(seq.load_depth(2), depths[2], atol=1e-6)
    np.testing.assert_allclose(seq.intrinsics[0], k[:3, :3])


# ----------------------------------------------------------------------------- 7-Scenes


def test_sevenscenes_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seq_dir = tmp_path / "chess" / "seq-03"
    poses = []
    for i in range(2):
        write_rgb(seq_dir / f"frame-{i:06d}.color.png", i)
        raw = rng.integers(500, 4000, (H, W)).astype(np.uint16)
        raw[0, 0] = 65535  # the Kinect's "no reading"
        Image.fromarray(raw).save(seq_dir / f"frame-{i:06d}.depth.png")
        pose = random_pose(rng)
        (seq_dir / f"frame-{i:06d}.pose.txt").write_text("\n".join(fmt(r) for r in pose) + "\n")
        poses.append((pose, raw))
    (seq,) = load_dataset("7scenes", tmp_path)
    assert seq.name == "chess/seq-03" and len(seq) == 2
    depth = seq.load_depth(1)
    assert depth[0, 0] == 0
    np.testing.assert_allclose(depth[1:], poses[1][1][1:] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(seq.cam_to_world[1], poses[1][0], atol=1e-12)
    np.testing.assert_allclose(seq.intrinsics[0, 0, 0], 585.0)


# ----------------------------------------------------------------------------- NRGBD


def test_nrgbd_reader_converts_opengl_poses(tmp_path: Path) -> None:
    scene = tmp_path / "breakfast_room"
    rng = np.random.default_rng(6)
    gl_poses = [random_pose(rng) for _ in range(3)]
    lines = []
    for i, pose in enumerate(gl_poses):
        write_rgb(scene / "images" / f"img{i}.png", i)
        write_depth_png(scene / "depth" / f"depth{i}.png", np.full((H, W), 2.0), 1000)
        rows = pose if i != 1 else np.full((4, 4), np.nan)
        lines += [fmt(r).replace("nan", "nan") for r in rows]
    (scene / "poses.txt").write_text("\n".join(lines) + "\n")
    (scene / "focal.txt").write_text("554.2562584220408\n")
    (seq,) = load_dataset("nrgbd", tmp_path)
    assert len(seq) == 3
    np.testing.assert_array_equal(seq.pose_valid, [True, False, True])
    np.testing.assert_allclose(
        seq.intrinsics[0], [[554.2562584220408, 0, 4], [0, 554.2562584220408, 3], [0, 0, 1]]
    )
    # A point 2 m in front of the OpenGL camera (along its -z) has OpenCV depth +2.
    pt_world = gl_poses[2] @ np.array([0.3, 0.2, -2.0, 1.0])
    pt_cam_cv = np.linalg.inv(seq.cam_to_world[2]) @ pt_world
    np.testing.assert_allclose(pt_cam_cv[:3], [0.3, -0.2, 2.0], atol=1e-9)
    np.testing.assert_allclose(seq.load_depth(0), 2.0)


# ----------------------------------------------------------------------------- synthetic and API


def test_synthetic_sequences_wrap_the_engine_scenes() -> None:
    from laser_plugin.models.synthetic import make_scene

    (seq,) = load_dataset("synthetic", "lateral", num_frames=4, height=24, width=32)
    scene = make_scene("lateral", num_frames=4, height=24, width=32)
    assert seq.name == "lateral" and len(seq) == 4
    np.testing.assert_array_equal(seq.load_image(2), scene.render(2).image)
    np.testing.assert_allclose(seq.load_depth(2), scene.render(2).depth)
    np.testing.assert_allclose(seq.cam_to_world, scene.gt_cam_to_world)
    assert seq.meta["scene"].name == "lateral"


def test_subset_and_errors(tmp_path: Path) -> None:
    (seq,) = load_dataset("synthetic", "demo", num_frames=10, height=16, width=16)
    sub = seq.subset(start=1, stride=3, max_frames=2)
    assert len(sub) == 2
    np.testing.assert_allclose(sub.cam_to_world, seq.cam_to_world[[1, 4]])
    np.testing.assert_array_equal(sub.load_image(1), seq.load_image(4))
    with pytest.raises(InputError, match="not found"):
        load_dataset("tum", tmp_path / "missing")
    with pytest.raises(InputError, match="no sequence"):
        load_dataset("scannet", tmp_path)
    with pytest.raises(InputError, match="needs a DATASET_ROOT"):
        load_dataset("sintel", None)
    from laser_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("nope", tmp_path)


def test_tum_trajectory_reader_agrees_with_evo(tmp_path: Path) -> None:
    # evo (GPL) only as a test-time reference for the file format and quaternion order.
    from evo.tools import file_interface

    rng = np.random.default_rng(9)
    poses = np.stack([random_pose(rng) for _ in range(5)])
    lines = [
        f"{i * 0.1:.3f} {fmt(p[:3, 3])} {fmt(Rotation.from_matrix(p[:3, :3]).as_quat())}"
        for i, p in enumerate(poses)
    ]
    path = tmp_path / "traj.txt"
    path.write_text("\n".join(lines) + "\n")
    stamps, ours = read_tum_trajectory(path)
    theirs = file_interface.read_tum_trajectory_file(str(path))
    np.testing.assert_allclose(stamps, theirs.timestamps)
    np.testing.assert_allclose(ours, np.stack(theirs.poses_se3), atol=1e-12)
    np.testing.assert_allclose(ours, poses, atol=1e-12)
