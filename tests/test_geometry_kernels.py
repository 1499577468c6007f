"""The fast alignment kernels against plain, obviously correct references (loops, pooling,
exact ranks, explicit unprojection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laser_plugin.geometry.camera import (
    invert_rigid,
    project_points,
    transform_points,
    unproject_depth,
)
from laser_plugin.geometry.layers import fill_boundaries, relabel, strided_depth
from laser_plugin.geometry.lsa import _pair_codes, _pair_iou, warp_labels
from laser_plugin.geometry.robust import segment_median
from laser_plugin.prepare import rank_normalise


def test_strided_depth_matches_pooling_reference():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 13, 17, generator=g) + 0.5
    depth[0, 2, 3] = 0.0
    depth[1, 5, 5] = float("nan")
    depth[2, 7, 8] = float("inf")
    depth[2, 0, 0] = -1.0
    for stride in (1, 2, 3):
        got = strided_depth(depth, stride)
        ok = (torch.isfinite(depth) & (depth > 0)).double()
        d = torch.where(ok > 0, depth.double(), torch.zeros_like(depth.double()))
        h, w = 13 // stride * stride, 17 // stride * stride
        num = F.avg_pool2d(d[:, None, :h, :w], stride)[:, 0]
        cnt = F.avg_pool2d(ok[:, None, :h, :w], stride)[:, 0]
        ref = torch.where(cnt > 0.999, num / cnt.clamp_min(1e-12), torch.zeros_like(num))
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
        assert (got == 0).sum() == (ref == 0).sum()


def _fill_reference(
    labels: np.ndarray, depth: np.ndarray, max_step: float, passes: int
) -> np.ndarray:
    """Pixel loop: an unlabeled valid pixel takes the closest-in-log-depth labelled 4-neighbour
    (up, down, left, right on ties) if within max_step; each pass reads the previous pass."""
    lab = labels.copy()
    ld = np.log(np.maximum(depth, 1e-12))
    n, h, w = lab.shape
    for _ in range(passes):
        new = lab.copy()
        for f in range(n):
            for y in range(h):
                for x in range(w):
                    if lab[f, y, x] >= 0 or depth[f, y, x] <= 0:
                        continue
                    best, best_lab = np.inf, -1
                    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and lab[f, yy, xx] >= 0:
                            diff = abs(ld[f, yy, xx] - ld[f, y, x])
                            if diff < best:
                                best, best_lab = diff, lab[f, yy, xx]
                    if best < max_step:
                        new[f, y, x] = best_lab
        lab = new
    return lab


def test_fill_boundaries_matches_pixel_loop():
    rng = np.random.default_rng(1)
    depth = np.exp(rng.normal(0, 0.03, (2, 11, 14))).astype(np.float32)
    depth[0, 3:6, 4:9] *= 1.5  # a nearer object: its border must not bleed into the floor
    depth[1, 0, :] = 0.0
    labels = rng.integers(-1, 3, (2, 11, 14))
    labels[rng.random((2, 11, 14)) < 0.3] = -1
    for passes in (1, 2, 3):
        got = fill_boundaries(torch.from_numpy(labels), torch.from_numpy(depth), 0.05, passes)
        np.testing.assert_array_equal(got.numpy(), _fill_reference(labels, depth, 0.05, passes))


def test_relabel_orders_by_size_and_drops_small():
    roots = torch.full((2, 4, 5), -1, dtype=torch.long)
    roots[0, 0, :3] = 0  # 3 px
    roots[0, 1:, :] = 5  # 15 px
    roots[0, 0, 4] = 4  # 1 px: dropped
    roots[1, :2, :2] = 0  # 4 px, tie with the next: the smaller root first
    roots[1, 2:, 3:] = 13  # 4 px
    labels, num = relabel(roots, max_layers=8, min_pixels=2)
    assert num.tolist() == [2, 2]
    assert (labels[0][roots[0] == 5] == 0).all() and (labels[0][roots[0] == 0] == 1).all()
    assert labels[0, 0, 4] == -1 and labels[0, 0, 3] == -1
    assert (labels[1][roots[1] == 0] == 0).all() and (labels[1][roots[1] == 13] == 1).all()
    labels, num = relabel(roots, max_layers=1, min_pixels=1)
    assert num.tolist() == [1, 1] and labels.max() == 0


def test_pair_iou_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    m = 4
    a = torch.randint(-1, m, (3, 50), generator=g)
    b = torch.randint(-1, m, (3, 50), generator=g)
    inter, iou = _pair_iou(_pair_codes(a, b, m), 3, m)
    for f in range(3):
        for i in range(m):
            for j in range(m):
                sa, sb = a[f] == i, b[f] == j
                n_int = int((sa & sb).sum())
                n_uni = int((sa | sb).sum())
                assert inter[f, i, j] == n_int
                assert float(iou[f, i, j]) == pytest.approx(n_int / n_uni if n_uni else 0.0)


def test_warp_labels_matches_explicit_unprojection():
    g = torch.Generator().manual_seed(3)
    n, h, w = 3, 12, 16
    depth = 2.0 + torch.rand(n, h, w, generator=g)
    labels = torch.randint(-1, 3, (n, h, w), generator=g)
    k = torch.tensor([[14.0, 0, 7.5], [0, 14.0, 5.5], [0, 0, 1]]).expand(n, 3, 3)
    poses = torch.eye(4).repeat(n, 1, 1)
    poses[1, :3, 3] = torch.tensor([0.1, 0.0, 0.05])
    c, s = np.cos(0.05), np.sin(0.05)
    poses[2, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)
    got = warp_labels(labels, depth, poses, k)
    # reference: unproject, move to the next camera, project, round, write in pixel order
    ref = torch.full((n - 1, h, w), -1, dtype=labels.dtype)
    for t in range(n - 1):
        pts = unproject_depth(depth[t].double(), k[t].double()).reshape(-1, 3)
        rel = invert_rigid(poses[t + 1].double()) @ poses[t].double()
        uv, z = project_points(transform_points(rel, pts), k[t + 1].double())
        u, v = uv[:, 0].round().long(), uv[:, 1].round().long()
        src = labels[t].reshape(-1)
        for p in range(h * w):
            if src[p] >= 0 and z[p] > 0 and 0 <= u[p] < w and 0 <= v[p] < h:
                ref[t, v[p], u[p]] = src[p]
    # Several pixels may land on one target (any of them may win); compare where one source lands.
    hits = torch.zeros(n - 1, h * w, dtype=torch.long)
    for t in range(n - 1):
        pts = unproject_depth(depth[t].double(), k[t].double()).reshape(-1, 3)
        rel = invert_rigid(poses[t + 1].double()) @ poses[t].double()
        uv, z = project_points(transform_points(rel, pts), k[t + 1].double())
        u, v = uv[:, 0].round().long(), uv[:, 1].round().long()
        ok = (labels[t].reshape(-1) >= 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        hits[t].index_add_(0, (v * w + u)[ok], torch.ones(int(ok.sum()), dtype=torch.long))
    single = hits.view(n - 1, h, w) <= 1
    assert single.float().mean() > 0.5
    assert torch.equal(got[single], ref[single])


def test_rank_normalise_is_close_to_exact_ranks():
    g = torch.Generator().manual_seed(4)
    conf = torch.exp(torch.randn(4, 60, 80, generator=g) * 2)  # spans orders of magnitude
    valid = torch.rand(4, 60, 80, generator=g) > 0.2
    got = rank_normalise(conf, valid, samples=4096)
    flat = conf[valid]
    exact = (torch.searchsorted(flat.sort().values, flat, right=True).double() - 0.5) / flat.numel()
    assert (got[~valid] == 0).all()
    assert (got[valid].double() - exact).abs().max() < 0.03
    # order is kept up to the histogram's resolution
    a, b = flat[:-1], flat[1:]
    ra, rb = got[valid][:-1], got[valid][1:]
    assert ((a < b) <= (ra <= rb)).all()


def test_segment_median_single_and_many_groups_agree_with_torch():
    g = torch.Generator().manual_seed(5)
    vals = torch.randn(1001, generator=g, dtype=torch.float64)
    assert segment_median(vals, torch.zeros(1001, dtype=torch.long), 1)[0] == vals.median()
    grp = torch.randint(0, 5, (1001,), generator=g)
    med = segment_median(vals * 1e6, grp, 6)
    for k in range(5):
        assert med[k] == (vals * 1e6)[grp == k].median()
    assert torch.isnan(med[5])


def test_mul_upsampled_matches_explicit_upsampling():
    from laser_plugin.geometry.layers import mul_upsampled_, upsample_labels

    g = torch.Generator().manual_seed(6)
    scale = torch.rand(3, 5, 7, generator=g) + 0.5
    for size in ((10, 14), (11, 15)):  # exact multiple, and a border to replicate
        target = torch.rand(3, *size, generator=g)
        ref = target * upsample_labels(scale, 2, *size)
        torch.testing.assert_close(mul_upsampled_(target.clone(), scale, 2), ref)
    base = torch.rand(4, 10, 14, generator=g)
    view = base.clone()
    mul_upsampled_(view[1:], scale, 2)  # in place through a view of the later frames
    torch.testing.assert_close(view[1:], base[1:] * upsample_labels(scale, 2, 10, 14))
    torch.testing.assert_close(view[0], base[0])
