"""What the viewer takes from one ReconstructedFrame: a pixel subsample, a thumbnail, a pose."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from laser_plugin.geometry.camera import unproject_depth_np
from laser_plugin.types import ReconstructedFrame


class FrameSamples(NamedTuple):
    """Valid pixels of a regular subsample of one frame, in the global frame."""

    points: np.ndarray  # (N, 3) float32 world
    colors: np.ndarray  # (N, 3) uint8
    conf: np.ndarray  # (N,) float32
    depth: np.ndarray  # (N,) float32 camera z-depth
    layer: np.ndarray  # (N,) int16, -1 = none


def pixel_stride(height: int, width: int, target: int) -> int:
    """Grid stride that keeps about ``target`` of ``height * width`` pixels."""
    return max(1, round(math.sqrt(height * width / max(target, 1))))


def sample_frame(frame: ReconstructedFrame, target_points: int) -> FrameSamples:
    """Valid (depth > 0, finite) pixels on a stride grid of about ``target_points`` pixels."""
    s = pixel_stride(frame.height, frame.width, target_points)
    depth = np.asarray(frame.depth[::s, ::s], np.float32)
    conf = np.asarray(frame.conf[::s, ::s], np.float32)
    valid = (depth > 0) & np.isfinite(depth)
    k = np.asarray(frame.intrinsics, np.float64).copy()
    # Pixel (i, j) of the strided grid is pixel (s*i, s*j) of the full one.
    k[:2] /= s
    pts_cam = unproject_depth_np(depth, k)[valid]  # (N, 3)
    world_from_cam = np.asarray(frame.cam_to_world, np.float64)
    pts_world = pts_cam @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]
    if frame.layers is not None:
        layer = np.asarray(frame.layers[::s, ::s], np.int16)[valid]
    else:
        layer = np.full(int(valid.sum()), -1, np.int16)
    return FrameSamples(
        points=pts_world.astype(np.float32),
        colors=np.asarray(frame.image[::s, ::s], np.uint8)[valid],
        conf=conf[valid],
        depth=depth[valid],
        layer=layer,
    )


def median_depth(frame: ReconstructedFrame) -> float:
    """Median valid depth of a frame (1.0 when it has none): the scene's working scale."""
    d = np.asarray(frame.depth)
    d = d[(d > 0) & np.isfinite(d)]
    return float(np.median(d)) if d.size else 1.0


def thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, width, 3) uint8, aspect kept (no upscaling)."""
    from PIL import Image

    h, w = image.shape[:2]
    if w <= width:
        return np.ascontiguousarray(image)
    height = max(1, round(h * width / w))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def vertical_fov(intrinsics: np.ndarray, height: int) -> float:
    """Vertical field of view in radians (what viser's frustums take) from fy and H."""
    return float(2.0 * math.atan2(height / 2.0, float(intrinsics[1, 1])))


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (4,) unit quaternion, scalar first (viser's wxyz), with w >= 0.

    Shepperd's method: pick the largest of the four squared components to divide by.
    """
    r = np.asarray(rotation, np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    cands = np.array([trace, r[0, 0], r[1, 1], r[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        w = math.sqrt(max(1.0 + trace, 0.0)) / 2
        q = [
            w,
            (r[2, 1] - r[1, 2]) / (4 * w),
            (r[0, 2] - r[2, 0]) / (4 * w),
            (r[1, 0] - r[0, 1]) / (4 * w),
        ]
    elif i == 1:
        x = math.sqrt(max(1.0 + r[0, 0] - r[1, 1] - r[2, 2], 0.0)) / 2
        q = [
            (r[2, 1] - r[1, 2]) / (4 * x),
            x,
            (r[0, 1] + r[1, 0]) / (4 * x),
            (r[0, 2] + r[2, 0]) / (4 * x),
        ]
    elif i == 2:
        y = math.sqrt(max(1.0 - r[0, 0] + r[1, 1] - r[2, 2], 0.0)) / 2
        q = [
            (r[0, 2] - r[2, 0]) / (4 * y),
            (r[0, 1] + r[1, 0]) / (4 * y),
            y,
            (r[1, 2] + r[2, 1]) / (4 * y),
        ]
    else:
        z = math.sqrt(max(1.0 - r[0, 0] - r[1, 1] + r[2, 2], 0.0)) / 2
        q = [
            (r[1, 0] - r[0, 1]) / (4 * z),
            (r[0, 2] + r[2, 0]) / (4 * z),
            (r[1, 2] + r[2, 1]) / (4 * z),
            z,
        ]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q
