"""Closed-form test geometry for the nerfstudio/COLMAP writers: cameras looking at the plane
Z = PLANE_Z (world = first camera, OpenCV axes), with exact depth maps and world-anchored colours."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from laser_plugin.types import ReconstructedFrame

PLANE_Z = 4.0
WIDTH, HEIGHT = 48, 32
# deliberately off-centre principal point, so a missing half-pixel or axis flip shows up
K_MODEL = np.array([[40.0, 0.0, 22.0], [0.0, 42.0, 16.3], [0.0, 0.0, 1.0]])


def plane_c2w(i: int) -> np.ndarray:
    """(4, 4) camera-to-world (OpenCV) of frame i: a slow pan and sideways drift."""
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("yxz", [0.04 * i, -0.02 * i, 0.01 * i]).as_matrix()
    c2w[:3, 3] = [0.15 * i, 0.05 * i, 0.1 * np.sin(i)]
    return c2w


def plane_depth(c2w: np.ndarray, k: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) z-depth of the plane Z = PLANE_Z seen by the camera (pixel centres at integers)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    rays_world = rays_cam @ c2w[:3, :3].T
    return ((PLANE_Z - c2w[2, 3]) / rays_world[..., 2]).astype(np.float32)


def world_colour(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (..., 3) uint8 colours (a checker plus ramps)."""
    checker = (np.floor(xyz[..., 0] * 3) + np.floor(xyz[..., 1] * 3)) % 2
    r = 40 + 180 * checker
    g = np.clip(128 + 60 * xyz[..., 0], 0, 255)
    b = np.clip(128 + 60 * xyz[..., 1], 0, 255)
    return np.stack([r, g, b], -1).astype(np.uint8)


def plane_frame(i: int, with_source: bool = True, bad_corner: bool = True) -> ReconstructedFrame:
    """Frame i with exact depth; with ``bad_corner`` the top-left block has a wrong depth and low
    confidence (it must not reach the point cloud)."""
    c2w = plane_c2w(i)
    depth = plane_depth(c2w, K_MODEL, HEIGHT, WIDTH)
    conf = np.ones((HEIGHT, WIDTH), np.float32)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    pts_cam = np.stack(
        [
            (u - K_MODEL[0, 2]) / K_MODEL[0, 0] * depth,
            (v - K_MODEL[1, 2]) / K_MODEL[1, 1] * depth,
            depth,
        ],
        -1,
    )
    image = world_colour(pts_cam @ c2w[:3, :3].T + c2w[:3, 3])
    if bad_corner:
        depth[:8, :8] *= 0.5
        conf[:8, :8] = 0.05
    source = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1) if with_source else None
    return ReconstructedFrame(
        index=i,
        timestamp=i / 10.0,
        image=image,
        cam_to_world=c2w,
        intrinsics=K_MODEL.copy(),
        depth=depth,
        conf=conf,
        window=0,
        source_image=source,
    )
