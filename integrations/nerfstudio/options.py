"""The export options of the nerfstudio and COLMAP writers, apart from the writers.

The ``laser`` command builds its help from these dataclasses on every start (``--help``
included); the writers import numpy, torch-backed geometry and the run's types, which a
command line should not pay for before it knows what it will do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

ImageResolution = Literal["source", "model"]
ImageFormat = Literal["png", "jpg"]
DepthFormat = Literal["npy", "png16"]


@dataclass
class NerfstudioExportConfig:
    """How a LASER reconstruction becomes a nerfstudio dataset."""

    image_resolution: ImageResolution = "source"
    """Write images at the input's original resolution ("source", when the frames carry it) or
    at the model's resolution ("model")."""
    image_format: ImageFormat = "png"
    """Image file format."""
    jpeg_quality: int = 95
    """JPEG quality when image_format is jpg."""
    num_downscales: int = 0
    """Also write images_2, images_4, ... (2**num_downscales) with matching depths_N."""
    depth_format: DepthFormat = "npy"
    """float32 .npy in scene units, or 16-bit PNG in thousandths of a scene unit."""
    point_min_conf: float = 0.5
    """Confidence (in [0, 1]) a pixel needs to enter sparse_pc.ply."""
    point_stride: int = 2
    """Take every n-th pixel per axis for sparse_pc.ply."""
    voxel_size: Annotated[float | None, tyro.conf.arg(metavar="SIZE")] = None
    """Voxel edge for downsampling sparse_pc.ply, in scene units. None: the footprint of one
    strided pixel at the first frame's median depth."""
    max_points: int = 1_000_000
    """Most points in sparse_pc.ply (beyond it the voxel size doubles)."""
    val_every: int = 8
    """Hold out every n-th frame (the middle one of each block) as val/test; 0: none."""
    overwrite: tyro.conf.Suppress[bool] = False
    """Replace an existing LASER dataset in the output directory."""

    def validate(self) -> NerfstudioExportConfig:
        from laser_plugin.errors import ConfigError

        if not 0 <= self.num_downscales <= 4:
            raise ConfigError(f"num_downscales must be in [0, 4], got {self.num_downscales}")
        if self.point_stride < 1:
            raise ConfigError(f"point_stride must be at least 1, got {self.point_stride}")
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ConfigError(f"voxel_size must be positive, got {self.voxel_size}")
        if self.max_points < 1 or self.val_every < 0:
            raise ConfigError("max_points must be >= 1 and val_every >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        return self


@dataclass
class ColmapExportConfig:
    """How a LASER reconstruction becomes a COLMAP sparse model."""

    image_resolution: ImageResolution = "source"
    """Images at the input's original resolution ("source") or the model's ("model")."""
    image_format: ImageFormat = "png"
    """Image file format."""
    model_format: Literal["bin", "txt"] = "bin"
    """COLMAP binary or text model files."""
    point_min_conf: float = 0.5
    """Confidence (in [0, 1]) a pixel needs to enter points3D."""
    point_stride: int = 2
    """Take every n-th pixel per axis for points3D."""
    voxel_size: Annotated[float | None, tyro.conf.arg(metavar="SIZE")] = None
    """Voxel edge for downsampling points3D (scene units); None: one strided pixel at the first
    frame's median depth."""
    max_points: int = 1_000_000
    """Most points in points3D (beyond it the voxel size doubles)."""
    overwrite: tyro.conf.Suppress[bool] = False
    """Replace an existing sparse model in the output directory."""
