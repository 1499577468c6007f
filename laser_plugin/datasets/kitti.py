"""KITTI: the odometry benchmark (poses) and the depth benchmark (depth), two layouts.

Odometry (``sequences/`` + ``poses/`` under the root)::

    sequences/NN/image_2/000000.png   left colour camera
    sequences/NN/calib.txt            "P0: 12 numbers" ... "P2: ..." (3x4 rectified projections)
    sequences/NN/times.txt            seconds, one per frame
    poses/NN.txt                      12 numbers per line: 3x4 row-major camera-0-to-world,
                                      world = camera 0 of the first frame (OpenCV axes)

The poses are those of the grey camera 0; the colour camera 2 sits beside it on the rectified
rig, camera2_from_camera0 = [I | K⁻¹ P2[:, 3]], so world_from_camera2 =
world_from_camera0 · [I | -K⁻¹ P2[:, 3]].

Depth (a drive directory of the depth benchmark with its raw colour images merged in)::

    <drive>_sync/proj_depth/groundtruth/image_02/0000000005.png   uint16, metres · 256, 0 = none
    <drive>_sync/image_02/data/0000000005.png                      colour frame of the same name
    calib_cam_to_cam.txt (in the drive or its parent, optional)     P_rect_02 gives intrinsics

Frames are the colour images that have ground-truth depth (the benchmark skips a few at each
end). No depth cap (the protocol caps Sintel and Bonn only); the nominal rate is 10 Hz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import (
    Sequence,
    natural_key,
    read_png_depth,
    require_dir,
    require_file,
)
from laser_plugin.errors import InputError

DEPTH_UNITS_PER_METRE = 256.0
FPS = 10.0


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``KEY: numbers`` lines → {KEY: float64 array}."""
    out = {}
    for line in require_file(path, "KITTI calibration").read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        try:
            out[key.strip()] = np.array(values.split(), dtype=np.float64)
        except ValueError:
            continue  # e.g. calib_time: 09-Jan-2012 ...
    return out


def read_poses(path: Path) -> np.ndarray:
    """KITTI pose file → (N, 4, 4) camera-to-world."""
    try:
        rows = np.loadtxt(require_file(path, "KITTI pose file"), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"{path}: not a KITTI pose file ({exc})") from exc
    if rows.shape[1] != 12:
        raise InputError(f"{path}: expected 12 numbers per line, got {rows.shape[1]}")
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3, :4] = rows.reshape(-1, 3, 4)
    return out


def load_odometry_sequence(root: Path, seq: str) -> Sequence:
    seq_dir = require_dir(root / "sequences" / seq, "KITTI sequence")
    images = sorted(
        require_dir(seq_dir / "image_2", "image_2 folder").glob("*.png"), key=natural_key
    )
    if not images:
        raise InputError(f"no PNG frames in {seq_dir / 'image_2'}")
    calib = read_calib(seq_dir / "calib.txt")
    if "P2" not in calib or calib["P2"].size != 12:
        raise InputError(f"{seq_dir / 'calib.txt'} has no 3x4 P2 line")
    p2 = calib["P2"].reshape(3, 4)
    k = p2[:, :3]
    cam2_from_cam0 = np.eye(4)
    cam2_from_cam0[:3, 3] = np.linalg.solve(k, p2[:, 3])
    poses = None
    pose_file = root / "poses" / f"{seq}.txt"
    if pose_file.is_file():
        poses = read_poses(pose_file) @ np.linalg.inv(cam2_from_cam0)
        if len(poses) != len(images):
            raise InputError(f"{pose_file}: {len(poses)} poses for {len(images)} frames")
    times_file = seq_dir / "times.txt"
    stamps = (
        np.loadtxt(times_file, dtype=np.float64, ndmin=1)
        if times_file.is_file()
        else np.arange(len(images)) / FPS
    )
    if len(stamps) != len(images):
        raise InputError(f"{times_file}: {len(stamps)} times for {len(images)} frames")
    return Sequence("kitti", seq, list(images), stamps, poses, k, meta={"layout": "odometry"})


def _find_cam_to_cam(drive: Path) -> Path | None:
    for d in (drive, drive.parent):
        if (d / "calib_cam_to_cam.txt").is_file():
            return d / "calib_cam_to_cam.txt"
    return None


def load_depth_drive(drive: Path) -> Sequence:
    depth_dir = require_dir(drive / "proj_depth" / "groundtruth" / "image_02", "KITTI depth")
    image_dir = require_dir(drive / "image_02" / "data", "KITTI colour frames (image_02/data)")
    depth_files = sorted(depth_dir.glob("*.png"), key=natural_key)
    pairs = [(image_dir / d.name, d) for d in depth_files if (image_dir / d.name).is_file()]
    if not pairs:
        raise InputError(f"no colour frame in {image_dir} matches a depth map of {depth_dir}")
    k = None
    calib_path = _find_cam_to_cam(drive)
    if calib_path is not None:
        calib = read_calib(calib_path)
        if "P_rect_02" in calib and calib["P_rect_02"].size == 12:
            k = calib["P_rect_02"].reshape(3, 4)[:, :3]
    frame_ids = np.array([int(d.stem) for _, d in pairs], dtype=np.float64)
    return Sequence(
        "kitti",
        drive.name,
        [i for i, _ in pairs],
        frame_ids / FPS,
        intrinsics=k,
        depths=[d for _, d in pairs],
        depth_reader=lambda p: read_png_depth(p, DEPTH_UNITS_PER_METRE),
        meta={"layout": "depth", "depth_units": "16-bit PNG / 256"},
    )


def load(root: Path) -> list[Sequence]:
    """Odometry sequences if ``root/sequences`` exists, else depth-benchmark drives."""
    root = require_dir(Path(root), "dataset root")
    if (root / "sequences").is_dir():
        seqs = sorted(
            (p.name for p in (root / "sequences").iterdir() if p.is_dir()), key=natural_key
        )
        return [load_odometry_sequence(root, s) for s in seqs]
    if (root / "proj_depth").is_dir():
        return [load_depth_drive(root)]
    drives = sorted((p for p in root.rglob("proj_depth") if p.is_dir()), key=natural_key)
    if not drives:
        raise InputError(f"{root} is neither a KITTI odometry root nor holds depth drives")
    return [load_depth_drive(p.parent) for p in drives]
