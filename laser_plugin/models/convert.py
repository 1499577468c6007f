"""Network outputs -> :class:`~laser_plugin.types.WindowPrediction` (the one place for conventions).

- π³ (yyfz/Pi3): ``local_points`` (L, H, W, 3) in the camera frame, depth = their z;
  ``conf`` are logits -> ``sigmoid``; ``camera_poses`` are camera-to-world, OpenCV axes. π³ has
  no intrinsics head: focal lengths are fitted to the local point map (:func:`intrinsics_from_points`).
- VGGT (facebookresearch/vggt): ``depth`` (L, H, W) z-depth, ``depth_conf`` = 1 + exp(x) >= 1
  (kept as is: only the order matters downstream); ``pose_enc`` (L, 9) = translation (3),
  quaternion (x, y, z, w, scalar last), field of view (h, w) of a world-to-camera OpenCV extrinsic,
  which we invert to camera-to-world.

Principal points are at the image centre in both cases, in the engine's pixel convention: pixel
(i, j) is centred at (u, v) = (j, i) (``geometry/camera.py:pixel_grid``), so the centre of a
W x H image is ((W - 1) / 2, (H - 1) / 2) (:func:`centred_principal_point`). Exporters that put
pixel centres at +0.5 (nerfstudio, COLMAP) add the 0.5 themselves
(``integrations/nerfstudio/schema.py:PinholeIntrinsics.from_opencv``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from laser_plugin.types import WindowPrediction


def centred_principal_point(height: int, width: int) -> tuple[float, float]:
    """(cx, cy) of the image centre with pixel centres at integers: ((W - 1) / 2, (H - 1) / 2)."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def weighted_median(values: Tensor, weights: Tensor) -> Tensor:
    """(B, N), (B, N) >= 0 -> (B,) lower weighted median per row (NaN where all weights are 0)."""
    order = values.argsort(dim=-1)
    v = values.gather(-1, order)
    w = weights.gather(-1, order)
    cum = w.cumsum(-1)
    total = cum[..., -1:]
    idx = (cum < 0.5 * total).sum(-1, keepdim=True).clamp(max=values.shape[-1] - 1)
    out = v.gather(-1, idx).squeeze(-1)
    return torch.where(total.squeeze(-1) > 0, out, torch.full_like(out, float("nan")))


def focal_fit(
    pts_cam: Tensor, conf: Tensor | None = None, keep_fraction: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """The raw L1 focal fit of :func:`intrinsics_from_points`, before any degenerate-case guard.

    Returns fx (L,), fy (L,) (NaN for a frame without a valid point; may be <= 0 when the points
    do not look like a pinhole's) and the pixels used (L, H, W) bool.
    """
    if pts_cam.ndim != 4 or pts_cam.shape[-1] != 3:
        raise ValueError(f"pts_cam must be (L, H, W, 3), got {tuple(pts_cam.shape)}")
    n, h, w, _ = pts_cam.shape
    pts = pts_cam.float()
    device = pts.device
    x, y, z = pts.unbind(-1)
    valid = torch.isfinite(pts).all(-1) & (z > 1e-8)
    if conf is not None:
        c = torch.where(valid, conf.float(), torch.full_like(conf.float(), -torch.inf))
        k = max(1, round(keep_fraction * h * w))
        thresh = c.reshape(n, -1).topk(k, dim=-1).values[:, -1]
        valid = valid & (c >= thresh[:, None, None])
    zs = torch.where(valid, z, torch.ones_like(z))
    a = (x / zs).reshape(n, -1)  # normalised image coordinates
    b = (y / zs).reshape(n, -1)
    # Pixel coordinates relative to the principal point that intrinsics_from_points puts in K
    # (pixel centres at integers, as the engine unprojects): u_i - cx, v_i - cy.
    cx, cy = centred_principal_point(h, w)
    u = (torch.arange(w, device=device, dtype=torch.float32) - cx).expand(h, w)
    v = (torch.arange(h, device=device, dtype=torch.float32) - cy)[:, None].expand(h, w)
    m = valid.reshape(n, -1).float()
    tiny = 1e-6
    fx = weighted_median(u.reshape(1, -1) / torch.where(a.abs() > tiny, a, tiny), a.abs() * m)
    fy = weighted_median(v.reshape(1, -1) / torch.where(b.abs() > tiny, b, tiny), b.abs() * m)
    return fx, fy, valid


def intrinsics_from_points(
    pts_cam: Tensor, conf: Tensor | None = None, keep_fraction: float = 0.5
) -> Tensor:
    """Fit pinhole focal lengths to a camera-frame point map; principal point at the image centre
    ((W - 1) / 2, (H - 1) / 2), pixel centres at integers (:func:`centred_principal_point`).

    pts_cam: (L, H, W, 3); conf: (L, H, W) larger = better (optional).
    For each frame, fx minimises sum_i |(u_i - cx) - fx * x_i / z_i| over the most confident
    ``keep_fraction`` of pixels with z > 0: the L1 solution is the median of (u_i - cx) / (x_i / z_i)
    weighted by |x_i / z_i|, robust to outliers; likewise fy. Returns (L, 3, 3) float32.
    """
    fx, fy, _ = focal_fit(pts_cam, conf, keep_fraction)
    n, h, w, _ = pts_cam.shape
    device = pts_cam.device
    # Degenerate frames (no valid point): fall back to a 60-degree horizontal field of view.
    fallback = torch.full_like(fx, (w / 2) / torch.tan(torch.tensor(torch.pi / 6)).item())
    fx = torch.where(torch.isfinite(fx) & (fx > 0), fx, fallback)
    fy = torch.where(torch.isfinite(fy) & (fy > 0), fy, fx)
    K = torch.zeros(n, 3, 3, device=device)
    K[:, 0, 0], K[:, 1, 1] = fx, fy
    cx, cy = centred_principal_point(h, w)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = cx, cy, 1.0
    return K


def pi3_to_prediction(
    local_points: Tensor, conf_logits: Tensor, cam_to_world: Tensor
) -> WindowPrediction:
    """local_points (L, H, W, 3), conf_logits (L, H, W) or (L, H, W, 1), cam_to_world (L, 4, 4)."""
    if conf_logits.ndim == 4:
        conf_logits = conf_logits[..., 0]
    local_points = local_points.float()
    conf = torch.sigmoid(conf_logits.float())
    pred = WindowPrediction(
        depth=local_points[..., 2].contiguous(),
        conf=conf,
        cam_to_world=cam_to_world.float(),
        intrinsics=intrinsics_from_points(local_points, conf),
    )
    pred.validate()
    return pred


def quat_xyzw_to_matrix(quat: Tensor) -> Tensor:
    """(..., 4) quaternion (x, y, z, w), any norm -> (..., 3, 3) rotation matrix."""
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, -1).reshape(*quat.shape[:-1], 3, 3)


FOV_MIN, FOV_MAX = 0.02, 3.0  # radians (about 1 and 172 degrees)


def vggt_pose_to_cameras(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(..., 9) VGGT pose encoding -> cam_to_world (..., 4, 4), intrinsics (..., 3, 3).

    The encoding is the world-to-camera [R | t] (OpenCV); camera-to-world is [R^T | -R^T t].
    fy = (H/2) / tan(fov_h/2), fx = (W/2) / tan(fov_w/2) (the field of view spans the image from
    edge to edge, W pixels), with the field of view clamped to [FOV_MIN, FOV_MAX] radians so that
    a degenerate output (the head's ReLU can return 0) gives a finite focal length instead of
    infinity. The principal point is the image centre ((W - 1) / 2, (H - 1) / 2), pixel centres
    at integers (:func:`centred_principal_point`). Upstream VGGT writes (W/2, H/2) and unprojects
    with ``u - cx + 0.5`` (``vggt/utils/geometry.py:depth_to_cam_coords_points``): the same
    camera, in the convention with pixel centres at +0.5.
    """
    h, w = image_hw
    pose_enc = pose_enc.float()
    t = pose_enc[..., :3]
    rot = quat_xyzw_to_matrix(pose_enc[..., 3:7])
    rot_c2w = rot.transpose(-1, -2)
    c2w = torch.zeros(*pose_enc.shape[:-1], 4, 4, device=pose_enc.device)
    c2w[..., :3, :3] = rot_c2w
    c2w[..., :3, 3] = -(rot_c2w @ t[..., None])[..., 0]
    c2w[..., 3, 3] = 1.0
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, device=pose_enc.device)
    fov = pose_enc[..., 7:9].clamp(FOV_MIN, FOV_MAX)
    K[..., 0, 0] = (w / 2.0) / torch.tan(fov[..., 1] / 2.0)
    K[..., 1, 1] = (h / 2.0) / torch.tan(fov[..., 0] / 2.0)
    cx, cy = centred_principal_point(h, w)
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = cx, cy, 1.0
    return c2w, K


def vggt_to_prediction(pose_enc: Tensor, depth: Tensor, depth_conf: Tensor) -> WindowPrediction:
    """pose_enc (L, 9), depth (L, H, W) or (L, H, W, 1), depth_conf (L, H, W)."""
    if depth.ndim == 4:
        depth = depth[..., 0]
    c2w, K = vggt_pose_to_cameras(pose_enc, (depth.shape[1], depth.shape[2]))
    pred = WindowPrediction(
        depth=depth.float().contiguous(), conf=depth_conf.float(), cam_to_world=c2w, intrinsics=K
    )
    pred.validate()
    return pred
