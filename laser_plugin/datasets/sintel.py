"""MPI Sintel (training set), with the SDK's binary depth and camera files.

Layout (``root`` is the Sintel root or its ``training`` folder)::

    training/final/<seq>/frame_0001.png      (or clean/, the --pass option)
    training/depth/<seq>/frame_0001.dpt      float32 tag 202021.25, int32 width, int32 height,
                                             then width·height float32 z-depths, row-major
    training/camdata_left/<seq>/frame_0001.cam
                                             float32 tag 202021.25, then 9 float64 (3x3
                                             intrinsics M), then 12 float64 (3x4 world-to-camera
                                             extrinsics N), row-major, little-endian

Camera-to-world is the inverse of [N; 0 0 0 1]. Depth has no invalid value; the protocol
ignores pixels at or beyond 70 (scene units) and clamps predictions at 70. Frame rate 24 fps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import Sequence, natural_key, require_dir
from laser_plugin.errors import InputError

TAG = np.float32(202021.25)
FPS = 24.0


def read_dpt(path: Path) -> np.ndarray:
    """Sintel ``.dpt`` → (H, W) float32 depth."""
    with open(path, "rb") as f:
        tag = np.fromfile(f, dtype="<f4", count=1)
        if tag.size != 1 or tag[0] != TAG:
            raise InputError(f"{path}: not a Sintel .dpt file (bad tag)")
        size = np.fromfile(f, dtype="<i4", count=2)
        if size.size != 2 or not (0 < size[0] < 100_000 and 0 < size[1] < 100_000):
            raise InputError(f"{path}: bad .dpt size {size.tolist()}")
        width, height = int(size[0]), int(size[1])
        data = np.fromfile(f, dtype="<f4", count=width * height)
    if data.size != width * height:
        raise InputError(f"{path}: truncated .dpt ({data.size} of {width * height} values)")
    return data.reshape(height, width).astype(np.float32)


def read_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sintel ``.cam`` → (intrinsics (3, 3), camera-to-world (4, 4)), float64."""
    with open(path, "rb") as f:
        tag = np.fromfile(f, dtype="<f4", count=1)
        if tag.size != 1 or tag[0] != TAG:
            raise InputError(f"{path}: not a Sintel .cam file (bad tag)")
        m = np.fromfile(f, dtype="<f8", count=9)
        n = np.fromfile(f, dtype="<f8", count=12)
    if m.size != 9 or n.size != 12:
        raise InputError(f"{path}: truncated .cam file")
    cam_from_world = np.eye(4)
    cam_from_world[:3, :4] = n.reshape(3, 4)
    return m.reshape(3, 3), np.linalg.inv(cam_from_world)


def _training_dir(root: Path) -> Path:
    root = require_dir(Path(root), "dataset root")
    return root / "training" if (root / "training").is_dir() else root


def load_sequence(train: Path, seq: str, render_pass: str = "final") -> Sequence:
    image_dir = require_dir(train / render_pass / seq, f"Sintel {render_pass} frames")
    images = sorted(image_dir.glob("*.png"), key=natural_key)
    if not images:
        raise InputError(f"no PNG frames in {image_dir}")
    depth_dir, cam_dir = train / "depth" / seq, train / "camdata_left" / seq
    depths = None
    if depth_dir.is_dir():
        depths = [depth_dir / f"{p.stem}.dpt" for p in images]
        missing = [d for d in depths if not d.is_file()]
        if missing:
            raise InputError(f"Sintel depth missing: {missing[0]}")
    poses = intrinsics = None
    if cam_dir.is_dir():
        cams = [read_cam(cam_dir / f"{p.stem}.cam") for p in images]
        intrinsics = np.stack([c[0] for c in cams])
        poses = np.stack([c[1] for c in cams])
    return Sequence(
        "sintel",
        seq,
        list(images),
        np.arange(len(images)) / FPS,
        poses,
        intrinsics,
        depths,
        depth_reader=read_dpt,
        meta={"pass": render_pass},
    )


def load(root: Path, render_pass: str = "final") -> list[Sequence]:
    """All Sintel training sequences of one render pass (``final`` or ``clean``)."""
    train = _training_dir(root)
    pass_dir = require_dir(train / render_pass, f"Sintel {render_pass!r} pass folder")
    seqs = sorted((p.name for p in pass_dir.iterdir() if p.is_dir()), key=natural_key)
    if not seqs:
        raise InputError(f"no sequences in {pass_dir}")
    return [load_sequence(train, s, render_pass) for s in seqs]
