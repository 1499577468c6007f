"""Metrics recover planted ground truth and agree with evo (test-time reference only)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from laser_plugin.metrics import (
    align_depth_scale,
    apply_sim3_to_poses,
    ate_rmse,
    depth_metrics,
    rotation_angle_deg,
    rpe,
    umeyama_alignment,
    weighted_mean,
)


def random_trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses along a smooth random walk."""
    world_from_cam = np.tile(np.eye(4), (n, 1, 1))
    rotvecs = np.cumsum(rng.normal(scale=0.05, size=(n, 3)), axis=0)
    world_from_cam[:, :3, :3] = Rotation.from_rotvec(rotvecs).as_matrix()
    world_from_cam[:, :3, 3] = np.cumsum(rng.normal(scale=0.1, size=(n, 3)), axis=0)
    return world_from_cam


def random_sim3(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    return (
        float(rng.uniform(0.2, 5.0)),
        Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(),
        rng.normal(scale=3.0, size=3),
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_umeyama_recovers_planted_sim3(seed: int, dtype) -> None:
    rng = np.random.default_rng(seed)
    pts_src = rng.normal(size=(50, 3)).astype(dtype)
    scale, rot, trans = random_sim3(rng)
    pts_dst = scale * pts_src.astype(np.float64) @ rot.T + trans
    s, r, t = umeyama_alignment(pts_src, pts_dst)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(s, scale, rtol=tol)
    np.testing.assert_allclose(r, rot, atol=tol)
    np.testing.assert_allclose(t, trans, atol=tol * 10)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)


def test_umeyama_without_scale_is_rigid() -> None:
    rng = np.random.default_rng(1)
    pts_src = rng.normal(size=(30, 3))
    _, rot, trans = random_sim3(rng)
    s, r, t = umeyama_alignment(pts_src, pts_src @ rot.T + trans, with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(r, rot, atol=1e-10)
    np.testing.assert_allclose(t, trans, atol=1e-10)


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(2)
    pts_src = rng.normal(size=(40, 3))
    mirrored = pts_src * np.array([1.0, 1.0, -1.0])  # the best orthogonal fit is a reflection
    s, r, _ = umeyama_alignment(pts_src, mirrored)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
    assert 0 < s < 1  # the reflected axis cannot be fitted, so the scale shrinks


@pytest.mark.parametrize(
    "src,dst,match",
    [
        (np.zeros((5, 2)), np.zeros((5, 2)), r"\(N, 3\)"),
        (np.zeros((5, 3)), np.zeros((4, 3)), "same shape"),
        (np.zeros((2, 3)), np.zeros((2, 3)), "at least 3"),
        (np.ones((5, 3)), np.zeros((5, 3)), "coincide"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "non-finite"),
    ],
)
def test_umeyama_rejects_bad_input(src, dst, match) -> None:
    with pytest.raises(ValueError, match=match):
        umeyama_alignment(src, dst)


def test_ate_is_zero_for_a_sim3_copy_and_recovers_noise() -> None:
    rng = np.random.default_rng(3)
    gt = random_trajectory(rng, 60)
    scale, rot, trans = random_sim3(rng)
    from laser_plugin.metrics import Sim3

    # est = inverse Sim(3) applied to gt: aligning it back must give zero error.
    inv = Sim3(1 / scale, rot.T, -(rot.T @ trans) / scale)
    est = apply_sim3_to_poses(inv, gt)
    assert ate_rmse(est, gt) < 1e-9
    assert ate_rmse(est, gt, align="se3") > 1e-3 or abs(scale - 1) < 1e-3
    assert ate_rmse(est, gt, align="none") > 1e-3

    # Isotropic position noise of std sigma per axis gives ATE ≈ sigma·sqrt(3) (minus the
    # 7 fitted degrees of freedom, negligible for many frames).
    gt_long = random_trajectory(rng, 4000)
    sigma = 0.01
    noisy = gt_long.copy()
    noisy[:, :3, 3] += rng.normal(scale=sigma, size=(4000, 3))
    np.testing.assert_allclose(ate_rmse(noisy, gt_long), sigma * np.sqrt(3), rtol=0.03)


def test_rpe_is_zero_for_a_sim3_copy_and_sees_a_single_jump() -> None:
    rng = np.random.default_rng(4)
    gt = random_trajectory(rng, 40)
    est = gt.copy()
    assert max(rpe(est, gt)) < 1e-9
    # Rotate the whole trajectory from frame 20 on by 10° about camera 20's centre (a world
    # motion): relative motions within each part are unchanged, so exactly one step
    # (19 → 20) of 39 has an error, a pure 10° rotation.
    world_from_world = np.eye(4)
    world_from_world[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    centre = gt[20, :3, 3]
    world_from_world[:3, 3] = centre - world_from_world[:3, :3] @ centre
    est[20:] = world_from_world @ est[20:]
    trans_rmse, rot_rmse = rpe(est, gt, align="none")
    np.testing.assert_allclose(rot_rmse, np.sqrt(10.0**2 / 39), rtol=1e-9)
    assert trans_rmse < 1e-9


def test_rotation_angle_is_exact_for_small_and_large_angles() -> None:
    for deg in (1e-6, 0.5, 90.0, 179.0):
        rot = Rotation.from_rotvec(np.deg2rad(deg) * np.array([0.0, 0.6, 0.8])).as_matrix()
        np.testing.assert_allclose(rotation_angle_deg(rot), deg, rtol=1e-7)


# ------------------------------------------------------------------ evo agreement


def _evo_traj(poses: np.ndarray):
    from evo.core.trajectory import PoseTrajectory3D

    return PoseTrajectory3D(
        poses_se3=[p.copy() for p in poses], timestamps=np.arange(len(poses), dtype=float)
    )


@pytest.mark.parametrize("seed", range(3))
def test_ate_and_rpe_agree_with_evo(seed: int) -> None:
    # evo is a test-time reference (GPL): nothing of it is used by the package.
    from evo import main_ape, main_rpe
    from evo.core.metrics import PoseRelation, Unit

    rng = np.random.default_rng(10 + seed)
    gt = random_trajectory(rng, 80)
    scale, rot, trans = random_sim3(rng)
    from laser_plugin.metrics import Sim3

    est = apply_sim3_to_poses(Sim3(scale, rot, trans), gt)
    # Perturb so errors are non-trivial: position noise and small rotation noise.
    est[:, :3, 3] += rng.normal(scale=0.05, size=(80, 3))
    noise = Rotation.from_rotvec(rng.normal(scale=0.02, size=(80, 3))).as_matrix()
    est[:, :3, :3] = est[:, :3, :3] @ noise

    ape = main_ape.ape(
        _evo_traj(gt),
        _evo_traj(est),
        pose_relation=PoseRelation.translation_part,
        align=True,
        correct_scale=True,
    )
    np.testing.assert_allclose(ate_rmse(est, gt), ape.stats["rmse"], rtol=1e-6)

    for relation, ours_index in (
        (PoseRelation.translation_part, 0),
        (PoseRelation.rotation_angle_deg, 1),
    ):
        res = main_rpe.rpe(
            _evo_traj(gt),
            _evo_traj(est),
            pose_relation=relation,
            delta=1,
            delta_unit=Unit.frames,
            rel_delta_tol=0.01,
            all_pairs=True,
            align=True,
            correct_scale=True,
        )
        ours = rpe(est, gt, delta=1)[ours_index]
        np.testing.assert_allclose(ours, res.stats["rmse"], rtol=1e-6)


# ------------------------------------------------------------------ depth


def _planted_depth(rng, n=4, h=12, w=16, scale=2.5, shift=0.0):
    gt = rng.uniform(1.0, 20.0, size=(n, h, w))
    pred = (gt - shift) / scale
    return pred, gt


@pytest.mark.parametrize("method", ["scale", "median", "lstsq", "scale_shift"])
def test_depth_alignment_recovers_planted_scale(method: str) -> None:
    rng = np.random.default_rng(5)
    pred, gt = _planted_depth(rng)
    s, t = align_depth_scale(pred, gt, method=method)
    np.testing.assert_allclose(s, 2.5, rtol=1e-6)
    np.testing.assert_allclose(t, 0.0, atol=1e-5)
    m = depth_metrics(pred, gt, method=method)
    assert m["abs_rel"] < 1e-6 and m["delta_1_25"] == 1.0
    assert m["num_pixels"] == pred.size


def test_scale_shift_recovers_planted_shift_and_l1_ignores_outliers() -> None:
    rng = np.random.default_rng(6)
    pred, gt = _planted_depth(rng, scale=0.5, shift=1.5)
    corrupted = pred.copy()
    flat = corrupted.reshape(-1)
    idx = rng.choice(flat.size, size=flat.size // 10, replace=False)
    flat[idx] *= 4.0  # 10 % gross outliers
    s, t = align_depth_scale(corrupted, gt, method="scale_shift")
    np.testing.assert_allclose([s, t], [0.5, 1.5], rtol=1e-3, atol=1e-3)
    s_l1, _ = align_depth_scale(corrupted * 1.0, gt * 1.0 - 1.5, method="scale")
    s_l2, _ = align_depth_scale(corrupted, gt - 1.5, method="lstsq")
    # The L1 scale stays close to the truth; least squares is dragged by the outliers.
    assert abs(s_l1 - 0.5) < 0.01 < abs(s_l2 - 0.5)


def test_depth_metrics_values_by_hand() -> None:
    gt = np.array([[1.0, 2.0, 4.0, 0.0, 100.0]])
    pred = np.array([[1.0, 3.0, 4.0, 7.0, 100.0]])
    m = depth_metrics(pred, gt, method="none", cap=70.0)
    # valid: gt > 0 and gt < 70 → first three pixels; errors 0, 0.5, 0.
    np.testing.assert_allclose(m["abs_rel"], 0.5 / 3)
    np.testing.assert_allclose(m["delta_1_25"], 2 / 3)
    assert m["num_pixels"] == 3


def test_depth_accepts_frames_of_different_sizes_and_masks() -> None:
    rng = np.random.default_rng(7)
    gts = [rng.uniform(1, 5, size=(4, 6)), rng.uniform(1, 5, size=(3, 5))]
    preds = [g / 3.0 for g in gts]
    preds[1][0, 0] = 1000.0
    valid = [np.ones((4, 6), bool), np.ones((3, 5), bool)]
    valid[1][0, 0] = False
    m = depth_metrics(preds, gts, valid=valid)
    np.testing.assert_allclose(m["scale"], 3.0, rtol=1e-6)
    assert m["num_pixels"] == 24 + 15 - 1


def test_depth_rejects_mismatched_and_empty_input() -> None:
    with pytest.raises(ValueError, match="same number of pixels"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown depth alignment"):
        align_depth_scale(np.ones((2, 3)), np.ones((2, 3)), method="bogus")  # type: ignore[arg-type]


def test_weighted_mean() -> None:
    assert weighted_mean([0.1, 0.3], [1, 3]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        weighted_mean([], [])


def test_scale_alignment_reaches_the_l1_optimum() -> None:
    rng = np.random.default_rng(8)
    gt = rng.uniform(1, 10, 5000)
    pred = gt / 2.0 * np.exp(rng.normal(0, 0.2, gt.size))
    pred[:300] *= 3.0  # outliers
    s, _ = align_depth_scale(pred, gt, method="scale")

    def cost(x):
        return np.abs(np.multiply.outer(np.atleast_1d(x), pred) - gt).sum(axis=-1)

    grid = np.linspace(1.5, 2.5, 2001)
    assert cost(s)[0] <= cost(grid).min() + 1e-9
    assert 1.7 < s < 2.1  # close to the planted 2 despite the outliers
