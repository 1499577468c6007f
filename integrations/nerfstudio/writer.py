"""Streams finalised frames into a nerfstudio dataset (a :class:`~laser_plugin.types.Sink`).

Layout of ``OUT``::

    transforms.json          written last, atomically: it exists only for a complete dataset
    images/frame_NNNNNN.png  source resolution (or model resolution), one per frame
    images_2/ images_4/ ...  optional downscales (``num_downscales``)
    depths/frame_NNNNNN.npy  z-depth, unit declared in transforms.json ("depth_unit_scale_factor")
    depths_2/ depths_4/ ...  matching the image downscales (nerfstudio expects them together)
    sparse_pc.ply            confidence-filtered, voxel-downsampled, coloured; same world frame

Poses are converted from OpenCV to OpenGL camera axes exactly once, by
:func:`laser_plugin.geometry.conventions.opencv_to_opengl_c2w`; the world frame (the first
camera) and the scale are kept as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from laser_plugin.errors import OutputError
from laser_plugin.geometry.conventions import opencv_to_opengl_c2w
from laser_plugin.integrations.nerfstudio.files import (
    encode_depth,
    encode_image,
    frame_image,
    resize_depth_nearest,
    resize_image,
)
from laser_plugin.integrations.nerfstudio.options import (
    NerfstudioExportConfig as NerfstudioExportConfig,
)
from laser_plugin.integrations.nerfstudio.schema import FrameEntry, TransformsFile
from laser_plugin.io.atomic import write_bytes_atomic
from laser_plugin.io.ownership import ExportJournal
from laser_plugin.io.ply import write_ply
from laser_plugin.mapping import VoxelMap
from laser_plugin.types import ReconstructedFrame

PLY_NAME = "sparse_pc.ply"


def held_out_indices(num_frames: int, every: int) -> list[int]:
    """Positions of the held-out frames: the middle frame of each block of ``every``.

    With at least two frames there is always one, so nerfstudio's eval never gets an empty split.
    """
    if every <= 0 or num_frames < 2:
        return []
    picked = [i for i in range(num_frames) if i % every == every // 2]
    return picked or [num_frames // 2]


class NerfstudioWriter:
    """Sink writing a nerfstudio dataset; call :meth:`close` to finish it (idempotent)."""

    def __init__(
        self,
        output_dir: str | Path,
        config: NerfstudioExportConfig | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.config = (config or NerfstudioExportConfig()).validate()
        self.root = Path(output_dir)
        self.provenance = dict(provenance or {})
        self._prepare_root()
        self._entries: list[FrameEntry] = []
        self._depth_scale: float | None = None
        self._cloud: VoxelMap | None = None
        self._closed = False

    # -- setup -----------------------------------------------------------------------------
    def _prepare_root(self) -> None:
        # Replacing an export removes only the files the journal shows this exporter wrote (a
        # user's images_raw/ or a photo put into images/ stays), and a non-empty folder that is
        # not an export of ours is refused (laser_plugin.io.ownership).
        self._journal = ExportJournal(
            self.root,
            overwrite=self.config.overwrite,
            done="transforms.json",
            what="nerfstudio dataset",
        )
        try:
            for name in self._image_dirs() + self._depth_dirs():
                self._journal.mkdir(name)
        except BaseException:
            self._journal.close()
            raise

    def _factors(self) -> list[int]:
        return [2**i for i in range(self.config.num_downscales + 1)]

    def _image_dirs(self) -> list[str]:
        return ["images" if f == 1 else f"images_{f}" for f in self._factors()]

    def _depth_dirs(self) -> list[str]:
        return ["depths" if f == 1 else f"depths_{f}" for f in self._factors()]

    # -- Sink protocol ---------------------------------------------------------------------
    def on_frame(self, frame: ReconstructedFrame) -> None:
        if self._closed:
            raise OutputError("nerfstudio writer is closed")
        cfg = self.config
        stem = f"frame_{frame.index:06d}"
        image, intr = frame_image(frame, cfg.image_resolution)
        img_name = f"{stem}.{cfg.image_format}"
        depth_name = f"{stem}.{'npy' if cfg.depth_format == 'npy' else 'png'}"
        for factor, img_dir, depth_dir in zip(
            self._factors(), self._image_dirs(), self._depth_dirs()
        ):
            w, h = max(1, intr.w // factor), max(1, intr.h // factor)
            img = image if factor == 1 else resize_image(image, w, h)
            write_bytes_atomic(
                self._journal.record(f"{img_dir}/{img_name}"),
                encode_image(img, cfg.image_format, cfg.jpeg_quality),
            )
            depth = frame.depth
            if depth.shape[1] > w:  # never store a depth map larger than its image
                depth = resize_depth_nearest(depth, w, h)
            data, unit = encode_depth(depth, cfg.depth_format)
            write_bytes_atomic(self._journal.record(f"{depth_dir}/{depth_name}"), data)
            self._depth_scale = unit
        self._entries.append(
            FrameEntry(
                file_path=f"images/{img_name}",
                transform_matrix=opencv_to_opengl_c2w(np.asarray(frame.cam_to_world, np.float64)),
                intrinsics=intr,
                depth_file_path=f"depths/{depth_name}",
                timestamp=float(frame.timestamp),
                laser_index=int(frame.index),
            )
        )
        self._add_points(frame)

    def _add_points(self, frame: ReconstructedFrame) -> None:
        cfg = self.config
        if self._cloud is None:
            voxel = cfg.voxel_size
            if voxel is None:
                valid = frame.depth[(frame.depth > 0) & np.isfinite(frame.depth)]
                if valid.size == 0:
                    return  # wait for a frame with depth to set the scale
                fx = float(frame.intrinsics[0, 0])
                voxel = float(np.median(valid)) * cfg.point_stride / fx
            self._cloud = VoxelMap(voxel_size=voxel, max_points=cfg.max_points)
        xyz, rgb = frame.points_world(min_conf=cfg.point_min_conf, stride=cfg.point_stride)
        self._cloud.add(xyz, rgb)

    def close(self) -> None:
        """Write sparse_pc.ply, then transforms.json (atomically, last).

        With no frames it writes nothing (no transforms.json: not a dataset); callers that need
        frames check :attr:`num_frames` and raise their own error.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
        finally:
            self._journal.close()  # also releases the directory lock

    def _finish(self) -> None:
        if not self._entries:
            return
        ply_path = None
        if self._cloud is not None:
            xyz, rgb = self._cloud.points()
            if len(xyz):
                write_ply(self._journal.record(PLY_NAME), xyz, rgb)  # atomic
                ply_path = PLY_NAME
        names = [e.file_path for e in self._entries]
        held = set(held_out_indices(len(names), self.config.val_every))
        transforms = TransformsFile(
            frames=self._entries,
            depth_unit_scale_factor=float(self._depth_scale or 1.0),
            ply_file_path=ply_path,
            train_filenames=[n for i, n in enumerate(names) if i not in held] if held else [],
            val_filenames=[n for i, n in enumerate(names) if i in held],
            laser=self._provenance(),
        )
        text = json.dumps(transforms.to_json(), indent=2)
        write_bytes_atomic(self._journal.record("transforms.json"), text.encode("utf-8"))

    def _provenance(self) -> dict[str, Any]:
        return {
            "conventions": {
                "transform_matrix": "camera-to-world, OpenGL camera axes (x right, y up, z back)",
                "world": "the first frame's camera frame of the reconstruction (OpenCV axes), unscaled",
                "depth": "camera z-depth times depth_unit_scale_factor, in scene units; 0 = invalid",
                "intrinsics": "pixels, top-left pixel centre at (0.5, 0.5)",
            },
            "export": asdict(self.config),
            **self.provenance,
        }

    @property
    def num_frames(self) -> int:
        return len(self._entries)

    @property
    def num_points(self) -> int:
        return 0 if self._cloud is None else len(self._cloud)
