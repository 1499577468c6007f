"""Sim(3) registration: planted transforms are recovered, with outliers and degenerate inputs."""

import math

import pytest
import torch

from laser_plugin.geometry.camera import invert_rigid, transform_points, unproject_depth
from laser_plugin.geometry.robust import robust_scale, segment_median
from laser_plugin.geometry.sim3 import Sim3, register_overlap, weighted_procrustes


def random_rotation(gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_scale", [True, False])
def test_procrustes_recovers_planted_sim3(dtype, with_scale):
    gen = torch.Generator().manual_seed(0)
    rot = random_rotation(gen).to(dtype)
    scale = torch.tensor(2.5 if with_scale else 1.0, dtype=dtype)
    trans = torch.randn(3, generator=gen, dtype=torch.float64).to(dtype)
    pts_src = torch.randn(200, 3, generator=gen, dtype=torch.float64).to(dtype)
    pts_dst = Sim3(scale, rot, trans).apply_points(pts_src)
    fit = weighted_procrustes(pts_src, pts_dst, scale=None if with_scale else 1.0)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(fit.rotation, rot, atol=tol, rtol=0)
    torch.testing.assert_close(fit.translation, trans, atol=tol * 10, rtol=0)
    torch.testing.assert_close(fit.scale, scale, atol=tol, rtol=0)


def test_procrustes_never_returns_a_reflection():
    gen = torch.Generator().manual_seed(1)
    pts = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    mirrored = pts * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    fit = weighted_procrustes(pts, mirrored)
    assert torch.det(fit.rotation) > 0.999


@pytest.mark.parametrize(
    "src",
    [
        torch.zeros(10, 3, dtype=torch.float64),  # all coincident
        torch.tensor(
            [[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=torch.float64
        ),  # collinear
    ],
)
def test_procrustes_degenerate_inputs_stay_finite(src):
    fit = weighted_procrustes(src, src + 1.0)
    assert torch.isfinite(fit.rotation).all() and torch.isfinite(fit.translation).all()
    assert torch.det(fit.rotation) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(fit.apply_points(src), src + 1.0, atol=1e-6, rtol=0)


def test_procrustes_zero_weights_is_identity():
    src = torch.randn(5, 3, dtype=torch.float64)
    fit = weighted_procrustes(src, src + 3.0, weight=torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(fit.rotation, torch.eye(3, dtype=torch.float64))


def test_segment_median_matches_torch_median():
    gen = torch.Generator().manual_seed(2)
    vals = torch.rand(1000, generator=gen, dtype=torch.float64)
    grp = torch.randint(0, 7, (1000,), generator=gen)
    med = segment_median(vals, grp, 8)
    for g in range(7):
        v = vals[grp == g].sort().values
        assert med[g] == v[(v.numel() - 1) // 2]
    assert math.isnan(float(med[7]))


def test_robust_scale_with_20_percent_outliers():
    gen = torch.Generator().manual_seed(3)
    den = torch.rand(5000, generator=gen, dtype=torch.float64) * 10 + 0.5
    num = 1.7 * den * torch.exp(0.01 * torch.randn(5000, generator=gen, dtype=torch.float64))
    bad = torch.rand(5000, generator=gen) < 0.2
    num[bad] = num[bad] * torch.exp(
        torch.randn(int(bad.sum()), generator=gen, dtype=torch.float64) * 1.5 + 0.7
    )
    fit = robust_scale(num, den)
    assert fit.scale[0] == pytest.approx(1.7, rel=0.005)
    plain_ls = (num * den).sum() / (den * den).sum()
    assert abs(float(plain_ls) - 1.7) > 0.1  # the outliers do bite a plain fit


def test_robust_scale_per_group():
    gen = torch.Generator().manual_seed(4)
    scales = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    grp = torch.randint(0, 3, (3000,), generator=gen)
    den = torch.rand(3000, generator=gen, dtype=torch.float64) + 0.1
    num = scales[grp] * den
    fit = robust_scale(num, den, grp, 4)
    torch.testing.assert_close(fit.scale[:3], scales, atol=1e-9, rtol=0)
    assert fit.scale[3] == 1.0 and fit.count[3] == 0


def _overlap_window(gen, n=4, h=24, w=32):
    """Cameras looking at a box-shaped room; returns depth, poses, intrinsics in the global gauge."""
    k = torch.tensor(
        [[30.0, 0, (w - 1) / 2], [0, 30.0, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64
    )
    k = k.expand(n, 3, 3).clone()
    poses = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    poses[:, 0, 3] = torch.linspace(0, 0.6, n, dtype=torch.float64)
    depth = 3.0 + torch.rand(n, h, w, generator=gen, dtype=torch.float64)
    return depth, poses, k


@pytest.mark.parametrize("method", ["cameras", "points", "both"])
def test_register_overlap_recovers_planted_gauge_with_outliers(method):
    gen = torch.Generator().manual_seed(5)
    depth, poses, k = _overlap_window(gen)
    rot = random_rotation(gen)
    gauge = Sim3(
        torch.tensor(0.4, dtype=torch.float64),
        rot,
        torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
    )
    # The new window sees the same scene in its own gauge: X_new = gauge^-1(X_global).
    inv_s = 1 / gauge.scale
    poses_new = poses.clone()
    poses_new[:, :3, :3] = rot.T @ poses[:, :3, :3]
    poses_new[:, :3, 3] = inv_s * (poses[:, :3, 3] - gauge.translation) @ rot
    depth_new = depth * inv_s
    outliers = torch.rand(depth.shape, generator=gen) < 0.2
    depth_new = torch.where(outliers, depth_new * 2.7, depth_new)
    mask = torch.ones_like(depth, dtype=torch.bool)
    reg = register_overlap(depth, poses, k, mask, depth_new, poses_new, k, mask, method=method)
    assert float(reg.sim3.scale) == pytest.approx(0.4, rel=1e-3)
    torch.testing.assert_close(reg.sim3.rotation, rot, atol=2e-3, rtol=0)
    aligned = reg.sim3.apply_poses(poses_new)
    torch.testing.assert_close(aligned[:, :3, 3], poses[:, :3, 3], atol=5e-3, rtol=0)
    assert reg.pose_residual < 1e-2
    # world points of the inlier pixels land on the truth
    pts = transform_points(aligned, unproject_depth(depth_new * reg.sim3.scale, k).flatten(1, 2))
    truth = transform_points(poses, unproject_depth(depth, k).flatten(1, 2))
    err = (pts - truth).norm(dim=-1)[~outliers.flatten(1, 2)]
    assert float(err.max()) < 0.02


def test_register_overlap_pure_rotation():
    """Coincident camera centres (no parallax): the view/up anchors still fix the rotation."""
    gen = torch.Generator().manual_seed(6)
    depth, poses, k = _overlap_window(gen)
    poses[:, :3, 3] = 0.0
    yaw = torch.linspace(0, 0.3, 4, dtype=torch.float64)
    for i, a in enumerate(yaw):
        c, s = math.cos(a), math.sin(a)
        poses[i, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    rot = random_rotation(gen)
    poses_new = poses.clone()
    poses_new[:, :3, :3] = rot.T @ poses[:, :3, :3]
    mask = torch.ones_like(depth, dtype=torch.bool)
    reg = register_overlap(depth, poses, k, mask, depth * 2.0, poses_new, k, mask)
    assert float(reg.sim3.scale) == pytest.approx(0.5, rel=1e-6)
    torch.testing.assert_close(reg.sim3.rotation, rot, atol=1e-6, rtol=0)


def test_invert_rigid():
    gen = torch.Generator().manual_seed(7)
    t = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    for i in range(3):
        t[i, :3, :3] = random_rotation(gen)
        t[i, :3, 3] = torch.randn(3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        invert_rigid(t) @ t, torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    )


def test_one_sim3_type_for_torch_and_numpy():
    """The engine's (torch) and evaluation's / loop closure's (numpy) Sim(3) are one type: the
    same transform gives the same points, poses and 4x4 matrix on both, and the matrix form
    round-trips, inverts and composes as the closed forms say."""
    import numpy as np

    from laser_plugin import metrics
    from laser_plugin.loop.sim3np import correct_pose, sim3_inverse

    assert metrics.Sim3 is Sim3
    gen = torch.Generator().manual_seed(3)
    rot = random_rotation(gen)
    t = torch.randn(3, generator=gen, dtype=torch.float64)
    a_t = Sim3(torch.tensor(1.7, dtype=torch.float64), rot, t)
    a_n = Sim3(1.7, rot.numpy(), t.numpy())
    pts = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(a_t.apply_points(pts).numpy(), a_n.apply_points(pts.numpy()))
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = random_rotation(gen)
    pose[:3, 3] = torch.randn(3, generator=gen, dtype=torch.float64)
    got_t, got_n = a_t.apply_poses(pose).numpy(), a_n.apply_poses(pose.numpy())
    np.testing.assert_allclose(got_t, got_n, atol=1e-12)
    m = a_n.matrix()
    np.testing.assert_allclose(a_t.matrix().numpy(), m, atol=1e-12)
    # Moving a rigid pose: the rotation is not scaled, the centre moves as a point.
    np.testing.assert_allclose(got_n[:3, 3], (m @ pose.numpy()[:, 3])[:3], atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(got_n[:3, :3]), 1.0, atol=1e-12)
    # Matrix form: round trip (torch and numpy), inverse, composition, loop closure's helper.
    for back in (Sim3.from_matrix(m), Sim3.from_matrix(torch.from_numpy(m))):
        assert float(back.scale) == pytest.approx(1.7, abs=1e-12)
        np.testing.assert_allclose(np.asarray(back.rotation), rot.numpy(), atol=1e-12)
    np.testing.assert_allclose(a_n.inverse().matrix(), np.linalg.inv(m), atol=1e-12)
    np.testing.assert_allclose(a_n.inverse().matrix(), sim3_inverse(m), atol=1e-12)
    b = Sim3(0.6, random_rotation(gen).numpy(), np.array([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(a_n.compose(b).matrix(), m @ b.matrix(), atol=1e-12)
    corrected, s = correct_pose(m, pose.numpy())
    np.testing.assert_allclose(corrected, got_n, atol=1e-12)
    assert s == pytest.approx(1.7)
    s_, r_, t_ = a_n  # unpacks as (s, R, t), as metrics' callers read it
    assert s_ == 1.7 and r_ is a_n.rotation and t_ is a_n.translation
