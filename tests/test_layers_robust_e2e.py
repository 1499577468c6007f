"""Layer alignment end to end on noisy depth (issue 20): planted per-object scale errors are
undone at 1% per-pixel noise, and the one-line warning says when layer alignment is idle."""

import numpy as np
import pytest
import torch

from laser_plugin import LaserConfig, StreamingReconstructor, WindowPrediction
from laser_plugin.geometry.lsa import LayerAlignmentWatch, layer_summary
from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig, make_scene
from laser_plugin.models.synthetic.evaluate import evaluate_frames, layer_consistency
from laser_plugin.models.synthetic.scene import NUM_ROOM_IDS


class PlantedLayerErrors:
    """The synthetic backend at 1% per-pixel noise and 1% outliers, without its own layer errors;
    instead every object's depth is scaled by a factor planted per window (alternating between
    exp(+0.15) and exp(-0.15) for odd and even objects), so Sim(3) stitching keeps them and only
    layer alignment can undo them (relative to the first window, the reference)."""

    def __init__(self, scene):
        self.scene = scene
        self.inner = EmulatedModel(
            scene, EmulatorConfig(error_mode="none", pixel_noise=0.01, outliers=0.01)
        )
        self.windows = 0

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        idx = self.inner._indices(images)
        pred = self.inner.predict(idx)
        ids = np.stack([self.scene.render(i).object_id for i in idx])
        k = self.windows
        self.windows += 1
        if k:
            sign = np.where(np.arange(self.scene.objects.num_ids) % 2 == 0, 1.0, -1.0)
            log_s = 0.15 * sign * (1 if k % 2 else -1)
            log_s[:NUM_ROOM_IDS] = 0.0
            pred.depth = pred.depth * torch.from_numpy(np.exp(log_s)[ids].astype(np.float32))
        return pred


@pytest.fixture(scope="module")
def planted_runs():
    scene = make_scene("lateral", 50, 96, 168)
    images = list(scene.frames())
    out = {}
    for name, kw in {"sim3": dict(layer_alignment=False), "full": {}}.items():
        rec = StreamingReconstructor(PlantedLayerErrors(scene), LaserConfig(**kw))
        frames = rec.reconstruct(images)
        out[name] = (frames, list(rec.window_stats))
    return scene, out


def test_planted_layer_scales_are_recovered_at_1pct_noise(planted_runs):
    scene, runs = planted_runs
    spread = {
        k: layer_consistency([f.depth for f in fr], scene, [f.index for f in fr])
        for k, (fr, _) in runs.items()
    }
    # Sim(3) keeps the planted +-15% (a spread of 0.10 here); layer alignment removes a third
    # of it (0.067; objects that first appear in a window with an error keep it, by design). The
    # fixed-threshold segmentation labelled nothing at this noise and removed none (0.0999).
    assert spread["sim3"] > 0.08, spread
    assert spread["full"] < 0.75 * spread["sim3"], spread
    acc = {k: evaluate_frames(fr, scene) for k, (fr, _) in runs.items()}
    assert acc["full"]["abs_rel"] < acc["sim3"]["abs_rel"], acc
    stats = runs["full"][1]
    assert all(s.layer_coverage > 0.8 for s in stats)
    assert all(s.num_inter_edges > 0 for s in stats if s.window > 0)
    assert all(0.008 < s.depth_noise < 0.03 for s in stats)  # ~1.5x the planted 1%
    assert LayerAlignmentWatch().update(stats[0]) is None
    assert layer_summary(stats)["warning"] is None


class PureNoise:
    """A model whose depth is noise: no surface anywhere."""

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        n, _, h, w = images.shape
        g = torch.Generator().manual_seed(int(images.sum() * 1000) % 2**31)
        eye = torch.eye(4).repeat(n, 1, 1)
        eye[:, 0, 3] = torch.arange(n) * 0.05
        k = torch.tensor([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]]).repeat(n, 1, 1)
        return WindowPrediction(
            depth=torch.rand(n, h, w, generator=g) * 9 + 1,
            conf=torch.ones(n, h, w),
            cam_to_world=eye,
            intrinsics=k,
        )


def _watch(stats, enabled=True):
    watch = LayerAlignmentWatch(enabled)
    return [m for m in (watch.update(s) for s in stats) if m]


def test_idle_warning_fires_once_on_pure_noise_depth():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(35)]
    rec = StreamingReconstructor(PureNoise(), LaserConfig())
    rec.reconstruct(images)
    stats = list(rec.window_stats)
    assert max(s.layer_coverage for s in stats) < 0.3
    messages = _watch(stats)
    assert len(messages) == 1 and "effectively off" in messages[0]
    assert _watch(stats, enabled=False) == []  # switched off on purpose: nothing to say


def test_idle_warning_stays_quiet_on_the_demo():
    scene = make_scene("demo", 50, 64, 112)
    rec = StreamingReconstructor(EmulatedModel(scene), LaserConfig())
    rec.reconstruct(list(scene.frames()))
    stats = list(rec.window_stats)
    assert _watch(stats) == []
    assert min(s.layer_coverage for s in stats) > 0.8


def test_watch_rules_on_records():
    """The rules on summary.json-style records: low coverage at once; inter-window edges only
    after three edgeless windows in a row (window 0 has none to form)."""
    rec = dict(layer_coverage=0.9, num_inter_edges=0, num_layers=5.0)
    edgeless = [dict(rec, window=k) for k in range(4)]
    assert _watch(edgeless[:3]) == []  # windows 1, 2: only two in a row
    assert len(_watch(edgeless)) == 1  # windows 1-3
    linked = [dict(rec, window=k, num_inter_edges=int(k % 3 != 0)) for k in range(8)]
    assert _watch(linked) == []
    low = [dict(rec, window=0, num_inter_edges=0, layer_coverage=0.2, depth_noise=0.06)]
    (msg,) = _watch(low)
    assert "20%" in msg and "4.0% per pixel" in msg
    assert layer_summary(edgeless)["windows_without_inter_edges"] == 3


def test_cli_sink_prints_one_line(capsys):
    from laser_plugin.cli.run import LayerWatchSink

    sink = LayerWatchSink(True)
    for k in range(6):
        sink.on_window(dict(window=k, layer_coverage=0.1, num_inter_edges=0))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: layer alignment is effectively off")


def test_deep_hall_depth_is_no_worse_than_sim3_at_1pct_noise():
    """The noise sweep's hardest level (far wall ~30x the nearest object, small objects, 1%
    pixel noise and 1% outliers, the emulator's per-window object errors): what ``laser run``
    runs corrects the objects' scales against the ground truth without making the depth as a
    whole worse than plain Sim(3) stitching. With the paper's fusion rule (an object's first
    estimate imposed for good) AbsRel was above Sim(3)'s here."""
    scene = make_scene("deep", 120, 96, 168)
    model = EmulatedModel(scene, EmulatorConfig(pixel_noise=0.01, outliers=0.01))
    images = list(scene.frames())
    got = {
        name: evaluate_frames(StreamingReconstructor(model, LaserConfig(**kw)).reconstruct(images), scene)
        for name, kw in {"default": {}, "sim3": dict(layer_alignment=False)}.items()
    }  # fmt: skip
    default, sim3 = got["default"], got["sim3"]
    assert default["abs_rel"] <= sim3["abs_rel"], (default["abs_rel"], sim3["abs_rel"])
    assert default["consistency_objects_0.5pct"] <= 0.5 * sim3["consistency_objects_0.5pct"]
    assert default["ate"] <= 1.05 * sim3["ate"]
