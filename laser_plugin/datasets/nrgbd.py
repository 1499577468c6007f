"""Neural RGB-D synthetic scenes (Azinović et al. 2022), the "NRGBD" of the reconstruction
evaluations.

Layout of one scene directory::

    images/img0.png ...      640x480 RGB
    depth/depth0.png ...     uint16 millimetres, rendered ground truth (``depth_filtered/`` and
                             ``depth_with_noise/`` hold simulated sensor depth)
    poses.txt                4 lines of a 4x4 camera-to-world per frame in OpenGL axes
                             (x right, y up, z back); 'nan' entries mark invalid frames
    focal.txt                one number: the focal length in pixels (principal point at the
                             image centre)

Poses are converted to OpenCV axes here (right-multiplied by diag(1, -1, -1, 1)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import (
    GL_TO_CV,
    Sequence,
    natural_key,
    pinhole,
    read_png_depth,
    read_rgb,
    require_dir,
    require_file,
    sequence_dirs,
)
from laser_plugin.errors import InputError

FPS = 30.0


def read_poses(path: Path) -> np.ndarray:
    """``poses.txt`` → (N, 4, 4) OpenGL camera-to-world, NaN for invalid frames."""
    rows = []
    for line in require_file(path, "NRGBD poses.txt").read_text().splitlines():
        if line.strip():
            rows.append([float(v) for v in line.split()])  # float('nan') parses 'nan'
    values = np.array(rows, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 4 or len(values) % 4:
        raise InputError(f"{path}: expected 4 lines of 4 numbers per frame")
    return values.reshape(-1, 4, 4)


def load_sequence(scene: Path, depth_folder: str = "depth") -> Sequence:
    images = sorted(require_dir(scene / "images", "NRGBD images").glob("img*.png"), key=natural_key)
    if not images:
        raise InputError(f"no img*.png in {scene / 'images'}")
    ids = [int(p.stem[3:]) for p in images]
    poses_gl = read_poses(scene / "poses.txt")
    if len(poses_gl) < max(ids) + 1:
        raise InputError(f"{scene / 'poses.txt'}: {len(poses_gl)} poses for frame {max(ids)}")
    poses = poses_gl[ids] @ GL_TO_CV
    focal = float(require_file(scene / "focal.txt", "NRGBD focal.txt").read_text().split()[0])
    h, w = read_rgb(images[0]).shape[:2]
    depths = None
    if (scene / depth_folder).is_dir():
        depths = [scene / depth_folder / f"depth{i}.png" for i in ids]
    return Sequence(
        "nrgbd",
        scene.name,
        list(images),
        np.array(ids, dtype=np.float64) / FPS,
        poses,
        pinhole(focal, focal, w / 2.0, h / 2.0),
        depths,
        depth_reader=lambda p: read_png_depth(p, 1000.0),
    )


def load(root: Path) -> list[Sequence]:
    return [load_sequence(d) for d in sequence_dirs(Path(root), "poses.txt")]
