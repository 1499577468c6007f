"""TUM RGB-D (and its layout, shared by Bonn RGB-D Dynamic).

Layout of one sequence directory (https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats)::

    rgb.txt          "timestamp filename" per line, '#' comments
    depth.txt        same, 16-bit PNG depth, 5000 units per metre, 0 = invalid
    groundtruth.txt  "timestamp tx ty tz qx qy qz qw": the colour camera's optical centre and
                     orientation in the motion-capture world (camera-to-world, OpenCV axes;
                     quaternion x, y, z, w)

Frames are the colour images; each gets the depth image and ground-truth pose nearest in time
(within ``max_dt`` seconds, as TUM's ``associate.py`` does with 0.02 s). Colour frames without
a depth match are dropped when the sequence has depth; frames without a pose get NaN poses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.datasets.base import (
    Sequence,
    pinhole,
    quat_xyzw_to_matrix,
    read_png_depth,
    require_file,
    se3,
    sequence_dirs,
)
from laser_plugin.errors import InputError

DEPTH_UNITS_PER_METRE = 5000.0

# Calibrated colour intrinsics published with the dataset (fx, fy, cx, cy), by camera.
INTRINSICS = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}


def read_file_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """``timestamp value...`` lines (comments skipped) → (timestamps (N,), rest of each line)."""
    stamps, rest = [], []
    for lineno, line in enumerate(require_file(path, "list file").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split(maxsplit=1)
        try:
            stamps.append(float(parts[0]))
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: bad timestamp {parts[0]!r}") from exc
        rest.append(parts[1] if len(parts) > 1 else "")
    return np.asarray(stamps, dtype=np.float64), rest


def read_tum_trajectory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """TUM trajectory file → (timestamps (N,), camera-to-world (N, 4, 4))."""
    stamps, rest = read_file_list(path)
    try:
        values = np.array([r.split() for r in rest], dtype=np.float64).reshape(-1, 7)
    except ValueError as exc:
        raise InputError(f"{path}: expected 'timestamp tx ty tz qx qy qz qw' lines") from exc
    return stamps, se3(quat_xyzw_to_matrix(values[:, 3:]), values[:, :3])


def nearest(query: np.ndarray, stamps: np.ndarray, max_dt: float) -> np.ndarray:
    """Index of the nearest stamp for each query time, -1 if none within ``max_dt``. (Q,)"""
    if stamps.size == 0:
        return np.full(query.shape, -1)
    order = np.argsort(stamps)
    sorted_stamps = stamps[order]
    pos = np.searchsorted(sorted_stamps, query)
    lo = np.clip(pos - 1, 0, len(sorted_stamps) - 1)
    hi = np.clip(pos, 0, len(sorted_stamps) - 1)
    pick = np.where(np.abs(query - sorted_stamps[lo]) <= np.abs(sorted_stamps[hi] - query), lo, hi)
    idx = order[pick]
    return np.where(np.abs(stamps[idx] - query) <= max_dt, idx, -1)


def intrinsics_for(name: str) -> np.ndarray | None:
    for key, (fx, fy, cx, cy) in INTRINSICS.items():
        if key in name:
            return pinhole(fx, fy, cx, cy)
    return None


def load_sequence(
    seq_dir: Path,
    dataset: str = "tum",
    intrinsics: np.ndarray | None = None,
    max_dt: float = 0.02,
) -> Sequence:
    """Read one TUM-layout sequence directory."""
    stamps, rgb_files = read_file_list(seq_dir / "rgb.txt")
    if stamps.size == 0:
        raise InputError(f"{seq_dir / 'rgb.txt'} lists no frames")
    keep = np.arange(stamps.size)
    depths = None
    if (seq_dir / "depth.txt").is_file():
        d_stamps, d_files = read_file_list(seq_dir / "depth.txt")
        match = nearest(stamps, d_stamps, max_dt)
        keep = np.flatnonzero(match >= 0)
        if keep.size == 0:
            raise InputError(f"{seq_dir}: no colour frame has a depth frame within {max_dt} s")
        depths = [seq_dir / d_files[j] for j in match[keep]]
    poses = None
    if (seq_dir / "groundtruth.txt").is_file():
        g_stamps, g_poses = read_tum_trajectory(seq_dir / "groundtruth.txt")
        match = nearest(stamps[keep], g_stamps, max_dt)
        poses = np.full((keep.size, 4, 4), np.nan)
        poses[match >= 0] = g_poses[match[match >= 0]]
    k = intrinsics if intrinsics is not None else intrinsics_for(seq_dir.name)
    return Sequence(
        dataset=dataset,
        name=seq_dir.name,
        images=[seq_dir / rgb_files[i] for i in keep],
        timestamps=stamps[keep],
        cam_to_world=poses,
        intrinsics=k,
        depths=depths,
        depth_reader=lambda p: read_png_depth(p, DEPTH_UNITS_PER_METRE),
        meta={"depth_units": "16-bit PNG / 5000"},
    )


def load(root: Path) -> list[Sequence]:
    """All TUM sequences under ``root`` (or ``root`` itself if it is one)."""
    return [load_sequence(d) for d in sequence_dirs(Path(root), "rgb.txt")]
