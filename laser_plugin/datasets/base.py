"""The sequence type every dataset reader yields, and small file helpers they share.

Conventions (those of ``laser_plugin.types``): ground-truth poses are camera-to-world with
OpenCV camera axes (x right, y down, z forward); depth is camera-frame z-depth in metres
(float32, 0 = invalid); intrinsics are 3x3 pixel matrices for the image resolution.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from laser_plugin.errors import InputError

ImageItem = Path | np.ndarray | Callable[[], np.ndarray]
"""A frame (or depth map): a file to read, an array in memory, or a zero-argument function
that produces it on demand (synthetic scenes render lazily)."""

# OpenGL camera axes (x right, y up, z back) → OpenCV (x right, y down, z forward): flip y, z.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Sequence:
    """One video of a dataset with whatever ground truth the dataset has."""

    dataset: str
    """Reader name (``tum``, ``kitti``, ...)."""
    name: str
    """Sequence name, unique within the dataset."""
    images: list[ImageItem]
    """N frames in temporal order."""
    timestamps: np.ndarray
    """(N,) seconds."""
    cam_to_world: np.ndarray | None = None
    """(N, 4, 4) float64 ground-truth poses, OpenCV axes; rows of NaN where a pose is missing."""
    intrinsics: np.ndarray | None = None
    """(N, 3, 3) float64 pixel intrinsics of the images, if known."""
    depths: list[ImageItem] | None = None
    """N ground-truth depth files or (H, W) arrays, if the dataset has depth."""
    depth_reader: Callable[[Path], np.ndarray] | None = None
    """Reads one depth file to (H, W) float32 metres, 0 = invalid."""
    meta: dict = field(default_factory=dict)
    """Free-form notes (units, source layout) carried into reports."""

    def __post_init__(self) -> None:
        n = len(self.images)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.timestamps.shape != (n,):
            raise ValueError(f"{self.name}: {n} images but {self.timestamps.shape} timestamps")
        if self.cam_to_world is not None:
            self.cam_to_world = np.asarray(self.cam_to_world, dtype=np.float64)
            if self.cam_to_world.shape != (n, 4, 4):
                raise ValueError(f"{self.name}: poses must be ({n}, 4, 4)")
        if self.intrinsics is not None:
            k = np.asarray(self.intrinsics, dtype=np.float64)
            self.intrinsics = np.broadcast_to(k, (n, 3, 3)).copy() if k.shape == (3, 3) else k
            if self.intrinsics.shape != (n, 3, 3):
                raise ValueError(f"{self.name}: intrinsics must be ({n}, 3, 3)")
        if self.depths is not None and len(self.depths) != n:
            raise ValueError(f"{self.name}: {n} images but {len(self.depths)} depth maps")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_depth(self) -> bool:
        return self.depths is not None

    @property
    def has_poses(self) -> bool:
        return self.cam_to_world is not None

    @property
    def pose_valid(self) -> np.ndarray:
        """(N,) bool: frames with a finite ground-truth pose."""
        if self.cam_to_world is None:
            return np.zeros(len(self), dtype=bool)
        return np.all(np.isfinite(self.cam_to_world.reshape(len(self), -1)), axis=1)

    def load_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of frame i."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            return item
        return item() if callable(item) else read_rgb(item)

    def load_depth(self, i: int) -> np.ndarray:
        """(H, W) float32 ground-truth depth of frame i in metres, 0 = invalid."""
        if self.depths is None:
            raise InputError(f"{self.dataset}/{self.name} has no ground-truth depth")
        item = self.depths[i]
        if isinstance(item, np.ndarray):
            return np.asarray(item, dtype=np.float32)
        if callable(item):
            return np.asarray(item(), dtype=np.float32)
        if self.depth_reader is None:
            raise ValueError(f"{self.name}: depth files without a depth_reader")
        return self.depth_reader(item)

    def iter_images(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.load_image(i)

    def subset(self, start: int = 0, stride: int = 1, max_frames: int | None = None) -> Sequence:
        """Frames start, start + stride, ... (at most ``max_frames``), as a new sequence."""
        if start < 0 or stride < 1:
            raise ValueError("start must be >= 0 and stride >= 1")
        idx = np.arange(start, len(self), stride)
        if max_frames is not None:
            idx = idx[:max_frames]

        def pick(x):
            if x is None:
                return None
            return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]

        return replace(
            self,
            images=pick(self.images),
            timestamps=self.timestamps[idx],
            cam_to_world=pick(self.cam_to_world),
            intrinsics=pick(self.intrinsics),
            depths=pick(self.depths),
        )


# ----------------------------------------------------------------------------- helpers


def natural_key(path: Path | str) -> list:
    """Sort key treating digit runs as numbers: frame2 < frame10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (grey and RGBA converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc


def read_png_depth(path: Path, units_per_metre: float, invalid: int | None = None) -> np.ndarray:
    """16-bit depth PNG → float32 metres (0 stays 0 = invalid; ``invalid`` also maps to 0)."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read depth {path}: {exc}") from exc
    if raw.ndim != 2:
        raise InputError(f"depth PNG {path} must be single-channel, got shape {raw.shape}")
    depth = raw.astype(np.float32) / np.float32(units_per_metre)
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth


def read_matrix_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated matrix (e.g. a 4x4 pose) as float64."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: not a numeric matrix ({exc})") from exc
    if values.size != shape[0] * shape[1]:
        raise InputError(f"{path}: expected {shape[0]}x{shape[1]} numbers, got {values.size}")
    return values.reshape(shape)


def pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(3, 3) intrinsics matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions in (x, y, z, w) order (the TUM file order) → (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def se3(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) and (..., 3) → (..., 4, 4) homogeneous transforms."""
    rotation = np.asarray(rotation, dtype=np.float64)
    out = np.zeros((*rotation.shape[:-2], 4, 4))
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def sequence_dirs(root: Path, marker: str) -> list[Path]:
    """``root`` itself if it contains ``marker``, else its sub-directories that do (sorted)."""
    require_dir(root, "dataset root")
    if (root / marker).exists():
        return [root]
    found = sorted((p for p in root.iterdir() if (p / marker).exists()), key=natural_key)
    if not found:
        raise InputError(f"no sequence with {marker!r} under {root}")
    return found
