"""Typed schema of the nerfstudio ``transforms.json`` we write (and read back).

Keys follow nerfstudio 1.1.5's ``nerfstudio-data`` parser: per-frame ``file_path``,
``transform_matrix`` (camera-to-world, OpenGL camera axes), ``depth_file_path`` and pinhole
intrinsics ``fl_x, fl_y, cx, cy, w, h``; top-level ``camera_model``, ``ply_file_path``,
``train_filenames``/``val_filenames``. Keys nerfstudio does not know (``depth_unit_scale_factor``,
``laser``, per-frame ``timestamp``/``laser_index``) are ignored by it and read by our ``laser-data``
dataparser and by :func:`TransformsFile.from_json`.

Pixel convention: nerfstudio, like COLMAP, puts the centre of the top-left pixel at (0.5, 0.5);
the engine (OpenCV) puts it at (0, 0). :meth:`PinholeIntrinsics.from_opencv` is the one place that
offset is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from laser_plugin.integrations.nerfstudio.options import DepthFormat as DepthFormat

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PinholeIntrinsics:
    """Pinhole intrinsics in nerfstudio's pixel convention (top-left pixel centre at 0.5, 0.5)."""

    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int

    @classmethod
    def from_opencv(cls, k: np.ndarray, width: int, height: int) -> PinholeIntrinsics:
        """From a (3, 3) OpenCV matrix (pixel centres at integers) for a (height, width) image."""
        k = np.asarray(k, dtype=np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all():
            raise ValueError(f"intrinsics must be a finite (3, 3) matrix, got shape {k.shape}")
        return cls(
            fl_x=float(k[0, 0]),
            fl_y=float(k[1, 1]),
            cx=float(k[0, 2]) + 0.5,
            cy=float(k[1, 2]) + 0.5,
            w=int(width),
            h=int(height),
        )

    def to_opencv(self) -> np.ndarray:
        """(3, 3) OpenCV matrix (pixel centres at integers)."""
        return np.array(
            [[self.fl_x, 0.0, self.cx - 0.5], [0.0, self.fl_y, self.cy - 0.5], [0.0, 0.0, 1.0]]
        )

    def resized(self, width: int, height: int) -> PinholeIntrinsics:
        """The same camera for the image resized to (height, width); exact in this convention."""
        sx, sy = width / self.w, height / self.h
        return PinholeIntrinsics(
            self.fl_x * sx, self.fl_y * sy, self.cx * sx, self.cy * sy, int(width), int(height)
        )


@dataclass(frozen=True)
class FrameEntry:
    """One image of the dataset."""

    file_path: str
    """Image path relative to the dataset root (``images/frame_000000.png``)."""
    transform_matrix: np.ndarray
    """(4, 4) camera-to-world, OpenGL camera axes (x right, y up, z back)."""
    intrinsics: PinholeIntrinsics
    """Intrinsics for the image at ``file_path``."""
    depth_file_path: str | None = None
    """Depth map path relative to the root, or None (all frames have one, or none does)."""
    timestamp: float | None = None
    """Seconds in the source stream (ignored by nerfstudio)."""
    laser_index: int | None = None
    """Frame index in the LASER stream (ignored by nerfstudio)."""

    def to_json(self) -> dict[str, Any]:
        m = np.asarray(self.transform_matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"{self.file_path}: transform_matrix must be a finite (4, 4) matrix")
        out: dict[str, Any] = {
            "file_path": self.file_path,
            "transform_matrix": m.tolist(),
            "fl_x": self.intrinsics.fl_x,
            "fl_y": self.intrinsics.fl_y,
            "cx": self.intrinsics.cx,
            "cy": self.intrinsics.cy,
            "w": self.intrinsics.w,
            "h": self.intrinsics.h,
        }
        if self.depth_file_path is not None:
            out["depth_file_path"] = self.depth_file_path
        if self.timestamp is not None:
            out["timestamp"] = float(self.timestamp)
        if self.laser_index is not None:
            out["laser_index"] = int(self.laser_index)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrameEntry:
        return cls(
            file_path=str(d["file_path"]),
            transform_matrix=np.asarray(d["transform_matrix"], dtype=np.float64),
            intrinsics=PinholeIntrinsics(
                float(d["fl_x"]),
                float(d["fl_y"]),
                float(d["cx"]),
                float(d["cy"]),
                int(d["w"]),
                int(d["h"]),
            ),
            depth_file_path=d.get("depth_file_path"),
            timestamp=d.get("timestamp"),
            laser_index=d.get("laser_index"),
        )


@dataclass
class TransformsFile:
    """The whole ``transforms.json``."""

    frames: list[FrameEntry]
    """All images, in stream order."""
    depth_unit_scale_factor: float = 1.0
    """Multiply stored depth values by this to get scene units (1.0 for float ``.npy``, 0.001 for
    16-bit PNG in thousandths). nerfstudio's own parser ignores this key: pass
    ``--depth-unit-scale-factor`` to ``nerfstudio-data``, or use ``laser-data`` which reads it."""
    ply_file_path: str | None = None
    """Sparse point cloud relative to the root, in the same world frame as the poses."""
    train_filenames: list[str] = field(default_factory=list)
    """Images of the training split (paths as in ``file_path``)."""
    val_filenames: list[str] = field(default_factory=list)
    """Held-out images (nerfstudio's val and test splits)."""
    camera_model: Literal["PINHOLE"] = "PINHOLE"
    """Undistorted pinhole cameras (the feed-forward models predict no distortion)."""
    laser: dict[str, Any] = field(default_factory=dict)
    """Provenance: model, settings, units, conventions (ignored by nerfstudio)."""

    def to_json(self) -> dict[str, Any]:
        if not self.frames:
            raise ValueError("a nerfstudio dataset needs at least one frame")
        with_depth = {f.depth_file_path is not None for f in self.frames}
        if len(with_depth) > 1:
            raise ValueError("depth_file_path must be given for every frame or for none")
        names = {f.file_path for f in self.frames}
        for split in (self.train_filenames, self.val_filenames):
            missing = set(split) - names
            if missing:
                raise ValueError(f"split lists unknown images: {sorted(missing)[:3]}")
        out: dict[str, Any] = {
            "camera_model": self.camera_model,
            "depth_unit_scale_factor": float(self.depth_unit_scale_factor),
            "frames": [f.to_json() for f in self.frames],
        }
        if self.ply_file_path is not None:
            out["ply_file_path"] = self.ply_file_path
        if self.train_filenames or self.val_filenames:
            # nerfstudio needs every split it is asked for once one is listed; test = val here
            out["train_filenames"] = list(self.train_filenames)
            out["val_filenames"] = list(self.val_filenames)
            out["test_filenames"] = list(self.val_filenames)
        out["laser"] = {"schema_version": SCHEMA_VERSION, **self.laser}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransformsFile:
        return cls(
            frames=[FrameEntry.from_json(f) for f in d["frames"]],
            depth_unit_scale_factor=float(d.get("depth_unit_scale_factor", 1.0)),
            ply_file_path=d.get("ply_file_path"),
            train_filenames=list(d.get("train_filenames", [])),
            val_filenames=list(d.get("val_filenames", [])),
            camera_model=d.get("camera_model", "PINHOLE"),
            laser={k: v for k, v in d.get("laser", {}).items() if k != "schema_version"},
        )
