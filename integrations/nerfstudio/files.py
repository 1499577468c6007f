"""Image and depth encoding shared by the nerfstudio and COLMAP writers."""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np

from laser_plugin.integrations.nerfstudio.options import ImageFormat as ImageFormat
from laser_plugin.integrations.nerfstudio.options import ImageResolution as ImageResolution
from laser_plugin.integrations.nerfstudio.schema import PinholeIntrinsics
from laser_plugin.types import ReconstructedFrame

MAX_ASPECT_CHANGE = 0.05
"""Largest |log| change of aspect ratio between source and model images treated as a resize."""


def encode_image(rgb: np.ndarray, fmt: ImageFormat, jpeg_quality: int = 95) -> bytes:
    """(H, W, 3) uint8 -> PNG or JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def resize_image(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-style downscale of an (H, W, 3) uint8 image (for ``images_N``)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.asarray(img.resize((width, height), Image.Resampling.BOX))


def resize_depth_nearest(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) float map (what nerfstudio does when it loads one),
    so 0 (invalid) never blends into valid depth."""
    h, w = depth.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return depth[rows[:, None], cols[None, :]]


def encode_depth(depth: np.ndarray, fmt: Literal["npy", "png16"]) -> tuple[bytes, float]:
    """(H, W) float depth in scene units -> (file bytes, unit scale factor to scene units).

    ``npy``: float32, factor 1. ``png16``: uint16 thousandths of a scene unit, factor 0.001
    (depths beyond 65.535 units are stored as 0 = invalid rather than clipped to a wrong value).
    """
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, depth)
        return buf.getvalue(), 1.0
    from PIL import Image

    milli = np.round(depth * 1000.0)
    milli = np.where(milli > 65535, 0, milli).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(milli).save(buf, format="PNG")  # mode I;16: a 16-bit PNG
    return buf.getvalue(), 0.001


def frame_image(
    frame: ReconstructedFrame, resolution: ImageResolution
) -> tuple[np.ndarray, PinholeIntrinsics]:
    """The frame's image at the requested resolution and the matching intrinsics.

    The engine's intrinsics are for the model-resolution image; the source image is the same view
    resized (no crop), so the camera scales by (W0 / W, H0 / H) in the pixel-centre-0.5
    convention, which is exact for a resize.
    """
    k = PinholeIntrinsics.from_opencv(frame.intrinsics, frame.width, frame.height)
    if resolution == "source" and frame.source_image is not None:
        h0, w0 = frame.source_image.shape[:2]
        # A resize to patch multiples changes the aspect ratio by a few pixels at most; a larger
        # change means the model saw a crop, which a scale cannot describe: keep the model image.
        if abs(np.log((w0 / frame.width) / (h0 / frame.height))) <= MAX_ASPECT_CHANGE:
            return frame.source_image, k.resized(w0, h0)
        # the default warning filter shows this once per size pair, not once per frame
        warnings.warn(
            f"source images ({w0}x{h0}) are not a resize of the model's ({frame.width}x"
            f"{frame.height}); writing model-resolution images instead",
            stacklevel=2,
        )
    return frame.image, k
