"""The fast π³ path's intrinsics against the fp32 reference on a planted, well-conditioned network
(issue 23, item 6).

π³'s intrinsics are an L1 focal fit to its point map. With random weights the fit is ~0 px and of
either sign, so bf16 rounding can push a frame onto the 60-degree fallback and the window's
intrinsics error jumps to ~0.4 although depth agrees to 1e-3 (``benchmarks/fast_intrinsics.py``
measures it; the upstream-style autocast path jumps in the same way). These tests use a network
whose point head outputs a known pinhole's rays, jittered per pixel by the random head's own
output (:class:`PinholeHead`), so the trunk's numerics still reach the points: there the fast
path's intrinsics must match fp32 within its depth error, in the first window (no cached tokens)
and the second (overlap tokens from the cache).
"""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from laser_plugin.models import pi3
from laser_plugin.models.convert import focal_fit
from laser_plugin.models.fast import accelerate

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fast_intrinsics.py"
_spec = importlib.util.spec_from_file_location("fast_intrinsics_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(_PATH.parent))  # the benchmark imports speed.py beside it
_spec.loader.exec_module(bench)

SIZE, WINDOW, OVERLAP = (56, 98), 6, 2
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def planted():
    """(reference model with the planted head, the two windows, their fp32 outputs)."""
    windows = bench.make_windows(SIZE, WINDOW, OVERLAP)
    ref = pi3.make_model(size="tiny", random_init=True, seed=3)
    bench.plant_pinhole(ref.net, bench.pinhole_focal(SIZE))
    return ref, windows, bench.run_ref(ref, windows, DEVICE)


def _fast(ref, **opts):
    return accelerate(pi3.Pi3Model(copy.deepcopy(ref.net), DEVICE, torch.float32), **opts)


def test_planted_reference_recovers_the_planted_focal_lengths(planted):
    _, _, refs = planted
    fx, fy = bench.pinhole_focal(SIZE)
    for pred, _pts in refs:
        k = pred.intrinsics
        # the per-pixel jitter exp(r) biases the weighted median a little; a swapped or
        # degenerate fit would be off by 3% (fy/fx) or by far more
        torch.testing.assert_close(k[:, 0, 0], torch.full_like(k[:, 0, 0], fx), rtol=0.1, atol=0)
        torch.testing.assert_close(k[:, 1, 1], torch.full_like(k[:, 1, 1], fy), rtol=0.1, atol=0)
        assert (k[:, 1, 1] > k[:, 0, 0]).all()


@pytest.mark.parametrize(
    "opts",
    [
        {"cache_encoder": False},
        {"cache_encoder": True},
        {"cache_encoder": True, "graph_heads": True},
    ],
    ids=["no_cache", "cache", "cache_graph_heads"],
)
def test_bf16_fast_path_intrinsics_within_depth_error_on_the_planted_network(planted, opts):
    ref, windows, refs = planted
    fast = _fast(ref, dtype=torch.bfloat16, **opts)
    outs = bench.run_fast(fast, windows)
    if opts["cache_encoder"]:
        assert fast.cache.hits == OVERLAP  # window 1 reused window 0's overlap tokens
    for k, ((r, r_pts), (o, o_pts)) in enumerate(zip(refs, outs, strict=True)):
        e = bench.compare(r, r_pts, o, o_pts)
        assert 0 < e["depth"] < 3e-2, (k, e)  # it really ran in bf16
        assert e["fallback_flips"] == 0 and e["fallback_frames_ref"] == 0, (k, e)
        assert e["intrinsics"] <= e["depth"], (k, e)


def test_fp32_fast_path_intrinsics_equal_the_reference_in_both_windows(planted):
    """The first window (all tokens new) and the second (overlap tokens cached) take the same
    function as the reference: the fast path's only intrinsics difference is rounding."""
    ref, windows, refs = planted
    outs = bench.run_fast(_fast(ref, dtype=torch.float32), windows)
    for (r, _), (o, _) in zip(refs, outs, strict=True):
        torch.testing.assert_close(o.intrinsics, r.intrinsics, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o.depth, r.depth, rtol=1e-5, atol=1e-6)


def test_focal_fit_is_well_conditioned_on_the_planted_points(planted):
    """A relative perturbation of bf16 size (4e-3) of every coordinate moves no planted frame's
    focal length by more than about as much (no amplification; the random network's fits move by
    10 to 10^5 times the perturbation, ``benchmarks/fast_intrinsics.py``)."""
    _, _, refs = planted
    for pred, pts in refs:
        s = bench.fit_sensitivity(pts, pred.conf, 4e-3)
        assert s["focal_rel_max"] < 2 * 4e-3, s
        assert s["K_rel_median"] < 2e-3, s


def test_random_network_focal_fit_is_near_zero():
    """Why random weights are no measure of the intrinsics' precision: the random head's x/z is
    unrelated to the pixel column, so the fitted focal is a few pixels of either sign (the
    fallback, (W/2)/tan(30°), is 85 px here) and a small perturbation can cross zero."""
    windows = bench.make_windows(SIZE, WINDOW, OVERLAP)
    ref = pi3.make_model(size="tiny", random_init=True, seed=3)
    (pred, pts), _ = bench.run_ref(ref, windows, DEVICE)
    fx, fy, _ = focal_fit(pts, pred.conf)
    fallback = (SIZE[1] / 2) / torch.tan(torch.tensor(torch.pi / 6))
    assert (torch.stack([fx, fy]).abs() < 0.2 * fallback).float().mean() > 0.8
