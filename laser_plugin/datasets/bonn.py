"""Bonn RGB-D Dynamic: the TUM layout (``rgb.txt``, ``depth.txt``, ``groundtruth.txt``, depth
PNG / 5000) with one calibrated camera. Sequence directories are ``rgbd_bonn_<name>``.

The ground truth is the motion-capture pose given in the TUM file format; we use it as
camera-to-world with OpenCV axes, as the evaluations of this line of work do.
"""

from __future__ import annotations

from pathlib import Path

from laser_plugin.datasets import tum
from laser_plugin.datasets.base import Sequence, pinhole, sequence_dirs

# Colour intrinsics published with the dataset.
INTRINSICS = pinhole(542.822841, 542.576870, 315.593520, 237.756098)


def load(root: Path) -> list[Sequence]:
    """All Bonn sequences under ``root`` (or ``root`` itself if it is one)."""
    return [
        tum.load_sequence(d, dataset="bonn", intrinsics=INTRINSICS)
        for d in sequence_dirs(Path(root), "rgb.txt")
    ]
