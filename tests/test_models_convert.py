"""Output conventions: planted cameras and intrinsics are recovered from network-style outputs."""

import math

import pytest
import torch

from laser_plugin.models.convert import (
    intrinsics_from_points,
    pi3_to_prediction,
    quat_xyzw_to_matrix,
    vggt_pose_to_cameras,
    vggt_to_prediction,
    weighted_median,
)


def _planted_points(
    fx: float, fy: float, h: int, w: int, n: int = 2, seed: int = 0
) -> torch.Tensor:
    """(n, h, w, 3) camera-frame points of random depth seen by a centred pinhole camera."""
    g = torch.Generator().manual_seed(seed)
    z = 1.0 + 4.0 * torch.rand(n, h, w, generator=g)
    u = torch.arange(w) + 0.5 - w / 2
    v = torch.arange(h)[:, None] + 0.5 - h / 2
    return torch.stack([u / fx * z, v / fy * z, z], dim=-1)


def test_weighted_median_matches_the_l1_minimiser():
    values = torch.tensor([[1.0, 2.0, 3.0, 10.0], [5.0, -1.0, 0.0, 2.0]])
    weights = torch.tensor([[1.0, 1.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = weighted_median(values, weights)
    assert out[0] == 3.0
    assert torch.isnan(out[1])


def test_intrinsics_recovered_from_a_planted_point_map_despite_outliers():
    h, w, fx, fy = 28, 42, 37.5, 35.0
    pts = _planted_points(fx, fy, h, w)
    conf = torch.ones(2, h, w)
    # 20% gross outliers with low confidence, 5% with high confidence
    g = torch.Generator().manual_seed(1)
    bad = torch.rand(2, h, w, generator=g)
    pts[bad < 0.2] *= torch.tensor([3.0, -2.0, 0.5])
    conf[bad < 0.15] = 0.01
    K = intrinsics_from_points(pts, conf)
    torch.testing.assert_close(K[:, 0, 0], torch.full((2,), fx), rtol=1e-4, atol=0)
    torch.testing.assert_close(K[:, 1, 1], torch.full((2,), fy), rtol=1e-4, atol=0)
    # image centre, pixel centres at integers (the engine's convention)
    torch.testing.assert_close(K[0, :2, 2], torch.tensor([(w - 1) / 2, (h - 1) / 2]))
    assert K[0, 2, 2] == 1 and K[0, 0, 1] == 0


def test_intrinsics_fall_back_for_a_frame_without_valid_points():
    pts = _planted_points(30.0, 30.0, 14, 14, n=1)
    pts[..., 2] = -1.0  # behind the camera: nothing usable
    K = intrinsics_from_points(pts)
    assert torch.isfinite(K).all() and K[0, 0, 0] > 0


def test_pi3_conversion_depth_is_z_conf_is_sigmoid_and_poses_pass_through():
    h, w = 14, 28
    pts = _planted_points(20.0, 20.0, h, w)
    logits = torch.randn(2, h, w, 1)
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, :3, 3] = torch.tensor([1.0, 2.0, 3.0])
    pred = pi3_to_prediction(pts, logits, c2w)
    torch.testing.assert_close(pred.depth, pts[..., 2])
    torch.testing.assert_close(pred.conf, torch.sigmoid(logits[..., 0]))
    torch.testing.assert_close(pred.cam_to_world, c2w)
    torch.testing.assert_close(pred.intrinsics[:, 0, 0], torch.full((2,), 20.0), rtol=1e-4, atol=0)


def test_quaternion_is_scalar_last():
    # 90 degrees about +z: x -> y
    half = math.pi / 4
    rot = quat_xyzw_to_matrix(torch.tensor([0.0, 0.0, math.sin(half), math.cos(half)]))
    torch.testing.assert_close(
        rot @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    # any scale of the quaternion gives the same rotation
    torch.testing.assert_close(
        quat_xyzw_to_matrix(torch.tensor([0.0, 0.0, 2.0, 2.0])), rot, atol=1e-6, rtol=0
    )


def _matrix_to_quat_xyzw(rot: torch.Tensor) -> torch.Tensor:
    # Independent reference (Shepperd's method, w-dominant branch is enough for small angles).
    w = torch.sqrt(1 + rot[0, 0] + rot[1, 1] + rot[2, 2]) / 2
    return torch.stack(
        [
            (rot[2, 1] - rot[1, 2]) / (4 * w),
            (rot[0, 2] - rot[2, 0]) / (4 * w),
            (rot[1, 0] - rot[0, 1]) / (4 * w),
            w,
        ]
    )


def test_vggt_world_to_camera_encoding_becomes_camera_to_world():
    # Planted camera-to-world pose: small rotation about an oblique axis, then a translation.
    axis = torch.tensor([0.3, -0.5, 0.8])
    axis = axis / axis.norm()
    angle = 0.4
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot_c2w = torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    center = torch.tensor([1.0, -2.0, 0.5])
    rot_w2c, t_w2c = rot_c2w.T, -rot_c2w.T @ center
    h, w, fov_h, fov_w = 294, 518, 0.9, 1.3
    enc = torch.cat([t_w2c, _matrix_to_quat_xyzw(rot_w2c), torch.tensor([fov_h, fov_w])])[None]
    c2w, K = vggt_pose_to_cameras(enc, (h, w))
    torch.testing.assert_close(c2w[0, :3, :3], rot_c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w[0, :3, 3], center, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w[0, 3], torch.tensor([0.0, 0, 0, 1]))
    torch.testing.assert_close(K[0, 0, 0], torch.tensor((w / 2) / math.tan(fov_w / 2)))
    torch.testing.assert_close(K[0, 1, 1], torch.tensor((h / 2) / math.tan(fov_h / 2)))
    torch.testing.assert_close(K[0, :2, 2], torch.tensor([(w - 1) / 2, (h - 1) / 2]))


def test_vggt_conversion_keeps_depth_and_confidence():
    depth = torch.rand(3, 14, 28, 1) + 0.5
    conf = 1 + torch.rand(3, 14, 28).exp()
    enc = torch.zeros(3, 9)
    enc[:, 6] = 1.0  # identity rotation
    enc[:, 7:] = 1.0
    pred = vggt_to_prediction(enc, depth, conf)
    torch.testing.assert_close(pred.depth, depth[..., 0])
    torch.testing.assert_close(pred.conf, conf)
    torch.testing.assert_close(pred.cam_to_world, torch.eye(4).expand(3, 4, 4))


@pytest.mark.parametrize("shape", [(2, 14, 14), (2, 14, 14, 4)])
def test_intrinsics_reject_bad_shapes(shape):
    with pytest.raises(ValueError, match="pts_cam"):
        intrinsics_from_points(torch.ones(shape))


def test_vggt_degenerate_field_of_view_gives_finite_focal_lengths():
    enc = torch.zeros(2, 9)
    enc[:, 6] = 1.0
    enc[1, 7:] = 1.0
    _, K = vggt_pose_to_cameras(enc, (28, 42))
    assert torch.isfinite(K).all()
    assert K[0, 0, 0] > 50 * K[1, 0, 0]  # still a very long focal length
