"""Camera geometry in OpenCV axes (x right, y down, z forward); pure and batched.

Quaternions at boundaries are (x, y, z, w) as in TUM trajectory files.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """(H, W, 2) pixel centres (u, v) in pixels, u along the width."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def unproject_depth(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-frame points from z-depth.

    depth (..., H, W), intrinsics (..., 3, 3) -> (..., H, W, 3).
    """
    h, w = depth.shape[-2:]
    uv = pixel_grid(h, w, depth.device, depth.dtype)
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)


def unproject_depth_np(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`unproject_depth` for one (H, W) map -> (H, W, 3)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    return np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply (..., 4, 4) to (..., N, 3) points (broadcast over leading dims)."""
    r = transform[..., :3, :3]
    t = transform[..., :3, 3]
    return points @ r.transpose(-1, -2) + t.unsqueeze(-2)


def project_points(points_cam: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Camera points (..., N, 3) -> (pixels (..., N, 2), z (..., N))."""
    z = points_cam[..., 2]
    zs = z.clamp_min(1e-9)
    u = intrinsics[..., 0, 0, None] * points_cam[..., 0] / zs + intrinsics[..., 0, 2, None]
    v = intrinsics[..., 1, 1, None] * points_cam[..., 1] / zs + intrinsics[..., 1, 2, None]
    return torch.stack([u, v], dim=-1), z


def invert_rigid(transform: Tensor) -> Tensor:
    """Inverse of rigid (..., 4, 4) transforms (rotation part orthonormal)."""
    r = transform[..., :3, :3]
    t = transform[..., :3, 3:]
    out = torch.zeros_like(transform)
    out[..., :3, :3] = r.transpose(-1, -2)
    out[..., :3, 3:] = -r.transpose(-1, -2) @ t
    out[..., 3, 3].fill_(1)  # a kernel argument: "= 1" copies a host scalar (a GPU sync)
    return out


def scale_intrinsics(intrinsics: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics for an image resized by (sx, sy) (pixel-centre convention)."""
    k = np.array(intrinsics, dtype=np.float64, copy=True)
    k[0, 0] *= sx
    k[1, 1] *= sy
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k


def rotmat_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), w >= 0."""
    from scipy.spatial.transform import Rotation

    r = np.asarray(r, dtype=np.float64)
    q = Rotation.from_matrix(r.reshape(-1, 3, 3)).as_quat()
    q = np.where(q[:, 3:4] < 0, -q, q)
    return q.reshape(*r.shape[:-2], 4)


def quat_xyzw_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w) -> (..., 3, 3) rotation matrices."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(q, dtype=np.float64)
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(*q.shape[:-1], 3, 3)
