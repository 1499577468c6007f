"""Robust Sim(3) registration from the overlap of two windows.

A Sim(3) ``(s, R, t)`` (:class:`~laser_plugin.geometry.similarity.Sim3`, the one type for torch
and numpy) maps window coordinates to global ones: ``X_g = s R X_w + t``. Applied to a
camera-to-world pose it gives ``[R R_c | s R t_c + t]``; camera-frame depths scale by ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from laser_plugin.geometry.camera import transform_points, unproject_depth
from laser_plugin.geometry.robust import robust_scale
from laser_plugin.geometry.similarity import Sim3

__all__ = [
    "RegistrationResult",
    "Sim3",
    "camera_anchor_points",
    "register_overlap",
    "weighted_procrustes",
]


def weighted_procrustes(
    src: Tensor,
    dst: Tensor,
    weight: Tensor | None = None,
    scale: Tensor | float | None = None,
) -> Sim3:
    """Least-squares ``dst ≈ s R src + t`` (Umeyama 1991), reflection-safe.

    src, dst: (N, 3); weight: (N,) >= 0. With ``scale`` given, only R and t are fitted (the
    weighted Kabsch problem under a fixed scale); otherwise s is fitted too. Degenerate inputs
    (no weight, coincident points) return the best rotation the data supports, identity if none.
    """
    dtype = torch.float64  # the 3x3 SVD is cheap; float64 keeps near-degenerate cases stable
    src64, dst64 = src.to(dtype), dst.to(dtype)
    w = (
        torch.ones(src.shape[0], dtype=dtype, device=src.device)
        if weight is None
        else weight.to(dtype)
    )
    ok = torch.isfinite(src64).all(-1) & torch.isfinite(dst64).all(-1) & torch.isfinite(w) & (w > 0)
    w = torch.where(ok, w, torch.zeros_like(w))
    src64 = torch.where(ok[:, None], src64, torch.zeros_like(src64))
    dst64 = torch.where(ok[:, None], dst64, torch.zeros_like(dst64))
    wsum = w.sum()
    if wsum <= 0:
        s = torch.as_tensor(1.0 if scale is None else scale, dtype=dtype, device=src.device)
        return Sim3(
            s.to(src.dtype),
            torch.eye(3, dtype=src.dtype, device=src.device),
            torch.zeros(3, dtype=src.dtype, device=src.device),
        )
    wn = w / wsum
    mu_s = (wn[:, None] * src64).sum(0)
    mu_d = (wn[:, None] * dst64).sum(0)
    xs = src64 - mu_s
    xd = dst64 - mu_d
    cov = (wn[:, None] * xd).T @ xs  # (3, 3) = Σ w (d)(s)^T
    u, sig, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.tensor([1.0, 1.0, 1.0], dtype=dtype, device=src.device)
    diag[2] = d
    rot = u @ torch.diag(diag) @ vh
    if scale is None:
        var_s = (wn * (xs * xs).sum(-1)).sum()
        s = (sig * diag).sum() / var_s.clamp_min(1e-30)
    else:
        s = torch.as_tensor(scale, dtype=dtype, device=src.device)
    t = mu_d - s * rot @ mu_s
    return Sim3(s.to(src.dtype), rot.to(src.dtype), t.to(src.dtype))


@dataclass
class RegistrationResult:
    sim3: Sim3
    depth_residual: float
    """Median |1 - s d_new / d_prev| on the confident overlap pixels."""
    pose_residual: float
    """RMS distance of overlap camera centres after the fit, divided by the median depth."""
    num_pixels: int
    degenerate: bool
    """True when too few confident pixels existed: the scale then falls back to all valid pixels."""


def camera_anchor_points(cam_to_world: Tensor, length: Tensor | float) -> Tensor:
    """Centre, centre + length * view axis, centre + length * up axis per camera -> (3N, 3).

    Using the cameras themselves (what the official LASER code does) keeps the fit insensitive to
    per-layer depth errors, which bias same-pixel world points.
    """
    c = cam_to_world[..., :3, 3]
    z = cam_to_world[..., :3, 2]
    y = -cam_to_world[..., :3, 1]  # OpenCV y points down; "up" is -y
    return torch.cat([c, c + length * z, c + length * y], dim=0)


def register_overlap(
    depth_prev: Tensor,
    pose_prev: Tensor,
    intr_prev: Tensor,
    mask_prev: Tensor,
    depth_new: Tensor,
    pose_new: Tensor,
    intr_new: Tensor,
    mask_new: Tensor,
    method: Literal["cameras", "points", "both"] = "cameras",
    huber_delta: float = 0.05,
    iterations: int = 10,
    max_points: int = 20000,
    max_scale_samples: int = 65536,
) -> RegistrationResult:
    """Sim(3) mapping the new window's gauge onto the previous (global) estimate.

    All inputs cover the same O overlap frames: depths (O, H, W), poses (O, 4, 4), intrinsics
    (O, 3, 3), confident-pixel masks (O, H, W). Scale first, by IRLS-Huber on same-pixel depth
    ratios (invariant to R, t); then R, t by weighted Kabsch under that scale.
    """
    # The scale needs tens of thousands of pixels, not millions: on a large overlap, every k-th
    # pixel (a regular lattice, deterministic) enters the fit. Points registration keeps all.
    step = max(1, depth_prev.numel() // (4 * max_scale_samples)) if method == "cameras" else 1
    dp, dn = depth_prev.reshape(-1)[::step], depth_new.reshape(-1)[::step]
    both_ok = (dp > 0) & (dn > 0) & (dp < float("inf")) & (dn < float("inf"))  # NaN fails both
    valid = both_ok & mask_prev.reshape(-1)[::step] & mask_new.reshape(-1)[::step]
    degenerate = int(valid.sum()) < 16
    if degenerate:  # fall back to every valid pixel, confident or not
        valid = both_ok
    num_pixels = int(valid.sum())
    if num_pixels == 0:
        scale = torch.ones((), dtype=depth_new.dtype, device=depth_new.device)
        depth_residual = float("nan")
    else:
        d_prev_v = dp[valid]
        fit = robust_scale(
            d_prev_v,
            dn[valid],
            delta=huber_delta,
            iterations=iterations,
            max_samples=max_scale_samples,
        )
        scale = fit.scale[0]
        depth_residual = float(fit.residual[0])

    med_depth = d_prev_v.median() if num_pixels else torch.ones((), dtype=depth_prev.dtype)
    num_pixels *= step  # reported as the overlap's pixel count, not the lattice's
    src_parts, dst_parts, w_parts = [], [], []
    if method in ("cameras", "both"):
        # Anchor length in the global gauge; the new side gets the same physical length pre-scale.
        src_parts.append(scale * camera_anchor_points(pose_new, med_depth / scale))
        dst_parts.append(camera_anchor_points(pose_prev, med_depth))
        n = src_parts[-1].shape[0]
        w_parts.append(torch.full((n,), 1.0 / n, dtype=depth_new.dtype, device=depth_new.device))
    if method in ("points", "both") and num_pixels > 0:
        idx = torch.nonzero(valid).squeeze(1)
        if idx.numel() > max_points:  # deterministic thinning keeps the fit cheap
            idx = idx[torch.linspace(0, idx.numel() - 1, max_points, device=idx.device).long()]
        pts_prev = transform_points(pose_prev, unproject_depth(depth_prev, intr_prev).flatten(1, 2))
        pts_new = transform_points(pose_new, unproject_depth(depth_new, intr_new).flatten(1, 2))
        src_parts.append(scale * pts_new.reshape(-1, 3)[idx])
        dst_parts.append(pts_prev.reshape(-1, 3)[idx])
        n = idx.numel()
        w_parts.append(torch.full((n,), 1.0 / n, dtype=depth_new.dtype, device=depth_new.device))
    if not src_parts:  # points requested but nothing valid: use the cameras
        src_parts.append(scale * camera_anchor_points(pose_new, med_depth / scale))
        dst_parts.append(camera_anchor_points(pose_prev, med_depth))
        w_parts.append(
            torch.ones(src_parts[-1].shape[0], dtype=depth_new.dtype, device=depth_new.device)
        )
    src, dst, w0 = torch.cat(src_parts), torch.cat(dst_parts), torch.cat(w_parts)
    fit_rt = weighted_procrustes(src, dst, w0, scale=1.0)
    if method != "cameras":
        # Same-pixel points carry the depth outliers: reweight by a Huber loss on the residual
        # distance (relative to the scene depth), as the scale fit does.
        for _ in range(5):
            err = (fit_rt.apply_points(src) - dst).norm(dim=-1) / med_depth.clamp_min(1e-12)
            w = w0 * torch.clamp(0.02 / err.clamp_min(1e-12), max=1.0)
            fit_rt = weighted_procrustes(src, dst, w, scale=1.0)
        for _ in range(2):  # then drop what is far beyond the typical residual
            err = (fit_rt.apply_points(src) - dst).norm(dim=-1) / med_depth.clamp_min(1e-12)
            keep = err <= 3.0 * err.median() + 1e-4
            fit_rt = weighted_procrustes(src, dst, w0 * keep, scale=1.0)
    sim3 = Sim3(scale, fit_rt.rotation, fit_rt.translation)
    centres = sim3.apply_points(pose_new[:, :3, 3])
    pose_residual = float(
        (centres - pose_prev[:, :3, 3]).square().sum(-1).mean().sqrt() / med_depth.clamp_min(1e-12)
    )
    return RegistrationResult(sim3, depth_residual, pose_residual, num_pixels, degenerate)
