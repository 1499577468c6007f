"""Model-output faults: the synthetic model's WindowPrediction is corrupted on purpose; the run must
finish with a warning naming the problem and a sane result (finite, proper rotations, accuracy
close to the clean run where enough data is left) - never NaN, never a silent wrong answer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.synthetic import EmulatedModel, make_scene
from laser_plugin.models.synthetic.evaluate import evaluate_frames
from laser_plugin.types import WindowPrediction

CFG = dict(window_size=8, overlap=3)  # 40 frames -> 8 windows


class Corrupting:
    """Wraps a model; ``corrupt(k, pred) -> pred`` alters the prediction of window call k."""

    def __init__(self, inner, corrupt):
        self.inner, self.corrupt, self.calls = inner, corrupt, 0

    def input_size(self, h, w):
        return self.inner.input_size(h, w)

    def __call__(self, images):
        pred = self.inner(images)
        out = self.corrupt(self.calls, pred)
        self.calls += 1
        return out


def _replace(pred: WindowPrediction, **kw) -> WindowPrediction:
    fields = dict(
        depth=pred.depth, conf=pred.conf, cam_to_world=pred.cam_to_world, intrinsics=pred.intrinsics
    )
    fields.update(kw)
    return WindowPrediction(**fields)


def _mask(shape, fraction, seed):
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < fraction)


def nan_inf_depth(k, p):
    d = p.depth.clone()
    d[_mask(d.shape, 0.10, k)] = float("nan")
    d[_mask(d.shape, 0.05, k + 100)] = float("inf")
    return _replace(p, depth=d)


def zero_negative_depth(k, p):
    d = p.depth.clone()
    d[_mask(d.shape, 0.10, k)] = 0.0
    d[_mask(d.shape, 0.10, k + 100)] *= -1.0
    return _replace(p, depth=d)


def low_conf_overlap(k, p):
    c = p.conf.clone()
    if k > 0:
        c[: CFG["overlap"]] = 1e-6  # the new window distrusts every overlap pixel
    return _replace(p, conf=c)


def nan_conf(k, p):
    c = p.conf.clone()
    c[_mask(c.shape, 0.2, k)] = float("nan")
    c[_mask(c.shape, 0.1, k + 7)] = -5.0
    return _replace(p, conf=c)


def empty_window(k, p):
    return _replace(p, depth=torch.full_like(p.depth, float("nan"))) if k == 2 else p


def constant_depth(k, p):
    return _replace(p, depth=torch.full_like(p.depth, 3.0)) if k == 3 else p


def flipped_rotation(k, p):
    pose = p.cam_to_world.clone()
    pose[:, :3, 2] *= -1  # det -1: a reflection, as a sign-flipped Kabsch would give
    return _replace(p, cam_to_world=pose)


def degenerate_rotation(k, p):
    pose = p.cam_to_world.clone()
    if k == 1:
        pose[4, :3, :3] = 0.0  # rank 0
        pose[5, :3, :3] *= 3.0  # scaled
    return _replace(p, cam_to_world=pose)


def nan_pose(k, p):
    pose = p.cam_to_world.clone()
    if k == 2:
        pose[5, 0, 3] = float("nan")
    return _replace(p, cam_to_world=pose)


def bad_intrinsics(k, p):
    kk = p.intrinsics.clone()
    if k == 1:
        kk[6, 0, 0] = 0.0
        kk[7, 1, 1] = float("inf")
    return _replace(p, intrinsics=kk)


@pytest.fixture(scope="module")
def scene():
    return make_scene("demo", 40, 64, 112)


@pytest.fixture(scope="module")
def clean(scene):
    frames = StreamingReconstructor(EmulatedModel(scene), LaserConfig(**CFG)).reconstruct(
        scene.frames()
    )
    return evaluate_frames(frames, scene)


def run(scene, corrupt, scene_name=None):
    rec = StreamingReconstructor(Corrupting(EmulatedModel(scene), corrupt), LaserConfig(**CFG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = rec.reconstruct(scene.frames())
    return rec, frames


def assert_sane(frames, n=40):
    assert [f.index for f in frames] == list(range(n))
    for f in frames:
        assert np.isfinite(f.cam_to_world).all() and np.isfinite(f.intrinsics).all()
        r = f.cam_to_world[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
        assert abs(np.linalg.det(r) - 1) < 1e-5
        assert np.isfinite(f.depth).all() and (f.depth >= 0).all()
        assert np.isfinite(f.conf).all() and (f.conf >= 0).all() and (f.conf <= 1).all()
        assert f.intrinsics[0, 0] > 0 and f.intrinsics[1, 1] > 0


DISAGREE = "disagrees with the previous window"

# corruption -> (warnings expected in rec.warnings, ATE bound as a multiple of the clean ATE or
# None where the corrupted window cannot be right, bound on the mean relative rotation error).
CASES = {
    "nan_inf_depth": (nan_inf_depth, [], 1.5, 0.2),
    "zero_negative_depth": (zero_negative_depth, [], 1.5, 0.2),
    "low_conf_overlap": (low_conf_overlap, ["usable overlap pixels"], 1.5, 0.2),
    "nan_negative_conf": (nan_conf, [], 1.5, 0.2),
    # The empty window's frames have no depth; it is placed from the overlap cameras alone.
    "empty_window": (
        empty_window,
        ["no valid depth in this window", "registered on the overlap cameras only"],
        2.5,
        0.2,
    ),
    # A textureless wall predicted as one constant depth: wrong, and said to be.
    "constant_depth": (constant_depth, [DISAGREE], None, 0.2),
    # Reflections are projected onto rotations, but the poses are then wrong: said twice.
    "flipped_rotation": (flipped_rotation, ["rotations were not proper", DISAGREE], None, None),
    "degenerate_rotation": (degenerate_rotation, ["rotations were not proper"], 2.0, None),
    "nan_pose": (nan_pose, ["non-finite or degenerate camera pose"], 2.0, 1.0),
    "bad_intrinsics": (bad_intrinsics, ["invalid intrinsics"], 1.5, 0.2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_output_fault(scene, clean, name):
    corrupt, expected, ate_factor, rot_deg = CASES[name]
    rec, frames = run(scene, corrupt)
    assert_sane(frames)
    for warning in expected:
        assert any(warning in w for w in rec.warnings), (warning, rec.warnings[:6])
    if DISAGREE not in expected:  # no false alarm where the model's overlap is consistent
        assert not any(DISAGREE in w for w in rec.warnings), rec.warnings
    acc = evaluate_frames(frames, scene)
    if ate_factor:
        assert acc["ate"] <= ate_factor * clean["ate"] + 1e-3, (acc["ate"], clean["ate"])
    if rot_deg:
        assert acc["rpe_rot_deg"] <= rot_deg, acc


@pytest.mark.parametrize("scene_name", ["pure_rotation", "low_parallax"])
def test_hard_motion_without_parallax(scene_name):
    """No parallax (pure rotation, nearly static camera): finite, accurate rotations, no alarm."""
    scene = make_scene(scene_name, 40, 64, 112)
    rec, frames = run(scene, lambda k, p: p)
    assert_sane(frames)
    assert not any(DISAGREE in w for w in rec.warnings), rec.warnings
    acc = evaluate_frames(frames, scene)
    assert acc["rpe_rot_deg"] < 0.5, acc
    # The emulator makes no-parallax windows err in depth on purpose (as real models do).
    assert acc["abs_rel"] < 0.3, acc


@pytest.mark.parametrize("sink_thread", [False, True])
def test_the_pipelined_predictor_warns_about_disagreeing_windows_as_the_engine_does(
    scene, sink_thread
):
    """The same disagreement warning from the pipelined predictor (inline or threaded sinks), and the
    sinks' window stats carry it: one run loop delivers for every predictor."""
    from laser_plugin.predictors import Pipelined

    class StatsSink:
        def __init__(self):
            self.windows = []

        def on_window(self, stats):
            self.windows.append(stats)

    rec = StreamingReconstructor(
        Corrupting(EmulatedModel(scene), constant_depth), LaserConfig(**CFG)
    )
    sink = StatsSink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = rec.reconstruct(
            scene.frames(), [sink], predictor=Pipelined(sink_thread=sink_thread)
        )
    assert_sane(frames)
    assert any(DISAGREE in w for w in rec.warnings), rec.warnings
    assert any(DISAGREE in m for s in sink.windows for m in s.warnings)
