"""Evaluation metrics of the streaming-reconstruction literature, in plain numpy.

Camera pose (trajectories are camera-to-world, OpenCV axes, shape (N, 4, 4)):

- ATE: RMSE of camera positions after aligning the whole estimated trajectory to the
  ground truth by Umeyama (1991), with scale (Sim(3)) by default.
- RPE: relative pose error over ``delta``-frame steps, after the same alignment; translation
  RMSE (scene units) and rotation RMSE (degrees). Same definitions as evo's ``main_ape`` /
  ``main_rpe`` with ``align=True, correct_scale=True`` (tests check agreement).

Video depth (one alignment per sequence; see shared/reference/metrics.md):

- ``align_depth_scale``: one (scale, shift) for all frames of a sequence.
- ``depth_metrics``: AbsRel and δ<1.25 on valid pixels after that alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from laser_plugin.geometry.similarity import Sim3  # with numpy fields here

AlignMode = Literal["sim3", "se3", "none"]
DepthAlign = Literal["scale", "median", "scale_shift", "lstsq", "none"]


class RPE(NamedTuple):
    trans_rmse: float
    """RMSE of the relative translation error, scene (ground-truth) units."""
    rot_rmse_deg: float
    """RMSE of the relative rotation error angle, degrees."""


def _as_points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values")
    return x


def _as_poses(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be (N, 4, 4), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values")
    return x


def umeyama_alignment(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity (Umeyama 1991) minimising Σ ||dst_i - (s R src_i + t)||².

    Args:
        src: (N, 3) points to move.
        dst: (N, 3) target points.
        with_scale: fit s (Sim(3)); otherwise s = 1 (SE(3), i.e. Kabsch).

    Returns:
        ``Sim3(scale, rotation (3, 3), translation (3,))``. The rotation is proper
        (det = +1) even when the best orthogonal fit would be a reflection (Umeyama's S matrix).

    Raises:
        ValueError: shapes differ, fewer than 3 points, or ``src`` is a single point
        repeated (scale undefined).
    """
    src = _as_points(src, "src")
    dst = _as_points(dst, "dst")
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 3:
        raise ValueError(f"Umeyama alignment needs at least 3 points, got {n}")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float(np.mean(np.sum(src_c**2, axis=1)))
    if var_src <= 1e-24:
        raise ValueError("Umeyama alignment is degenerate: all source points coincide")
    cov = dst_c.T @ src_c / n  # (3, 3), Umeyama eq. (38)
    u, d, vt = np.linalg.svd(cov)
    # Eq. (39)/(43): flip the smallest singular direction if U V^T is a reflection.
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = (u * sign) @ vt
    scale = float(np.sum(d * sign) / var_src) if with_scale else 1.0  # eq. (42)
    translation = mu_dst - scale * rotation @ mu_src  # eq. (41)
    return Sim3(scale, rotation, translation)


def apply_sim3_to_poses(sim: Sim3, c2w: np.ndarray) -> np.ndarray:
    """Left-apply a similarity to camera-to-world poses: R_i ← R R_i, p_i ← s R p_i + t.

    The camera's own rotation is not scaled, so the result stays in SE(3). (N, 4, 4) → (N, 4, 4).
    """
    return sim.apply_poses(_as_poses(c2w, "c2w"))


def align_trajectory(
    est_c2w: np.ndarray, gt_c2w: np.ndarray, align: AlignMode = "sim3"
) -> tuple[np.ndarray, Sim3]:
    """Align an estimated trajectory to ground truth on camera positions.

    Returns the aligned (N, 4, 4) poses and the transform used (identity for ``"none"``).
    """
    est = _as_poses(est_c2w, "est_c2w")
    gt = _as_poses(gt_c2w, "gt_c2w")
    if est.shape != gt.shape:
        raise ValueError(f"trajectories differ in length: {est.shape[0]} vs {gt.shape[0]}")
    if align == "none":
        sim = Sim3(1.0, np.eye(3), np.zeros(3))
    elif align in ("sim3", "se3"):
        sim = umeyama_alignment(est[:, :3, 3], gt[:, :3, 3], with_scale=align == "sim3")
    else:
        raise ValueError(f"align must be 'sim3', 'se3' or 'none', got {align!r}")
    return apply_sim3_to_poses(sim, est), sim


def ate_rmse(est_c2w: np.ndarray, gt_c2w: np.ndarray, align: AlignMode = "sim3") -> float:
    """Absolute trajectory error: RMSE of camera positions after alignment.

    Args:
        est_c2w, gt_c2w: (N, 4, 4) camera-to-world poses, frame i of one matches frame i of
            the other.
        align: "sim3" (Umeyama with scale; the published protocol), "se3" or "none".
    """
    aligned, _ = align_trajectory(est_c2w, gt_c2w, align)
    err = aligned[:, :3, 3] - np.asarray(gt_c2w, dtype=np.float64)[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def rotation_angle_deg(rot: np.ndarray) -> np.ndarray:
    """Angle of rotation matrices (..., 3, 3) in degrees, in [0, 180].

    Uses atan2(sin, cos) rather than arccos of the trace, which loses precision near 0.
    """
    rot = np.asarray(rot, dtype=np.float64)
    cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis = np.stack(
        [
            rot[..., 2, 1] - rot[..., 1, 2],
            rot[..., 0, 2] - rot[..., 2, 0],
            rot[..., 1, 0] - rot[..., 0, 1],
        ],
        axis=-1,
    )
    sin = np.linalg.norm(axis, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def _inv_se3(t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def rpe(est_c2w: np.ndarray, gt_c2w: np.ndarray, delta: int = 1, align: AlignMode = "sim3") -> RPE:
    """Relative pose error over all frame pairs (i, i + delta).

    For each pair, with relative motions ΔQ = Q_i⁻¹ Q_{i+δ} (ground truth) and
    ΔP = P_i⁻¹ P_{i+δ} (estimate, after alignment), the error is E = ΔQ⁻¹ ΔP; its translation
    norm and rotation angle are averaged as RMSEs. Only the scale of the alignment changes RPE
    (relative motions are invariant to a global rigid motion), but aligning first keeps the
    definition identical to evo's ``align=True, correct_scale=True``.

    Args:
        est_c2w, gt_c2w: (N, 4, 4) camera-to-world poses.
        delta: step in frames (>= 1, < N).
        align: as in :func:`ate_rmse`.
    """
    if not isinstance(delta, (int, np.integer)) or delta < 1:
        raise ValueError(f"delta must be a positive integer, got {delta!r}")
    est, _ = align_trajectory(est_c2w, gt_c2w, align)
    gt = np.asarray(gt_c2w, dtype=np.float64)
    if delta >= est.shape[0]:
        raise ValueError(f"delta={delta} needs more than {delta} frames, got {est.shape[0]}")
    rel_gt = _inv_se3(gt[:-delta]) @ gt[delta:]
    rel_est = _inv_se3(est[:-delta]) @ est[delta:]
    err = _inv_se3(rel_gt) @ rel_est
    trans = np.linalg.norm(err[:, :3, 3], axis=1)
    rot = rotation_angle_deg(err[:, :3, :3])
    return RPE(float(np.sqrt(np.mean(trans**2))), float(np.sqrt(np.mean(rot**2))))


# ----------------------------------------------------------------------------- depth


def _stack_depth(x: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    """(N, H, W) or list of (H, W) → flat float64 array (frames may differ in size)."""
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float64).reshape(-1)
    parts = [np.asarray(a, dtype=np.float64).reshape(-1) for a in x]
    if not parts:
        raise ValueError(f"{name} is empty")
    return np.concatenate(parts)


def _depth_inputs(
    pred: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None,
    cap: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    p = _stack_depth(pred, "pred")
    g = _stack_depth(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt must have the same number of pixels (resize predictions to the "
            f"ground-truth resolution first), got {p.size} and {g.size}"
        )
    mask = np.isfinite(g) & (g > 0) & np.isfinite(p)
    if valid is not None:
        v = _stack_depth(valid, "valid")
        if v.shape != g.shape:
            raise ValueError(f"valid must match gt, got {v.size} and {g.size} pixels")
        mask &= v.astype(bool)
    if cap is not None:
        mask &= g < cap
    if not mask.any():
        raise ValueError("no valid ground-truth pixels to evaluate")
    return p[mask], g[mask]


def _l1_irls(
    design: np.ndarray, target: np.ndarray, init: np.ndarray, iters: int, tol: float = 0.0
) -> np.ndarray:
    """Minimise Σ|design @ x - target| by iteratively reweighted least squares (w = 1/|r|).

    Stops after ``iters`` rounds, or earlier once the relative change of x is below ``tol``.
    """
    x = init
    # The floor on |r| keeps weights finite at exact fits; relative to the data's scale.
    eps = 1e-9 * max(float(np.mean(np.abs(target))), 1e-12)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.abs(design @ x - target), eps)
        a = design.T @ (design * w[:, None])
        b = design.T @ (w * target)
        x_new = np.linalg.solve(a, b)
        done = np.max(np.abs(x_new - x)) <= tol * max(float(np.max(np.abs(x_new))), 1e-12)
        x = x_new
        if done:
            break
    return x


def l1_scale(pred: np.ndarray, gt: np.ndarray) -> float:
    """argmin_s Σ|s·pred - gt| over 1-D arrays with pred > 0 where it counts.

    Σ|s·p - g| = Σ p·|s - g/p|, so the optimum is the p-weighted median of g/p. The protocol
    (metrics.md) approaches the same optimum by IRLS from s₀ = mean(g)/mean(p) with weights
    1/|s·p - g|; ten rounds of that can stop a few per cent short with outliers, so we take the
    exact fixed point. Pixels with p <= 0 add a constant and do not move the optimum.
    """
    pos = pred > 0
    if not pos.any():
        raise ValueError("no positive predicted depth to align")
    ratio = gt[pos] / pred[pos]
    weight = pred[pos]
    order = np.argsort(ratio)
    cum = np.cumsum(weight[order])
    return float(ratio[order][np.searchsorted(cum, 0.5 * cum[-1])])


def align_depth_scale(
    pred: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None = None,
    method: DepthAlign = "scale",
    cap: float | None = None,
    iters: int = 10,
) -> tuple[float, float]:
    """One (scale, shift) for a whole sequence so that ``scale * pred + shift ≈ gt``.

    Args:
        pred: (N, H, W) or a list of (H, W) predicted depths, at the ground truth's resolution.
        gt: same layout; pixels with gt <= 0 or non-finite are ignored.
        valid: optional boolean mask, same layout.
        method:
            ``"scale"``: the L1-optimal scale argmin_s Σ|s·pred - gt| (the protocol of the
            published streaming numbers), computed exactly (see :func:`l1_scale`); shift 0.
            ``"median"``: s = median(gt)/median(pred); shift 0.
            ``"scale_shift"``: L1-optimal (s, t) minimising Σ|s·pred + t - gt| by IRLS from
            the least-squares fit.
            ``"lstsq"``: closed-form least-squares scale and shift.
            ``"none"``: (1, 0), for metric predictions.
        cap: ignore pixels with gt >= cap (70 m for Sintel and Bonn).
        iters: minimum IRLS rounds for ``"scale_shift"`` (it iterates to convergence).
    """
    p, g = _depth_inputs(pred, gt, valid, cap)
    if method == "none":
        return 1.0, 0.0
    if method == "median":
        return float(np.median(g) / np.median(p)), 0.0
    if method == "scale":
        return l1_scale(p, g), 0.0
    design = np.stack([p, np.ones_like(p)], axis=1)
    st, *_ = np.linalg.lstsq(design, g, rcond=None)
    if method == "lstsq":
        return float(st[0]), float(st[1])
    if method == "scale_shift":
        # Two unknowns converge more slowly than one; iterate to convergence.
        st = _l1_irls(design, g, st, max(iters, 200), tol=1e-9)
        return float(st[0]), float(st[1])
    raise ValueError(f"unknown depth alignment {method!r}")


def depth_metrics(
    pred: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None = None,
    cap: float | None = None,
    method: DepthAlign = "scale",
    clip_max: float | None = None,
) -> dict[str, float]:
    """Video-depth metrics of one sequence after one alignment for all its frames.

    Args:
        pred, gt, valid, cap, method: as in :func:`align_depth_scale`.
        clip_max: clamp aligned predictions to this (the protocol clamps Sintel/Bonn at 70).

    Returns:
        dict with ``abs_rel`` = mean(|p - g| / g), ``delta_1_25`` = mean(max(p/g, g/p) < 1.25),
        ``scale``, ``shift`` and ``num_pixels`` (the weight for dataset averages).
    """
    scale, shift = align_depth_scale(pred, gt, valid, method=method, cap=cap)
    p, g = _depth_inputs(pred, gt, valid, cap)
    p = scale * p + shift
    if clip_max is not None:
        p = np.minimum(p, clip_max)
    abs_rel = float(np.mean(np.abs(p - g) / g))
    # A non-positive aligned depth can never be within 25 %; guard the division.
    p_pos = np.maximum(p, 1e-12)
    ratio = np.maximum(p_pos / g, g / p_pos)
    return {
        "abs_rel": abs_rel,
        "delta_1_25": float(np.mean(ratio < 1.25)),
        "scale": scale,
        "shift": shift,
        "num_pixels": int(p.size),
    }


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Average over sequences weighted by e.g. valid-pixel counts (the dataset score)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.size == 0:
        raise ValueError("values and weights must be non-empty and of equal length")
    if w.sum() <= 0:
        raise ValueError("weights sum to zero")
    return float(np.sum(v * w) / np.sum(w))
