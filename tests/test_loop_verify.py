"""Geometric verification of loop candidates against a planted drift on a synthetic scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from laser_plugin.geometry.sanitize import sanitize_prediction
from laser_plugin.loop.config import LoopConfig
from laser_plugin.loop.sim3np import correct_pose, sim3_from, sim3_inverse, sim3_split
from laser_plugin.loop.verify import FrameEstimates, covisibility, verify_loop
from laser_plugin.models.synthetic import EmulatedModel, make_scene
from laser_plugin.prepare import rank_normalise


@pytest.fixture(scope="module")
def scene():
    return make_scene("loop", 240, 48, 84)


def truth(scene, frames, world=None) -> FrameEstimates:
    """Ground-truth estimates of ``frames`` in a world moved by the Sim(3) ``world``."""
    world = np.eye(4) if world is None else world
    poses, depths = [], []
    for i in frames:
        pose, s = correct_pose(world, scene.cam_to_world[i])
        poses.append(pose)
        depths.append(scene.render(i).depth * s)
    d = torch.as_tensor(np.stack(depths), dtype=torch.float32)
    k = torch.as_tensor(np.repeat(scene.intrinsics[None], len(frames), 0), dtype=torch.float32)
    return FrameEstimates(d, d > 0, torch.as_tensor(np.stack(poses), dtype=torch.float32), k)


def joint(scene, frames) -> FrameEstimates:
    pred = EmulatedModel(scene).predict(list(frames))
    depth, conf, poses, intr, _ = sanitize_prediction(pred)
    valid = depth > 0
    return FrameEstimates(depth, valid & (rank_normalise(conf, valid) >= 0.5), poses, intr)


def test_covisibility_of_a_frame_with_itself_and_with_the_far_side(scene):
    k = torch.as_tensor(scene.intrinsics)
    d0, p0 = (
        torch.as_tensor(scene.render(0).depth, dtype=torch.float64),
        torch.as_tensor(scene.cam_to_world[0]),
    )
    d1, p1 = (
        torch.as_tensor(scene.render(120).depth, dtype=torch.float64),
        torch.as_tensor(scene.cam_to_world[120]),
    )
    assert covisibility(d0, p0, k, d0, p0, k) > 0.99
    assert covisibility(d0, p0, k, d1, p1, k) < 0.05  # half a lap later, looking the other way


def test_planted_drift_is_recovered(scene):
    drift = sim3_from(
        1.08,
        Rotation.from_euler("xyz", [2.0, 6.0, -1.5], degrees=True).as_matrix(),
        [0.4, -0.1, 0.3],
    )
    cand, cur = [0, 5, 10], [228, 233, 238]
    res = verify_loop(
        truth(scene, cand), truth(scene, cur, drift), joint(scene, cand + cur), LoopConfig()
    )
    assert res.accepted, res.reason
    # The correction maps the drifted world back onto the candidate's (true) world.
    err = res.correction @ drift
    s, r, t = sim3_split(err)
    assert abs(np.log(s)) < 0.02
    assert np.degrees(Rotation.from_matrix(r).magnitude()) < 1.0
    assert np.linalg.norm(t) < 0.1
    assert res.covisibility > 0.5
    # float32 estimates: the correction's rotation is orthonormal to ~1e-7, not to 1e-9
    np.testing.assert_allclose(
        sim3_inverse(sim3_inverse(res.correction)), res.correction, atol=1e-6
    )


def test_frames_that_do_not_overlap_are_rejected(scene):
    cand, cur = [0, 5, 10], [118, 123, 128]
    res = verify_loop(truth(scene, cand), truth(scene, cur), joint(scene, cand + cur), LoopConfig())
    assert not res.accepted and "co-visibility" in res.reason
    assert res.correction is None


def test_implausible_correction_is_rejected(scene):
    drift = sim3_from(
        1.0, Rotation.from_euler("y", 60.0, degrees=True).as_matrix(), [0.0, 0.0, 0.0]
    )
    cand, cur = [0, 5, 10], [228, 233, 238]
    res = verify_loop(
        truth(scene, cand), truth(scene, cur, drift), joint(scene, cand + cur), LoopConfig()
    )
    assert not res.accepted and "rotation" in res.reason


def test_large_raw_drift_already_corrected_is_accepted(scene):
    """Long streams: the raw drift may exceed the limits while the corrections already applied
    explain it; the limits apply to what the loop changes beyond them."""
    drift = sim3_from(
        1.0, Rotation.from_euler("y", 60.0, degrees=True).as_matrix(), [0.0, 0.0, 0.0]
    )
    cand, cur = [0, 5, 10], [228, 233, 238]
    res = verify_loop(
        truth(scene, cand), truth(scene, cur, drift), joint(scene, cand + cur), LoopConfig(),
        candidate_correction=np.eye(4), current_correction=sim3_inverse(drift),
    )  # fmt: skip
    assert res.accepted, res.reason
    s, r, _ = sim3_split(res.correction @ drift)
    assert np.degrees(Rotation.from_matrix(r).magnitude()) < 1.0 and abs(np.log(s)) < 0.02
