"""Geometric verification of a loop candidate.

The model sees one window made of the candidate's keyframes and the current keyframes, so both
sets get one shared gauge. Registering that window once to the candidate's stored (global)
estimate and once to the current estimate gives two Sim(3)s ``G_cand`` and ``G_cur``; their
disagreement ``G_cand G_cur^-1`` is the drift accumulated between the two visits, and the loop's
correction. The loop is accepted only if both registrations fit, the implied correction is
plausible, and the model's own geometry says the two sets of frames see the same surfaces
(co-visibility): a look-alike place seen from elsewhere fails that test.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from laser_plugin.geometry.camera import (
    invert_rigid,
    project_points,
    transform_points,
    unproject_depth,
)
from laser_plugin.geometry.sim3 import RegistrationResult, Sim3, register_overlap
from laser_plugin.loop.config import LoopConfig
from laser_plugin.loop.sim3np import sim3_inverse, sim3_split


class FrameEstimates(NamedTuple):
    """Estimates of K frames in one gauge."""

    depth: Tensor  # (K, H, W), 0 = invalid
    confident: Tensor  # (K, H, W) bool
    cam_to_world: Tensor  # (K, 4, 4)
    intrinsics: Tensor  # (K, 3, 3)


class Verification(NamedTuple):
    accepted: bool
    reason: str
    """Why it was rejected ("" when accepted)."""
    correction: np.ndarray | None
    """(4, 4) Sim(3) mapping the current (drifted) world onto the candidate's world."""
    covisibility: float
    depth_residual: float
    pose_residual: float


def covisibility(
    depth_a: Tensor,
    pose_a: Tensor,
    k_a: Tensor,
    depth_b: Tensor,
    pose_b: Tensor,
    k_b: Tensor,
    stride: int = 2,
    rel_tol: float = 0.05,
) -> float:
    """Fraction of frame a's valid pixels that project into frame b at a depth b agrees with.

    depth (H, W), pose (4, 4) camera-to-world, intrinsics (3, 3), both frames in one gauge.
    """
    d = depth_a[::stride, ::stride]
    k = k_a.clone()
    k[:2] /= stride
    pts = unproject_depth(d, k).reshape(-1, 3)
    valid = (d > 0).reshape(-1)
    if not bool(valid.any()):
        return 0.0
    pts_b = transform_points(invert_rigid(pose_b) @ pose_a, pts[valid])
    uv, z = project_points(pts_b, k_b)
    h, w = depth_b.shape
    u = uv[:, 0].round().long()
    v = uv[:, 1].round().long()
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    db = torch.zeros_like(z)
    db[inside] = depth_b[v[inside], u[inside]]
    agree = inside & (db > 0) & ((z - db).abs() <= rel_tol * db)
    return float(agree.float().sum() / valid.sum())


def _as_np(sim3: Sim3) -> np.ndarray:
    """The (4, 4) float64 numpy matrix of a registration's (torch) Sim(3) (its fields taken to
    float64 first, so ``s R`` is formed in float64)."""
    r, t = (x.double().cpu().numpy() for x in (sim3.rotation, sim3.translation))
    return Sim3(float(sim3.scale), r, t).matrix()


def _register(
    stored: FrameEstimates, new: FrameEstimates, cfg_registration: str, huber: float, iters: int
):
    return register_overlap(
        stored.depth, stored.cam_to_world, stored.intrinsics, stored.confident,
        new.depth, new.cam_to_world, new.intrinsics, new.confident,
        method=cfg_registration, huber_delta=huber, iterations=iters,
    )  # fmt: skip


def verify_loop(
    candidate: FrameEstimates,
    current: FrameEstimates,
    joint: FrameEstimates,
    config: LoopConfig,
    registration: str = "cameras",
    huber_delta: float = 0.05,
    irls_iterations: int = 10,
    candidate_correction: np.ndarray | None = None,
    current_correction: np.ndarray | None = None,
) -> Verification:
    """Decide whether ``candidate`` (stored, K_c frames) and ``current`` (K_q frames) are one place.

    ``joint`` is the model's prediction of the K_c + K_q frames as one window (candidate frames
    first), already sanitised, with a confident-pixel mask. ``candidate_correction`` and
    ``current_correction`` (4x4 Sim(3), default identity) are the corrections already applied to
    the two sides: the plausibility limits apply to what the loop changes beyond them, so a long
    stream whose raw drift has grown large still closes loops.
    """
    kc = candidate.depth.shape[0]
    j_cand = FrameEstimates(*(x[:kc] for x in joint))
    j_cur = FrameEstimates(*(x[kc:] for x in joint))
    reg_c: RegistrationResult = _register(
        candidate, j_cand, registration, huber_delta, irls_iterations
    )
    reg_q: RegistrationResult = _register(
        current, j_cur, registration, huber_delta, irls_iterations
    )
    depth_res = max(reg_c.depth_residual, reg_q.depth_residual)
    pose_res = max(reg_c.pose_residual, reg_q.pose_residual)
    covis = max(
        covisibility(j_cand.depth[a], j_cand.cam_to_world[a], j_cand.intrinsics[a],
                     j_cur.depth[b], j_cur.cam_to_world[b], j_cur.intrinsics[b])
        for a in range(kc) for b in range(j_cur.depth.shape[0])
    )  # fmt: skip

    def reject(reason: str) -> Verification:
        return Verification(False, reason, None, covis, depth_res, pose_res)

    if reg_c.num_pixels == 0 or reg_q.num_pixels == 0 or reg_c.degenerate or reg_q.degenerate:
        return reject("too few confident pixels to register")
    if not np.isfinite(depth_res) or depth_res > config.max_depth_residual:
        return reject(f"depth residual {depth_res:.3f} > {config.max_depth_residual}")
    if not np.isfinite(pose_res) or pose_res > config.max_pose_residual:
        return reject(f"pose residual {pose_res:.3f} > {config.max_pose_residual}")
    if covis < config.min_covisibility:
        return reject(f"co-visibility {covis:.2f} < {config.min_covisibility}")
    correction = _as_np(reg_c.sim3) @ sim3_inverse(_as_np(reg_q.sim3))
    change = correction
    if candidate_correction is not None and current_correction is not None:
        change = candidate_correction @ correction @ sim3_inverse(current_correction)
    s, r, _ = sim3_split(change)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    if angle > config.max_correction_deg:
        return reject(f"implied rotation {angle:.1f} deg > {config.max_correction_deg}")
    if not 1 / config.max_correction_scale <= float(s) <= config.max_correction_scale:
        return reject(
            f"implied scale {float(s):.3f} outside 1/{config.max_correction_scale}..{config.max_correction_scale}"
        )
    return Verification(True, "", correction, covis, depth_res, pose_res)
