"""COLMAP sparse-model export (``cameras``/``images``/``points3D``, binary or text).

For trainers that read COLMAP rather than nerfstudio data: gsplat's examples and the original
3D Gaussian Splatting code. Layout::

    OUT/images/frame_NNNNNN.png
    OUT/sparse/0/cameras.bin  images.bin  points3D.bin   (or .txt)

Conventions (COLMAP's): ``images`` store world-to-camera rotation as a unit quaternion in
(w, x, y, z) order plus translation, OpenCV camera axes; PINHOLE parameters are
``fx fy cx cy`` with the top-left pixel centre at (0.5, 0.5). Points carry no 2D tracks (the
feed-forward model gives dense depth, not feature matches); readers that need tracks for
bundle adjustment will find none.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laser_plugin.errors import ConfigError
from laser_plugin.geometry.camera import rotmat_to_quat_xyzw
from laser_plugin.integrations.nerfstudio.files import (
    encode_image,
    frame_image,
)
from laser_plugin.integrations.nerfstudio.options import ColmapExportConfig as ColmapExportConfig
from laser_plugin.integrations.nerfstudio.schema import PinholeIntrinsics
from laser_plugin.io.atomic import write_bytes_atomic
from laser_plugin.io.ownership import ExportJournal
from laser_plugin.mapping import VoxelMap
from laser_plugin.types import ReconstructedFrame

PINHOLE_MODEL_ID = 1  # COLMAP's CameraModelId for PINHOLE (fx, fy, cx, cy)


@dataclass(frozen=True)
class ColmapImage:
    image_id: int
    camera_id: int
    name: str
    qvec_wxyz: np.ndarray
    """(4,) world-to-camera rotation, (w, x, y, z)."""
    tvec: np.ndarray
    """(3,) world-to-camera translation."""


def world_to_camera_colmap(cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) OpenCV camera-to-world -> (qvec (w, x, y, z), tvec) of COLMAP's world-to-camera."""
    c2w = np.asarray(cam_to_world, np.float64)
    r_w2c = c2w[:3, :3].T
    t_w2c = -r_w2c @ c2w[:3, 3]
    x, y, z, w = rotmat_to_quat_xyzw(r_w2c)  # geometry.camera returns (x, y, z, w)
    return np.array([w, x, y, z]), t_w2c


class ColmapWriter:
    """Sink writing a COLMAP sparse model; :meth:`close` writes the model files (idempotent)."""

    def __init__(self, output_dir: str | Path, config: ColmapExportConfig | None = None) -> None:
        self.config = config or ColmapExportConfig()
        if self.config.point_stride < 1 or self.config.max_points < 1:
            raise ConfigError("point_stride and max_points must be at least 1")
        self.root = Path(output_dir)
        self.sparse = self.root / "sparse" / "0"
        # Only files this exporter journalled are ever replaced or removed; a non-empty folder
        # that is not an export of ours is refused (laser_plugin.io.ownership).
        self._journal = ExportJournal(
            self.root,
            overwrite=self.config.overwrite,
            done=f"sparse/0/images.{self.config.model_format}",
            what="COLMAP model",
        )
        try:
            self._journal.mkdir("images")
            self._journal.mkdir("sparse/0")
        except BaseException:
            self._journal.close()
            raise
        self._cameras: dict[PinholeIntrinsics, int] = {}
        self._images: list[ColmapImage] = []
        self._cloud: VoxelMap | None = None
        self._closed = False

    def on_frame(self, frame: ReconstructedFrame) -> None:
        cfg = self.config
        image, intr = frame_image(frame, cfg.image_resolution)
        name = f"frame_{frame.index:06d}.{cfg.image_format}"
        write_bytes_atomic(
            self._journal.record(f"images/{name}"), encode_image(image, cfg.image_format)
        )
        # identical intrinsics share one COLMAP camera (rounded so float noise does not split them)
        key = PinholeIntrinsics(
            *(round(v, 6) for v in (intr.fl_x, intr.fl_y, intr.cx, intr.cy)), intr.w, intr.h
        )
        camera_id = self._cameras.setdefault(key, len(self._cameras) + 1)
        qvec, tvec = world_to_camera_colmap(frame.cam_to_world)
        self._images.append(ColmapImage(len(self._images) + 1, camera_id, name, qvec, tvec))
        if self._cloud is None:
            voxel = cfg.voxel_size
            if voxel is None:
                valid = frame.depth[(frame.depth > 0) & np.isfinite(frame.depth)]
                if valid.size == 0:
                    return
                voxel = float(np.median(valid)) * cfg.point_stride / float(frame.intrinsics[0, 0])
            self._cloud = VoxelMap(voxel_size=voxel, max_points=cfg.max_points)
        self._cloud.add(*frame.points_world(min_conf=cfg.point_min_conf, stride=cfg.point_stride))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
        finally:
            self._journal.close()  # also releases the directory lock

    def _finish(self) -> None:
        if not self._images:
            return  # nothing to describe; callers check for frames themselves
        xyz, rgb = (
            self._cloud.points()
            if self._cloud is not None
            else (np.zeros((0, 3)), np.zeros((0, 3)))
        )
        if self.config.model_format == "bin":
            files = {
                "cameras.bin": _cameras_bin(self._cameras),
                "images.bin": _images_bin(self._images),
                "points3D.bin": _points_bin(xyz, rgb),
            }
        else:
            files = {
                "cameras.txt": _cameras_txt(self._cameras),
                "images.txt": _images_txt(self._images),
                "points3D.txt": _points_txt(xyz, rgb),
            }
        # images last: a reader that finds it finds the rest too
        for name in sorted(files, key=lambda n: n.startswith("images")):
            write_bytes_atomic(self._journal.record(f"sparse/0/{name}"), files[name])


def _cameras_bin(cameras: dict[PinholeIntrinsics, int]) -> bytes:
    buf = io.BytesIO()
    buf.write(struct.pack("<Q", len(cameras)))
    for k, cid in cameras.items():
        buf.write(struct.pack("<iiQQ", cid, PINHOLE_MODEL_ID, k.w, k.h))
        buf.write(struct.pack("<4d", k.fl_x, k.fl_y, k.cx, k.cy))
    return buf.getvalue()


def _images_bin(images: list[ColmapImage]) -> bytes:
    buf = io.BytesIO()
    buf.write(struct.pack("<Q", len(images)))
    for im in images:
        buf.write(struct.pack("<i", im.image_id))
        buf.write(struct.pack("<7d", *im.qvec_wxyz, *im.tvec))
        buf.write(struct.pack("<i", im.camera_id))
        buf.write(im.name.encode("utf-8") + b"\x00")
        buf.write(struct.pack("<Q", 0))  # no 2D points
    return buf.getvalue()


def _points_bin(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    n = len(xyz)
    rec = np.empty(
        n,
        dtype=[
            ("id", "<u8"),
            ("xyz", "<f8", 3),
            ("rgb", "u1", 3),
            ("error", "<f8"),
            ("track_len", "<u8"),
        ],
    )
    rec["id"] = np.arange(1, n + 1)
    rec["xyz"] = xyz
    rec["rgb"] = rgb
    rec["error"] = 0.0
    rec["track_len"] = 0
    return struct.pack("<Q", n) + rec.tobytes()


def _cameras_txt(cameras: dict[PinholeIntrinsics, int]) -> bytes:
    lines = ["# Camera list: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [
        f"{cid} PINHOLE {k.w} {k.h} {k.fl_x!r} {k.fl_y!r} {k.cx!r} {k.cy!r}"
        for k, cid in cameras.items()
    ]
    return ("\n".join(lines) + "\n").encode()


def _images_txt(images: list[ColmapImage]) -> bytes:
    lines = [
        "# Image list: IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME; then POINTS2D[] (empty)"
    ]
    for im in images:
        vals = " ".join(repr(float(v)) for v in (*im.qvec_wxyz, *im.tvec))
        lines += [f"{im.image_id} {vals} {im.camera_id} {im.name}", ""]
    return ("\n".join(lines) + "\n").encode()


def _points_txt(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    lines = ["# 3D point list: POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] (empty)"]
    lines += [
        f"{i + 1} {p[0]!r} {p[1]!r} {p[2]!r} {c[0]} {c[1]} {c[2]} 0"
        for i, (p, c) in enumerate(zip(xyz.astype(float).tolist(), rgb.astype(int).tolist()))
    ]
    return ("\n".join(lines) + "\n").encode()
