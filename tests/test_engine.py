"""The streaming engine end to end on synthetic scenes, against ground truth."""

import os

import numpy as np
import pytest
import torch

from laser_plugin import LaserConfig, ReconstructedFrame, StreamingReconstructor, WindowPrediction
from laser_plugin.errors import ConfigError
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.models.synthetic.evaluate import evaluate_frames
from laser_plugin.windows import schedule_windows


@pytest.mark.parametrize("n", [1, 3, 5, 19, 20, 21, 34, 35, 36, 50, 101])
@pytest.mark.parametrize("window,overlap", [(20, 5), (4, 3), (2, 1), (10, 1)])
def test_every_frame_is_finalised_exactly_once(n, window, overlap):
    windows = list(schedule_windows(range(n), window, overlap))
    new = [i for w in windows for i in w.new_items]
    assert new == list(range(n))
    for k, w in enumerate(windows):
        assert w.index == k
        assert len(w.items) == min(window, n)  # a short last window is back-filled to full size
        assert w.items == list(range(w.items[0], w.items[0] + len(w.items)))
        if k == 0:
            assert w.num_overlap == 0
        else:
            assert w.num_overlap >= overlap and set(w.items[: w.num_overlap]) <= set(
                range(w.items[0], new.index(w.new_items[0]))
            )


def test_config_validation():
    for bad in [
        dict(overlap=20),
        dict(window_size=1),
        dict(overlap=0),
        dict(iou_threshold=0),
        dict(huber_delta=-1),
    ]:
        with pytest.raises(ConfigError):
            LaserConfig(**bad).validate()


@pytest.fixture(scope="module")
def small_scene():
    return make_scene("demo", num_frames=70, height=64, width=112)


def run(scene, **cfg):
    model = make_model(scene=scene)
    return StreamingReconstructor(model, LaserConfig(**cfg)).reconstruct(scene.frames())


def test_end_to_end_accuracy_against_ground_truth(small_scene):
    frames = run(small_scene)
    assert [f.index for f in frames] == list(range(small_scene.num_frames))
    f0 = frames[0]
    assert isinstance(f0, ReconstructedFrame)
    np.testing.assert_allclose(f0.cam_to_world, np.eye(4), atol=1e-5)  # global frame = first camera
    assert f0.image.shape == (64, 112, 3) and f0.image.dtype == np.uint8
    assert f0.depth.shape == (64, 112) and f0.conf.min() >= 0 and f0.conf.max() <= 1
    acc = evaluate_frames(frames, small_scene)
    path_length = np.linalg.norm(np.diff(small_scene.cam_to_world[:, :3, 3], axis=0), axis=1).sum()
    assert acc["abs_rel"] < 0.06, acc
    assert acc["delta_1_25"] > 0.93, acc
    assert acc["ate"] < 0.05 * path_length, acc
    # points land on the true surfaces after one Sim(3) for the whole sequence
    from laser_plugin.metrics import umeyama_alignment

    est = np.stack([f.cam_to_world[:3, 3] for f in frames])
    sim = umeyama_alignment(est, small_scene.cam_to_world[:, :3, 3])
    pts, _ = frames[40].points_world(min_conf=0.5)
    pts_gt_frame = sim.scale * pts @ sim.rotation.T + sim.translation
    r = small_scene.render(40)
    c2w = small_scene.cam_to_world[40]
    cam = (pts_gt_frame - c2w[:3, 3]) @ c2w[:3, :3]
    k = small_scene.intrinsics
    u = np.round(k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]).astype(int)
    v = np.round(k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]).astype(int)
    inside = (u >= 0) & (u < 112) & (v >= 0) & (v < 64) & (cam[:, 2] > 0)
    rel = np.abs(cam[inside, 2] / r.depth[v[inside], u[inside]] - 1)
    assert np.median(rel) < 0.05


def test_layer_alignment_makes_objects_consistent(small_scene):
    """Full LASER lowers the spread of objects' depth scale (vs the room) compared with Sim(3)."""
    full = evaluate_frames(run(small_scene, overlap_estimate="later"), small_scene)
    sim3 = evaluate_frames(
        run(small_scene, overlap_estimate="later", layer_alignment=False), small_scene
    )
    assert full["consistency"] < 0.9 * sim3["consistency"], (full, sim3)
    assert full["abs_rel"] < sim3["abs_rel"], (full, sim3)


def test_stream_shorter_than_a_window_and_one_frame():
    scene = make_scene("lateral", num_frames=7, height=48, width=80)
    frames = run(scene)
    assert [f.index for f in frames] == list(range(7))
    one = run(make_scene("lateral", num_frames=1, height=48, width=80))
    assert len(one) == 1 and np.allclose(one[0].cam_to_world, np.eye(4), atol=1e-5)


def test_later_mode_emits_every_frame_once(small_scene):
    frames = run(small_scene, overlap_estimate="later", window_size=8, overlap=3)
    assert [f.index for f in frames] == list(range(small_scene.num_frames))


class _Recorder:
    def __init__(self):
        self.frames, self.windows, self.closed = [], [], False

    def on_frame(self, f):
        self.frames.append(f.index)

    def on_window(self, s):
        self.windows.append(s)

    def close(self):
        self.closed = True


class _Broken:
    closed = False

    def on_frame(self, f):
        if f.index == 10:
            raise RuntimeError("viewer went away")

    def close(self):
        self.closed = True


def test_failing_sink_is_detached_and_others_continue(small_scene):
    good, bad = _Recorder(), _Broken()
    model = make_model(scene=small_scene)
    with pytest.warns(RuntimeWarning, match="detached"):
        out = StreamingReconstructor(model, LaserConfig()).reconstruct(
            small_scene.frames(), [bad, good]
        )
    assert good.frames == list(range(small_scene.num_frames)) == [f.index for f in out]
    assert good.closed and bad.closed
    assert len(good.windows) == 5 and all(np.isfinite(w.scale) for w in good.windows)


def test_bare_callable_model():
    """The engine only needs a callable returning WindowPrediction (DESIGN.md §3)."""
    h, w = 24, 32

    def flat_wall(images):
        n = images.shape[0]
        pose = torch.eye(4).repeat(n, 1, 1)
        pose[:, 0, 3] = torch.arange(n) * 0.1
        k = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]]).repeat(n, 1, 1)
        return WindowPrediction(torch.full((n, h, w), 2.0), torch.ones(n, h, w), pose, k)

    imgs = [np.full((h, w, 3), i, np.uint8) for i in range(30)]
    frames = StreamingReconstructor(flat_wall, LaserConfig(window_size=8, overlap=2)).reconstruct(
        imgs
    )
    assert len(frames) == 30
    xs = np.array([f.cam_to_world[0, 3] for f in frames])
    np.testing.assert_allclose(xs, np.arange(30) * 0.1, atol=1e-4)  # windows chain without drift
    assert all(np.allclose(f.depth, 2.0, rtol=1e-4) for f in frames)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_long_stream_memory_is_flat():
    """1,200 frames streamed; nothing per-frame accumulates (RSS after 300 vs after 1,200)."""
    scene = make_scene("loop", num_frames=1200, height=24, width=40)
    model = make_model(scene=scene)
    rec = StreamingReconstructor(model, LaserConfig(window_size=10, overlap=3))
    marks = {}
    for f in rec.run(scene.frames()):
        if f.index in (300, 1199):
            marks[f.index] = _rss_mb()
    assert f.index == 1199
    assert marks[1199] - marks[300] < 40, marks
