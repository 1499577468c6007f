"""ScanNet, as exported by the official ``SensReader`` (``export_sampled`` layouts alike).

Layout of one scene directory (``root`` is one scene or a folder of scenes)::

    color/0.jpg ...                       colour frames (1296x968)
    depth/0.png ...                       uint16 millimetres, 0 = invalid (640x480)
    pose/0.txt ...                        4x4 camera-to-world (OpenCV axes); rows of -inf or
                                          NaN mark a frame the tracker lost
    intrinsic/intrinsic_color.txt         4x4, top-left 3x3 = colour intrinsics
    intrinsic/intrinsic_depth.txt         4x4 (depth intrinsics; the depth is registered to
                                          colour up to the resolution change)

Frame numbers come from the file names; the capture rate is 30 Hz. Invalid poses become NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import (
    Sequence,
    natural_key,
    read_matrix_file,
    read_png_depth,
    require_dir,
    sequence_dirs,
)
from laser_plugin.errors import InputError

FPS = 30.0


def load_sequence(scene: Path) -> Sequence:
    color_dir = require_dir(scene / "color", "ScanNet color folder")
    images = sorted(
        (p for p in color_dir.iterdir() if p.suffix.lower() in (".jpg", ".png")), key=natural_key
    )
    if not images:
        raise InputError(f"no frames in {color_dir}")
    try:
        ids = np.array([int(p.stem) for p in images])
    except ValueError as exc:
        raise InputError(f"{color_dir}: frame names must be numbers ({exc})") from exc
    poses = None
    if (scene / "pose").is_dir():
        poses = np.stack([read_matrix_file(scene / "pose" / f"{i}.txt", (4, 4)) for i in ids])
        poses[~np.all(np.isfinite(poses.reshape(len(ids), -1)), axis=1)] = np.nan
    depths = None
    if (scene / "depth").is_dir():
        depths = [scene / "depth" / f"{i}.png" for i in ids]
        missing = [d for d in depths if not d.is_file()]
        if missing:
            raise InputError(f"ScanNet depth missing: {missing[0]}")
    k = None
    k_file = scene / "intrinsic" / "intrinsic_color.txt"
    if k_file.is_file():
        k = read_matrix_file(k_file, (4, 4))[:3, :3]
    return Sequence(
        "scannet",
        scene.name,
        list(images),
        ids / FPS,
        poses,
        k,
        depths,
        depth_reader=lambda p: read_png_depth(p, 1000.0),
        meta={"depth_units": "16-bit PNG millimetres"},
    )


def load(root: Path) -> list[Sequence]:
    return [load_sequence(d) for d in sequence_dirs(Path(root), "color")]
