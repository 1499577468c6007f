"""Noise-aware depth layers (issue 20), against planted truth: labels that do not depend on the
noise level, objects kept apart from the floor they stand on, pure noise left unlabelled, and
the GPU-style paths equal to the CPU ones."""

import numpy as np
import pytest
import torch

from laser_plugin.config import LaserConfig
from laser_plugin.geometry.layers import (
    _fill_boundaries_dense,
    fill_boundaries,
    robust_cut_mask,
    segment_depth_layers,
)
from laser_plugin.models.synthetic import make_scene

# The engine's settings (LaserConfig): crease, depth_jump, max_layers, min_layer_fraction.
_CFG = LaserConfig()
SEG = dict(
    crease=_CFG.crease,
    max_step=_CFG.depth_jump,
    max_layers=_CFG.max_layers,
    min_fraction=_CFG.min_layer_fraction,
)


def _noisy(depth: np.ndarray, sigma: float, seed: int, outliers: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    d = depth * np.exp(rng.normal(0.0, sigma, depth.shape))
    if outliers:
        hit = rng.random(depth.shape) < outliers
        d = np.where(hit, d * np.exp(rng.uniform(-1.1, 1.1, depth.shape)), d)
    return torch.from_numpy(d.astype(np.float32))


def _best_iou(ref: np.ndarray, lab: np.ndarray, min_pixels: int) -> tuple[list[float], list[int]]:
    """For each reference layer of at least ``min_pixels``: the IoU with the label that covers
    most of it (0 if none), and its area."""
    ious, areas = [], []
    for lbl in np.unique(ref[ref >= 0]):
        m = ref == lbl
        if m.sum() < min_pixels:
            continue
        cand = lab[m]
        cand = cand[cand >= 0]
        if cand.size == 0:
            ious.append(0.0)
        else:
            mb = lab == np.bincount(cand).argmax()
            ious.append(float((m & mb).sum() / (m | mb).sum()))
        areas.append(int(m.sum()))
    return ious, areas


@pytest.fixture(scope="module")
def frames():
    out = []
    # 168x280: the size at which issue 20 measured the cliff (segmentation at stride 1).
    for name, idx in [("lateral", [0, 40]), ("demo", [60, 100]), ("forward", [50])]:
        scene = make_scene(name, height=168, width=280)
        out += [scene.render(i).depth for i in idx]
    return np.stack(out)


@pytest.mark.parametrize("sigma", [0.005, 0.01, 0.02])
def test_labels_do_not_depend_on_the_noise(frames, sigma):
    """Each noise-free layer (>= 0.5% of the frame) is found again at per-pixel noise sigma:
    area-weighted mean IoU >= 0.8 (issue 20), and the plain mean over layers >= 0.7 (small
    layers are the hardest); pixels in a layer stay above 90%. The old fixed-threshold test
    labelled nothing at 1% noise."""
    ref = segment_depth_layers(torch.from_numpy(frames), 1, **SEG).labels.numpy()
    noisy = segment_depth_layers(_noisy(frames, sigma, seed=7), 1, **SEG)
    lab = noisy.labels.numpy()
    ious, areas = [], []
    for r, lb in zip(ref, lab, strict=True):
        i, a = _best_iou(r, lb, int(0.005 * r.size))
        ious += i
        areas += a
    weighted = float(np.average(ious, weights=areas))
    assert weighted >= 0.8, (sigma, weighted)
    assert float(np.mean(ious)) >= 0.7, (sigma, float(np.mean(ious)))
    assert float(noisy.coverage.min()) > 0.9
    old = segment_depth_layers(_noisy(frames, 0.01, seed=7), 1, noise_k=0, **SEG)
    assert float(old.coverage.mean()) < 0.3  # the cliff this fixes


def test_noise_level_is_measured(frames):
    """The measured level follows the planted per-pixel noise (about 1.5x it) and is ~0 on
    clean depth, also with 5% outliers (the median filter and the robust statistic)."""
    d0 = torch.from_numpy(frames)
    assert float(segment_depth_layers(d0, 1, **SEG).noise.max()) < 0.002
    for sigma in (0.005, 0.01, 0.02):
        lv = segment_depth_layers(_noisy(frames, sigma, 3), 1, **SEG).noise
        assert ((lv > 1.0 * sigma) & (lv < 2.2 * sigma)).all(), (sigma, lv)
    lv = segment_depth_layers(_noisy(frames, 0.01, 3, outliers=0.05), 1, **SEG).noise
    assert ((lv > 1.0 * 0.01) & (lv < 2.2 * 0.01)).all(), lv


def _box_on_floor(h=120, w=200, f=150.0, cam_h=1.5, z_box=4.0, box_h=1.2):
    """A camera looking along a floor (horizon at row h/3) with a box standing on it: the box's
    front face (depth z_box) meets the floor in a crease, with no depth step at the contact, the
    case a depth-band clustering or a depth-range threshold merges. Returns depth, box mask."""
    v = np.arange(h, dtype=np.float64)[:, None].repeat(w, 1)
    u = np.arange(w, dtype=np.float64)[None].repeat(h, 0)
    horizon = h / 3
    below = np.maximum(v - horizon, 1e-3)
    floor = np.where(v > horizon + 1, f * cam_h / below, 60.0)  # a far wall above the horizon
    contact = horizon + f * cam_h / z_box  # the row where the floor is at the box's depth
    top = contact - f * box_h / z_box
    box = (u > 0.35 * w) & (u < 0.65 * w) & (v >= top) & (v <= contact)
    return np.where(box, z_box, np.minimum(floor, 60.0)), box


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.02])
def test_object_on_a_floor_is_cut_from_it(sigma):
    depth, box = _box_on_floor()
    d = _noisy(depth[None], sigma, seed=1) if sigma else torch.from_numpy(depth[None])
    lab = segment_depth_layers(d, 1, **SEG).labels[0].numpy()
    # The box's main label is the box's (pure), and covers most of it.
    main = np.bincount(lab[box][lab[box] >= 0]).argmax()
    assert (box[lab == main]).mean() > 0.95
    assert (lab[box] == main).mean() > 0.8
    # The floor just below the contact is not in the box's layer.
    floor_near = ~box & (np.arange(depth.shape[0])[:, None] > 80)
    assert (lab[floor_near] == main).mean() < 0.02


def test_deep_hall_keeps_small_objects_apart():
    """A 90 m hall: the far wall is 30-60x the nearest object; objects of 0.5-2% of the frame
    must not fold into the floor or the walls (no merging relative to the depth range)."""
    from laser_plugin.models.synthetic.scene import NUM_ROOM_IDS

    scene = make_scene("deep", 60, 128, 224)
    kept = []
    for i in (0, 20, 59):
        r = scene.render(i)
        lab = segment_depth_layers(_noisy(r.depth[None], 0.01, i), 1, **SEG).labels[0].numpy()
        assert r.depth.max() / r.depth[r.object_id >= NUM_ROOM_IDS].min() > 30
        for o in np.unique(r.object_id[r.object_id >= NUM_ROOM_IDS]):
            m = r.object_id == o
            if m.sum() < 0.005 * m.size:
                continue
            pure = [
                lb
                for lb in np.unique(lab[m])
                if lb >= 0 and (r.object_id[lab == lb] == o).mean() > 0.85
            ]
            kept.append(float(np.isin(lab[m], pure).mean()))
    assert len(kept) >= 8
    assert np.median(kept) > 0.6, kept


def test_pure_noise_depth_is_not_segmented():
    """Depth with no structure at all: the thresholds stop following the noise (MAX_NOISE), so
    it is left mostly unlabelled (and reported) instead of becoming one big layer."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(3, 96, 160, generator=g) * 9 + 1
    layers = segment_depth_layers(d, 1, **SEG)
    assert float(layers.coverage.max()) < 0.1


def test_dense_fill_equals_the_sparse_one():
    """The GPU's fill (every pixel each pass) gives the CPU's (candidates only) result."""
    rng = np.random.default_rng(4)
    depth = np.exp(rng.normal(0, 0.03, (2, 23, 31))).astype(np.float32)
    depth[0, 5:12, 6:20] *= 1.5
    depth[1, 0, :] = 0.0
    labels = rng.integers(-1, 4, (2, 23, 31))
    labels[rng.random(labels.shape) < 0.4] = -1
    tol = torch.tensor([0.05, 0.02])
    for passes in (1, 3):
        a = fill_boundaries(torch.from_numpy(labels), torch.from_numpy(depth), tol, passes)
        b = _fill_boundaries_dense(torch.from_numpy(labels), torch.from_numpy(depth), tol, passes)
        assert torch.equal(a, b)


def test_torch_components_give_the_scipy_labels(frames):
    d = _noisy(frames[:2], 0.01, 5)
    a = segment_depth_layers(d, 1, backend="scipy", **SEG)
    b = segment_depth_layers(d, 1, backend="torch", **SEG)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.num_layers, b.num_layers)


def test_confidence_chooses_the_pixels_that_measure_noise(frames):
    """Half the frame 4x noisier and flagged by the model as less confident: with the
    confidence, the noise is measured on the confident half (the cleaner surfaces keep their
    detail); without it, on everything."""
    d = frames[:2]
    rng = np.random.default_rng(0)
    sig = np.where(np.arange(d.shape[2])[None, None] < d.shape[2] // 2, 0.02, 0.005)
    noisy = torch.from_numpy((d * np.exp(rng.normal(0, 1, d.shape) * sig)).astype(np.float32))
    conf = torch.from_numpy(np.broadcast_to(1.0 - sig * 10, d.shape).astype(np.float32).copy())
    with_conf = robust_cut_mask(noisy, 0.012, 0.04, conf=conf).noise
    without = robust_cut_mask(noisy, 0.012, 0.04).noise
    assert (with_conf < 0.7 * without).all(), (with_conf, without)
    assert (with_conf < 2.2 * 0.005).all()


def _small_objects_before_a_wall(h=96, w=168, size=10, flying=0.5, sigma=0.01, seed=2):
    """Small square objects (``size`` pixels across, 0.6% of the frame) at 5 m before a wall at
    10 m, per-pixel noise ``sigma``, and flying pixels: each pixel within a pixel of an occlusion
    edge mixed between the nearest and farthest depth around it with probability ``flying`` (as
    networks smear silhouettes; the emulator's model). Returns depth (1, h, w), object masks."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    depth = np.full((h, w), 10.0)
    masks = []
    for y0 in (15, 55):
        for x0 in (20, 60, 100, 140):
            m = np.zeros((h, w), dtype=bool)
            m[y0 : y0 + size, x0 : x0 + size] = True
            depth[m] = 5.0
            masks.append(m)
    d = depth * np.exp(rng.normal(0.0, sigma, depth.shape))
    near = ndimage.minimum_filter(d, size=3, mode="nearest")
    far = ndimage.maximum_filter(d, size=3, mode="nearest")
    edge = np.log(ndimage.maximum_filter(depth, 3) / ndimage.minimum_filter(depth, 3)) > 0.1
    hit = edge & (rng.random(depth.shape) < flying)
    d = np.where(hit, near + rng.random(depth.shape) * (far - near), d)
    return torch.from_numpy(d[None].astype(np.float32)), masks


def _kept(lab: np.ndarray, masks: list[np.ndarray]) -> int:
    """How many objects keep a pure layer (>= 95% theirs) over >= 80% of their inside (the
    object less its one-pixel rim, where the flying pixels are)."""
    from scipy import ndimage

    kept = 0
    for m in masks:
        inner = ndimage.binary_erosion(m)
        li = lab[inner]
        if not (li >= 0).any():
            continue
        main = np.bincount(li[li >= 0]).argmax()
        kept += bool((m[lab == main]).mean() > 0.95 and (li == main).mean() > 0.8)
    return kept


@pytest.mark.parametrize("flying", [0.0, 0.5])
def test_small_objects_survive_flying_pixels(flying):
    """Objects of 10x10 pixels (0.6% of the frame) before a wall at 1% noise, with and without
    flying pixels: most keep a pure layer. The coarse crease test whose arms crossed their
    silhouettes cut them to pieces (its answer beside a step is a plateau whose noise peaks it
    cut at random): on issue 20's sweep, small objects went unlabelled in whole windows and
    kept their window's scale error. Without that guard, at most 2 of the 8 were kept."""
    d, masks = _small_objects_before_a_wall(flying=flying)
    lab = segment_depth_layers(d, 1, **SEG).labels[0].numpy()
    assert _kept(lab, masks) >= 6, flying
    old = robust_cut_mask(d, SEG["crease"], SEG["max_step"], step_free_coarse=False)
    new = robust_cut_mask(d, SEG["crease"], SEG["max_step"])
    # Only the coarse test changed: the fine one and the noise level are the same.
    assert torch.equal(old.noise, new.noise)
    assert int(new.member.sum()) > int(old.member.sum())
