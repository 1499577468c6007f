"""Microsoft 7-Scenes.

Layout (``root`` holds scene folders, each with ``seq-NN`` folders; a scene or a single
``seq-NN`` folder also works)::

    <scene>/seq-01/frame-000000.color.png   640x480 RGB
    <scene>/seq-01/frame-000000.depth.png   uint16 millimetres; 0 and 65535 = invalid
    <scene>/seq-01/frame-000000.pose.txt    4x4 camera-to-world (OpenCV axes)

The Kinect's published intrinsics are fx = fy = 585, cx = 320, cy = 240 (the depth is not
registered to the colour image; the evaluations of this line of work use it as is). 30 Hz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import (
    Sequence,
    natural_key,
    pinhole,
    read_matrix_file,
    read_png_depth,
    require_dir,
)
from laser_plugin.errors import InputError

INTRINSICS = pinhole(585.0, 585.0, 320.0, 240.0)
FPS = 30.0


def load_sequence(seq_dir: Path, scene: str) -> Sequence:
    images = sorted(seq_dir.glob("frame-*.color.png"), key=natural_key)
    if not images:
        raise InputError(f"no frame-*.color.png in {seq_dir}")
    stems = [p.name[: -len(".color.png")] for p in images]
    poses = np.stack([read_matrix_file(seq_dir / f"{s}.pose.txt", (4, 4)) for s in stems])
    poses[~np.all(np.isfinite(poses.reshape(len(stems), -1)), axis=1)] = np.nan
    depths = [seq_dir / f"{s}.depth.png" for s in stems]
    missing = [d for d in depths if not d.is_file()]
    if missing:
        raise InputError(f"7-Scenes depth missing: {missing[0]}")
    ids = np.array([int(s.split("-")[1]) for s in stems], dtype=np.float64)
    return Sequence(
        "7scenes",
        f"{scene}/{seq_dir.name}",
        list(images),
        ids / FPS,
        poses,
        INTRINSICS,
        depths,
        depth_reader=lambda p: read_png_depth(p, 1000.0, invalid=65535),
    )


def load(root: Path) -> list[Sequence]:
    root = require_dir(Path(root), "dataset root")
    if any(root.glob("frame-*.color.png")):
        return [load_sequence(root, root.parent.name)]
    seq_dirs = sorted(root.glob("seq-*"), key=natural_key)
    if seq_dirs:
        return [load_sequence(d, root.name) for d in seq_dirs]
    seq_dirs = sorted(root.glob("*/seq-*"), key=natural_key)
    if not seq_dirs:
        raise InputError(f"no 7-Scenes <scene>/seq-NN folders under {root}")
    return [load_sequence(d, d.parent.name) for d in seq_dirs if d.is_dir()]
