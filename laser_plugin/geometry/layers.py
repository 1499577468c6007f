"""Depth-layer segmentation: cut each depth map into connected surfaces of consistent depth.

Cuts come from the second difference of inverse depth. On a plane, inverse depth is affine in the
pixel coordinates, so its second difference is zero however steeply the plane recedes; it is
large at an occlusion boundary (a depth jump) and at a crease where two surfaces meet (an object
standing on a floor). So a box on a floor, or a person in front of a wall, becomes its own layer
even in a deep scene, which a depth-band clustering or a threshold relative to the depth range
would merge (DESIGN.md §4). The rest is connected components and tidying.

Real predicted depth is noisy (per-pixel noise, outliers, flying pixels), and a per-pixel second
difference with a fixed threshold stops working at about 0.5% noise: nearly every pixel fails
the test and the pieces left are too small to keep (issue 20). :func:`robust_cut_mask` makes the
cuts noise-aware: the inverse depth is first median-filtered (outliers and flying pixels go,
steps stay), creases are tested at two scales (a second difference over a few pixels of
box-smoothed inverse depth: a crease's response grows with the step, the noise's does not), and
each frame's thresholds are the larger of the fixed relative ones and a multiple of that frame's
own noise, measured robustly (median absolute value of the same second differences: most pixels
lie on smooth surfaces). With the model's confidence, the smoothing is a confidence-weighted
(normalised) average, so pixels the model itself distrusts count less.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from laser_plugin.geometry.robust import group_counts


class Layers(NamedTuple):
    labels: Tensor
    """(N, h, w) int64 layer label per pixel on the strided grid, -1 = no layer."""
    num_layers: Tensor
    """(N,) layers per frame; labels of frame i are in [0, num_layers[i])."""
    depth: Tensor
    """(N, h, w) the strided depth the labels refer to (0 = invalid)."""
    stride: int
    noise: Tensor | None = None
    """(N,) each frame's robust depth-noise level as the cut test measured it (None: the plain
    test, which measures none)."""
    coverage: Tensor | None = None
    """(N,) fraction of the grid's pixels that have a layer."""


def strided_depth(depth: Tensor, stride: int) -> Tensor:
    """Average valid depths over stride x stride blocks: (N, H, W) -> (N, H//s, W//s), 0 invalid.

    A block is valid only when all its pixels are (partial blocks straddle boundaries). Sums and
    minima are taken over the block's rows first (whole contiguous rows at a time), then over its
    columns on the already s-times smaller map: about 3x faster than pooling the 2-D blocks.
    """
    if stride == 1:
        return torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
    h, w = depth.shape[-2] // stride, depth.shape[-1] // stride
    d = depth[:, : h * stride, : w * stride]
    rows_sum = d[:, 0::stride].clone()
    rows_min = rows_sum.clone()
    for dy in range(1, stride):
        part = d[:, dy::stride]
        rows_sum.add_(part)
        torch.minimum(rows_min, part, out=rows_min)
    total = rows_sum[:, :, 0::stride].clone()
    lowest = rows_min[:, :, 0::stride].clone()
    for dx in range(1, stride):
        total.add_(rows_sum[:, :, dx::stride])
        torch.minimum(lowest, rows_min[:, :, dx::stride], out=lowest)
    mean = total.div_(stride * stride)
    # NaN fails ``> 0`` (minimum propagates it); an Inf makes the mean non-finite.
    return mean.masked_fill_(~((lowest > 0) & torch.isfinite(mean)), 0.0)


def cut_mask(depth: Tensor, crease: float, max_step: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where surfaces end, on (N, h, w) depth (0 = invalid).

    Returns (member (N,h,w), conn_right (N,h,w-1), conn_down (N,h-1,w)): a pixel is a member when
    its depth is valid and the relative second difference of inverse depth is below ``crease`` in
    both directions; two neighbours connect when both are members and their relative depth step
    is below ``max_step``.
    """
    valid = depth > 0
    q = torch.where(valid, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    # Second differences exist away from the border; a border pixel takes its inner neighbour's
    # (so a plane stays uncut there, and a crease reaching the border still cuts).
    d2x = torch.zeros_like(q)
    d2y = torch.zeros_like(q)
    d2x[:, :, 1:-1] = (q[:, :, :-2] - 2 * q[:, :, 1:-1] + q[:, :, 2:]).abs()
    d2y[:, 1:-1, :] = (q[:, :-2, :] - 2 * q[:, 1:-1, :] + q[:, 2:, :]).abs()
    d2x[:, :, 0], d2x[:, :, -1] = d2x[:, :, 1], d2x[:, :, -2]
    d2y[:, 0, :], d2y[:, -1, :] = d2y[:, 1, :], d2y[:, -2, :]
    nb_valid = valid.clone()
    nb_valid[:, :, 1:-1] &= valid[:, :, :-2] & valid[:, :, 2:]
    nb_valid[:, 1:-1, :] &= valid[:, :-2, :] & valid[:, 2:, :]
    smooth = (torch.maximum(d2x, d2y) <= crease * q) & nb_valid
    member = valid & smooth
    ld = torch.log(depth.clamp_min(1e-12))
    conn_r = (
        member[:, :, :-1] & member[:, :, 1:] & ((ld[:, :, 1:] - ld[:, :, :-1]).abs() < max_step)
    )
    conn_d = (
        member[:, :-1, :] & member[:, 1:, :] & ((ld[:, 1:, :] - ld[:, :-1, :]).abs() < max_step)
    )
    return member, conn_r, conn_d


#: (averaging radius r, second-difference step s) of the crease tests of :func:`robust_cut_mask`.
#: (0, 1) is the plain one-pixel test (every crease at any angle, on clean depth); (4, 4), used
#: only in frames too noisy for it, still sees creases and small steps at 1-2% per-pixel noise
#: (its answer to a crease grows with s, the noise's does not). Chosen on planted truth: labels
#: against the noise-free ones over noise 0-2%, objects kept apart from the floor
#: (tests/test_layers_robust.py); a (1, 2) scale and wider averaging did not help there.
CREASE_SCALES: tuple[tuple[int, int], ...] = ((0, 1), (4, 4))

#: A step of at least this many times the coarse crease threshold shadows the coarse test
#: within its reach (:func:`_step_shadow`): its answer there is the step's, above any crease's.
BIG_STEP = 2.0

#: Highest noise level (robust level of the relative second difference, about 1.5x the relative
#: per-pixel noise) the thresholds follow: beyond it, depth is treated as unsegmentable.
MAX_NOISE = 0.05


def _median3(x: Tensor, dim: int) -> Tensor:
    """Median of each element and its two neighbours along ``dim`` (the ends keep their value).

    Three min/max passes: a 3-tap median removes isolated outliers and keeps steps sharp."""
    n = x.shape[dim]
    if n < 3:
        return x
    a, b, c = x.narrow(dim, 0, n - 2), x.narrow(dim, 1, n - 2), x.narrow(dim, 2, n - 2)
    mid = torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))
    out = x.clone()
    out.narrow(dim, 1, n - 2).copy_(mid)
    return out


def _box_sum(x: Tensor, r: int) -> Tensor:
    """Sum of (N, h, w) ``x`` over the (2r+1)^2 box around each pixel, edges replicated.

    Separable shifted adds (r is 1 or 2 here: cheaper than prefix sums at these radii)."""
    if r == 0:
        return x
    h, w = x.shape[-2:]
    p = F.pad(x[:, None], (r, r, 0, 0), mode="replicate")[:, 0]
    rows = p[:, :, 0:w].clone()
    for k in range(1, 2 * r + 1):
        rows.add_(p[:, :, k : k + w])
    p = F.pad(rows[:, None], (0, 0, r, r), mode="replicate")[:, 0]
    out = p[:, 0:h].clone()
    for k in range(1, 2 * r + 1):
        out.add_(p[:, k : k + h])
    return out


def _second_difference(q: Tensor, s: int) -> Tensor:
    """max(|q[x-s] - 2q[x] + q[x+s]|) over the two image axes, (N, h, w) -> (N, h, w).

    Pixels closer than ``s`` to the border take the value of the nearest pixel that has one (a
    plane stays uncut there, a crease reaching the border still cuts)."""
    h, w = q.shape[-2:]
    if h <= 2 * s or w <= 2 * s:
        return torch.zeros_like(q)
    dx = torch.empty_like(q)
    dy = torch.empty_like(q)
    torch.sub(
        q[:, :, : w - 2 * s] + q[:, :, 2 * s :],
        q[:, :, s : w - s],
        alpha=2,
        out=dx[:, :, s : w - s],
    )
    torch.sub(q[:, : h - 2 * s] + q[:, 2 * s :], q[:, s : h - s], alpha=2, out=dy[:, s : h - s])
    dx[:, :, :s] = dx[:, :, s : s + 1]
    dx[:, :, w - s :] = dx[:, :, w - s - 1 : w - s]
    dy[:, :s] = dy[:, s : s + 1]
    dy[:, h - s :] = dy[:, h - s - 1 : h - s]
    return torch.maximum(dx.abs_(), dy.abs_())


def _line_sum(x: Tensor, r: int, dim: int) -> Tensor:
    """Sum of (N, h, w) ``x`` over the 2r+1 pixels around each along ``dim`` (1 or 2), ends
    replicated."""
    n = x.shape[dim]
    pad = (r, r, 0, 0) if dim == 2 else (0, 0, r, r)
    p = F.pad(x[:, None], pad, mode="replicate")[:, 0]
    out = p.narrow(dim, 0, n).clone()
    for k in range(1, 2 * r + 1):
        out.add_(p.narrow(dim, k, n))
    return out


def _line_max(x: Tensor, r: int, dim: int) -> Tensor:
    """Maximum of (N, h, w) ``x`` over the 2r+1 pixels around each along ``dim`` (1 or 2), the
    ends replicated. Window doubling (1, 2, 4, ... pixels): log2(2r+1) maxima of shifted views
    (max pooling is several times slower on one CPU thread)."""
    n = x.shape[dim]
    pad = (r, r, 0, 0) if dim == 2 else (0, 0, r, r)
    out = F.pad(x[:, None], pad, mode="replicate")[:, 0]
    width, length = 1, n + 2 * r
    while width < 2 * r + 1:
        step = min(width, 2 * r + 1 - width)
        length -= step
        out = torch.maximum(out.narrow(dim, 0, length), out.narrow(dim, step, length))
        width += step
    return out


def _second_difference_1d(q: Tensor, s: int, dim: int) -> Tensor:
    """|q[x-s] - 2q[x] + q[x+s]| along ``dim`` (1 or 2) of (N, h, w); pixels closer than ``s``
    to the ends take the nearest computed value (a plane stays uncut there)."""
    n = q.shape[dim]
    if n <= 2 * s:
        return torch.zeros_like(q)
    out = torch.empty_like(q)
    mid = out.narrow(dim, s, n - 2 * s)
    torch.add(q.narrow(dim, 0, n - 2 * s), q.narrow(dim, 2 * s, n - 2 * s), out=mid)
    mid.sub_(q.narrow(dim, s, n - 2 * s), alpha=2).abs_()
    out.narrow(dim, 0, s).copy_(out.narrow(dim, s, 1).expand_as(out.narrow(dim, 0, s)))
    out.narrow(dim, n - s, s).copy_(
        out.narrow(dim, n - s - 1, 1).expand_as(out.narrow(dim, n - s, s))
    )
    return out


def _robust_level(rel: Tensor, valid: Tensor, step: int = 3, border: int = 2) -> Tensor:
    """Per-frame robust spread of a non-negative map: 1.4826 x the median of ``rel`` (N, h, w)
    over valid pixels of a regular lattice (every ``step``-th row and column, ``border`` pixels
    skipped); 0 for a frame without valid samples. Returns (N,)."""
    n = rel.shape[0]
    h, w = rel.shape[1:]
    sub = rel[:, border : h - border : step, border : w - border : step]
    ok = valid[:, border : h - border : step, border : w - border : step]
    if sub.numel() == 0:
        return torch.zeros(n, dtype=rel.dtype, device=rel.device)
    vals = torch.where(ok, sub, torch.full_like(sub, float("nan"))).reshape(n, -1)
    med = torch.nanmedian(vals, dim=1).values
    return (1.4826 * med).nan_to_num_(0.0)


def _link_step(noise: Tensor, noise_k: float, max_noise: float, max_step: float) -> Tensor:
    """(N,) noise level -> (N, 1, 1) log-depth step between neighbours above which their link is
    cut: ``max(max_step, 0.75 noise_k noise)`` (see the end of :func:`robust_cut_mask`)."""
    step = 0.75 * noise_k * noise.clamp(max=max_noise)
    return step.clamp_min(max_step)[:, None, None]


def _step_shadow(qb: Tensor, step: Tensor, big: Tensor, s: int, dim: int) -> Tensor:
    """(N, h, w) bool: where a second difference at step ``s`` along ``dim`` (1 or 2) of the
    (N, h, w) inverse depth ``qb`` answers to depth steps rather than to a crease.

    A step is a neighbour log step along ``dim`` of at least ``step`` (N, 1, 1). Marked are
    pixels whose two arms (the ``s`` pixels on either side) both cross a step or leave the image
    (an object narrower than 2s between two steps, which the second difference reads as a
    ridge), and pixels 2 to ``s`` pixels from a step of at least ``big`` (N, 1, 1) (the
    second difference there is the step's plateau, larger than any crease the test looks for;
    the step's own pixels and their neighbours stay marked-free, so where a step fades into a
    crease, the foot of a box's side, the coarse cut there still joins the two). Shifted
    ORs of boolean maps: O(pixels), no per-pixel loop.
    """
    n = qb.shape[dim]
    # ratio[k]: inverse depth of pixel k+1 over pixel k (a log step, without the logarithm; an
    # invalid pixel, q = 0, is a step from any neighbour).
    qc = qb.clamp_min(1e-12)
    ratio = qc.narrow(dim, 1, n - 1) / qc.narrow(dim, 0, n - 1)

    def steps(size: Tensor) -> Tensor:  # (..., n-1) bool: |log ratio| >= size
        hi = torch.exp(size)
        return (ratio >= hi) | (ratio * hi <= 1.0)

    # Beyond the image border counts as a step: an arm leaving the image measures nothing there
    # (the test copies the answer of a pixel further in, whose arm crosses the other step).
    shape = list(qb.shape)
    shape[dim] = n + 2 * s
    jp = torch.ones(shape, dtype=torch.bool, device=qb.device)  # jp[k + s] = step k..k+1
    jp.narrow(dim, s, n - 1).copy_(steps(step))
    # win[i] = any jp[i .. i+s-1] = any step in [i-s, i-1]: the left arm of pixel i, the right
    # arm (steps x .. x+s-1) of pixel i - s.
    length = n + s + 1
    win = jp.narrow(dim, 0, length).clone()
    for k in range(1, s):
        win |= jp.narrow(dim, k, length)
    shadow = win.narrow(dim, 0, n) & win.narrow(dim, s, n)
    # Pixels beside a big step: both ends of it marked, dilated by s, less the one-pixel rim.
    big_jump = steps(big)
    marks = torch.zeros(shape, dtype=torch.bool, device=qb.device)  # marks[x + s]
    marks.narrow(dim, s + 1, n - 1).copy_(big_jump)
    marks.narrow(dim, s, n - 1).logical_or_(big_jump)
    rim = marks.narrow(dim, s - 1, n) | marks.narrow(dim, s, n) | marks.narrow(dim, s + 1, n)
    near = rim.clone()
    for k in range(2, s + 1):
        near |= marks.narrow(dim, s - k, n) | marks.narrow(dim, s + k, n)
    return shadow | (near & ~rim)


class CutMask(NamedTuple):
    member: Tensor
    """(N, h, w) bool: pixels inside a surface (valid, no crease or step at any scale)."""
    conn_r: Tensor
    """(N, h, w-1) bool: member pixel linked to its right neighbour."""
    conn_d: Tensor
    """(N, h-1, w) bool: member pixel linked to the pixel below."""
    depth: Tensor
    """(N, h, w) the median-filtered depth the links and the boundary fill compare (0 invalid)."""
    noise: Tensor
    """(N,) robust level of the fine-scale relative second difference of inverse depth: the
    frame's depth noise as the cut test sees it (about 1.5 x the per-pixel relative noise)."""
    step: Tensor
    """(N,) the log-depth step the noise alone makes likely between neighbours (links are cut
    above ``max(max_step, step)``)."""


def robust_cut_mask(
    depth: Tensor,
    crease: float,
    max_step: float,
    conf: Tensor | None = None,
    noise_k: float = 2.0,
    scales: tuple[tuple[int, int], ...] = CREASE_SCALES,
    max_noise: float = MAX_NOISE,
    step_free_coarse: bool = True,
) -> CutMask:
    """Noise-aware :func:`cut_mask` on (N, h, w) depth (0 = invalid); ``conf`` (N, h, w) >= 0
    optional: the model's confidence (any monotone scale), read on a sparse lattice only.

    Inverse depth, 3-tap median along each axis, then per scale (r, s): the mean over 2r+1
    pixels across each direction and the relative second difference at step s along it. A
    pixel is cut when that exceeds ``max(s * crease, noise_k * min(sigma, max_noise))``,
    ``sigma`` being the frame's robust level (1.4826 x median) of the same map on a lattice of
    its pixels (its more confident half, with ``conf``). Coarser scales (s > 1) apply only in
    frames whose first-scale noise hides a crease of ``crease``, and cut only where their answer
    peaks (widened a pixel across, two along the line). Links between members are cut where
    the log-depth step of the filtered depth exceeds ``max(max_step, 0.75 noise_k sigma_1)``
    (sigma_1: the first scale's level). With ``step_free_coarse`` (default), coarse scales do not
    cut where their arms cross depth steps (:func:`_step_shadow`; False: as before, kept for
    comparison). Batched; no host sync, no per-frame loop.
    """
    valid = depth > 0
    q = torch.where(valid, torch.reciprocal(depth.clamp_min(1e-12)), torch.zeros_like(depth))
    # Outliers and flying pixels are isolated or one pixel thick: a 3-tap median along each axis
    # removes them and keeps steps where they are. Invalid pixels stay 0, which cuts beside them.
    qf = torch.where(valid, _median3(_median3(q, 2), 1), q)
    n = depth.shape[0]
    # The noise is measured where the model is confident (the more confident half of each
    # frame, when it says): real depth is noisier where the model is unsure (far range,
    # textureless walls, edges), and those pixels would set the threshold for all the others.
    sample = valid
    if conf is not None:
        c = torch.where(valid, conf.to(depth.dtype), torch.full_like(depth, float("nan")))
        lat = c[:, 2:-2:4, 2:-2:4].reshape(n, -1)
        c_mid = torch.nanquantile(lat, 0.5, dim=1).nan_to_num(0.0)
        # Ties at the median (a model with few confidence levels): strictly above it when that
        # still leaves a quarter of the lattice, else at or above.
        above = (lat > c_mid[:, None]).float().mean(1) >= 0.25
        c_mid = c_mid[:, None, None]
        sample = valid & torch.where(above[:, None, None], c > c_mid, c >= c_mid)
    member = valid.clone()
    noise = None
    lattice = (slice(None), slice(2, -2, 4), slice(2, -2, 4))  # where the noise is measured
    for r, s in scales:
        # Second differences along x of inverse depth averaged along y (and vice versa): the
        # averaging lowers the noise and, being along the crease or step it tests, neither widens
        # nor weakens it (a crease's response is s times its change of slope however wide r).
        d2s, qbs = [], []
        for diff_dim, avg_dim in ((2, 1), (1, 2)):
            # Plain mean: beside invalid pixels (q = 0) it is pulled down and the test cuts
            # there, as it does at the border of any invalid region anyway.
            qb = _line_sum(qf, r, avg_dim).div_(2 * r + 1) if r else qf
            d2s.append(_second_difference_1d(qb, s, diff_dim))
            qbs.append(qb)
        # Relative to the inverse depth (the test is scale-free): divided on the lattice only.
        rel_lat = torch.maximum(
            d2s[0][lattice] / qbs[0][lattice].clamp_min(1e-12),
            d2s[1][lattice] / qbs[1][lattice].clamp_min(1e-12),
        )
        sigma = _robust_level(rel_lat, sample[lattice], step=1, border=0)
        if noise is None:
            noise = sigma
        # Depth noisier than this is not segmentable (it would raise the thresholds until
        # everything is one layer): the thresholds stop there and the frame goes mostly
        # unlabelled, which the run reports (WindowStats.layer_coverage) instead of hiding.
        sigma = sigma.clamp(max=max_noise)
        # A crease's answer is s times its change of slope: ``crease`` means the same at every
        # scale (at 45 degrees the averaging blurs it somewhat; the one-pixel scale sees those).
        thr = torch.clamp(noise_k * sigma, min=s * crease)
        if s > 1 and noise is not None:
            # Coarser tests only in frames too noisy for the one-pixel test to see a crease of
            # ``crease``: on clean depth they add nothing it does not cut already, and their
            # peaks within a step's wide answer would slice slivers off surfaces.
            thr = torch.where(noise_k * noise > crease, thr, torch.full_like(thr, float("inf")))
        thr = thr[:, None, None]
        link_step = None
        # Frames whose coarse test is off cut nothing there: on the CPU (where asking costs no
        # sync) the guard is skipped when no frame needs it (clean depth: no cost added).
        if (
            s > 1
            and step_free_coarse
            and (depth.device.type != "cpu" or bool(torch.isfinite(thr).any()))
        ):
            link_step = _link_step(noise, noise_k, max_noise, max_step)
        for d2, qb, dim in zip(d2s, qbs, (2, 1)):
            cut = d2 > qb * thr
            if link_step is not None:
                # A coarse test whose arms cross a depth step answers to the step, not to a
                # crease: an object narrower than 2s between two steps reads as a ridge, and
                # beside a big step the answer is a plateau whose noise peaks the test below
                # cuts at random, so objects a few times s across (and the ramps flying pixels
                # make of silhouettes) were cut to pieces too small to keep (issue 20's flying
                # pixels and deep hall). The fine test and the links cut those steps; the coarse
                # test keeps looking for creases away from them.
                cut &= ~_step_shadow(qb, link_step, BIG_STEP * thr, s, dim)
            if s > 2:
                # A crease answers over the 2s+1 pixels around it: cut only where the answer
                # peaks (along the direction it was measured), widened by one pixel so that the
                # cut line stays closed, instead of a band 2s+1 wide that would swallow small
                # objects.
                cut &= d2 >= _line_max(d2, s, dim)
                # Widened by a pixel across the line and two along it: where a crease meets a
                # step that fades out (the foot of a box's side), the two cuts stay joined.
                for d_dim, reach in ((dim, 1), (3 - dim, 2)):
                    n_d = cut.shape[d_dim]
                    wide = cut.clone()
                    for k in range(1, reach + 1):
                        wide.narrow(d_dim, k, n_d - k).logical_or_(cut.narrow(d_dim, 0, n_d - k))
                        wide.narrow(d_dim, 0, n_d - k).logical_or_(cut.narrow(d_dim, k, n_d - k))
                    cut = wide
            member &= ~cut
    if noise is None:
        noise = torch.zeros(n, dtype=depth.dtype, device=depth.device)
    # Neighbour steps: white noise of relative level e gives one-pixel second differences of
    # about 2.45 e (x 1.5 for the larger of two directions) and steps of about 1.4 e, so
    # 0.75 noise_k sigma is about twice noise_k step deviations.
    step = 0.75 * noise_k * noise.clamp(max=max_noise)
    ld = torch.log(qf.clamp_min(1e-12))  # minus the log depth: steps are the same
    st = _link_step(noise, noise_k, max_noise, max_step)
    conn_r = member[:, :, :-1] & member[:, :, 1:] & ((ld[:, :, 1:] - ld[:, :, :-1]).abs() < st)
    conn_d = member[:, :-1, :] & member[:, 1:, :] & ((ld[:, 1:, :] - ld[:, :-1, :]).abs() < st)
    df = torch.where(valid, torch.reciprocal(qf.clamp_min(1e-12)), torch.zeros_like(qf))
    return CutMask(member, conn_r, conn_d, df, noise, step)


def connected_components_torch(member: Tensor, conn_r: Tensor, conn_d: Tensor) -> Tensor:
    """4-connected components over allowed links, batched; works on any device.

    Returns (N, h, w) int64 root ids (a pixel index within the frame), -1 for non-members.

    Min-label propagation over whole runs: a run is a maximal stretch of a row (or column)
    whose neighbours are linked, and one segmented minimum (``scatter_reduce``) gives every pixel
    of a run its smallest label at once; rows, then columns, then two pointer jumps. A plane
    converges in a few iterations, where propagation between neighbours only needed one per few
    pixels of its diameter (on a 20-frame 147x259 window of the synthetic scene: 10 iterations
    against 128, 12x faster on the CPU, and one host sync per iteration on a GPU).
    """
    n, h, w = member.shape
    big = h * w
    dev = member.device
    total = n * big
    # Run ids: a new run starts wherever the link to the previous pixel is missing.
    start = torch.ones(n, h, w, dtype=torch.bool, device=dev)
    start[:, :, 1:] = ~conn_r
    row_run = start.reshape(-1).cumsum(0) - 1
    start = torch.ones(n, w, h, dtype=torch.bool, device=dev)
    start[:, :, 1:] = ~conn_d.transpose(1, 2)
    col_run = (start.reshape(-1).cumsum(0) - 1).view(n, w, h).transpose(1, 2).reshape(-1)
    inside = member.reshape(-1)
    lab = torch.where(inside, torch.arange(big, device=dev).repeat(n), big)
    for _ in range(h + w):
        before = lab
        for run in (row_run, col_run):
            run_min = torch.full((total,), big, device=dev)
            lab = run_min.scatter_reduce_(0, run, lab, "amin")[run]
        # Pointer jumping: a label is the index of a pixel of the same component; follow it twice.
        for _ in range(2):
            hop = torch.gather(lab.view(n, big), 1, lab.view(n, big).clamp(max=big - 1))
            lab = torch.where(inside, torch.minimum(lab, hop.reshape(-1)), lab)
        if torch.equal(lab, before):
            break
    return torch.where(member, lab.view(n, h, w), -1)


def connected_components_scipy(member: Tensor, conn_r: Tensor, conn_d: Tensor) -> Tensor:
    """CPU reference of :func:`connected_components_torch` via ``scipy.ndimage.label``.

    ndimage labels pixel sets, not links, so links are encoded on a 2x upsampled grid where a
    link is a pixel between its two ends; all frames go through one call (a 3-D structure with no
    connection across frames). Same output convention (root = smallest pixel index).
    """
    from scipy import ndimage

    n, h, w = member.shape
    m = member.cpu().numpy()
    cr, cd = conn_r.cpu().numpy(), conn_d.cpu().numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    if np.array_equal(cr, m[:, :, :-1] & m[:, :, 1:]) and np.array_equal(cd, m[:, :-1] & m[:, 1:]):
        # Every pair of neighbouring members is linked (the usual case: a depth step between two
        # members is rare, as the crease test already removes pixels beside a jump), so the
        # pixel sets alone give the components: a 4x smaller grid.
        lab, count = ndimage.label(m, structure=structure)
    else:
        grid = np.zeros((n, 2 * h - 1, 2 * w - 1), dtype=bool)
        grid[:, ::2, ::2] = m
        grid[:, ::2, 1::2] = cr
        grid[:, 1::2, ::2] = cd
        lab, count = ndimage.label(grid, structure=structure)
        lab = lab[:, ::2, ::2]
    lab = lab.reshape(n, h * w)
    # Root = the smallest pixel index of each component. Components never span frames, and a
    # reversed fancy assignment leaves each label with its first (smallest) index.
    first = np.zeros(count + 1, dtype=np.int64)
    pix = np.broadcast_to(np.arange(h * w, dtype=np.int64), (n, h * w))
    first[lab[:, ::-1].reshape(-1)] = pix[:, ::-1].reshape(-1)
    roots = np.where(m.reshape(n, h * w), first[lab], -1).reshape(n, h, w)
    return torch.from_numpy(roots).to(member.device)


def relabel(roots: Tensor, max_layers: int, min_pixels: int) -> tuple[Tensor, Tensor]:
    """Root ids -> labels 0..M-1 per frame by decreasing size, dropping small ones (-> -1).

    Ties in size go to the smaller root. Sizes come from one bincount over (frame, root) keys and
    labels from a lookup table, so only the components (not the pixels) are sorted.
    """
    n, h, w = roots.shape
    dev = roots.device
    frame_off = (torch.arange(n, device=dev) * (h * w)).reshape(n, 1, 1)
    key = torch.where(roots >= 0, roots + frame_off, torch.full_like(roots, n * h * w)).reshape(-1)
    counts_all = group_counts(key, n * h * w + 1)[: n * h * w]
    comp = torch.nonzero(counts_all).squeeze(1)  # sorted: by frame, then root
    counts = counts_all[comp]
    comp_frame = comp // (h * w)
    # rank components within each frame by size (largest first; stable keeps root order on ties)
    order = torch.argsort(comp_frame.double() * (h * w + 1) - counts.double(), stable=True)
    ranks = torch.empty_like(order)
    sorted_frames = comp_frame[order]
    first_of_frame = torch.searchsorted(sorted_frames, sorted_frames, right=False)
    ranks[order] = torch.arange(order.numel(), device=dev) - first_of_frame
    keep = (ranks < max_layers) & (counts >= min_pixels)
    lut = torch.full((n * h * w + 1,), -1, dtype=torch.long, device=dev)
    lut[comp] = torch.where(keep, ranks, torch.full_like(ranks, -1))
    labels = lut[key].reshape(n, h, w)
    num = torch.zeros(n, dtype=torch.long, device=dev)
    if keep.any():
        num.scatter_reduce_(0, comp_frame[keep], ranks[keep] + 1, reduce="amax")
    return labels, num


def fill_boundaries(
    labels: Tensor, depth: Tensor, max_step: float | Tensor, passes: int = 2
) -> Tensor:
    """Give unlabeled valid pixels the label of the 4-neighbour closest in log depth, if close.

    Pixels on a crease belong to one of the two surfaces; pixels on a depth jump whose depth
    matches neither side stay unlabeled. Only the candidate pixels (a few percent) are visited.
    ``max_step``: one tolerance, or (N,) one per frame (noise-aware). On a GPU every pixel is
    visited each pass instead (:func:`_fill_boundaries_dense`: no data-dependent shapes, so no
    host sync per pass).
    """
    n, h, w = labels.shape
    per_frame = torch.is_tensor(max_step) and max_step.dim() == 1
    if labels.is_cuda:
        tol = max_step if per_frame else torch.full((n,), float(max_step), device=labels.device)
        return _fill_boundaries_dense(labels, depth, tol, passes)
    lab_p = F.pad(labels, (1, 1, 1, 1), value=-1).reshape(-1)
    ld_p = F.pad(torch.log(depth.clamp_min(1e-12)), (1, 1, 1, 1), value=0.0).reshape(-1)
    wp = w + 2
    # Candidates as indices into the padded grid (the padding is never a candidate).
    cand = torch.nonzero(F.pad((labels < 0) & (depth > 0), (1, 1, 1, 1)).reshape(-1)).squeeze(1)
    # Neighbour offsets in tie-breaking order: up, down, left, right (the first minimum wins).
    offs = torch.tensor([-wp, wp, -1, 1], device=labels.device)
    frame_px = (h + 2) * wp
    # Log depth of labelled pixels only (+inf elsewhere), so an unlabelled neighbour never wins.
    ld_lab = torch.where(lab_p >= 0, ld_p, torch.full_like(ld_p, float("inf")))
    for i in range(passes):
        if cand.numel() == 0:
            break
        here = torch.take(ld_p, cand)
        nb = torch.take(ld_lab, cand[None] + offs[:, None])
        best_diff, best = (nb - here).abs_().min(0)
        tol = max_step[cand // frame_px] if per_frame else max_step
        take = best_diff < tol
        cand_take = cand[take]
        # All candidates read the labels as they were before this pass, then are written at once.
        lab_p[cand_take] = torch.take(lab_p, cand_take + offs[best[take]])
        ld_lab[cand_take] = torch.take(ld_p, cand_take)
        # A candidate whose four neighbours were all labelled and none close enough never will
        # be (labels only spread): dropped, so wide cut bands cost only what is still open.
        keep = ~take
        if i + 1 < passes:
            keep &= ~torch.isfinite(nb).all(0)
        cand = cand[keep]
    return lab_p.reshape(n, h + 2, wp)[:, 1:-1, 1:-1].contiguous()


def _fill_boundaries_dense(labels: Tensor, depth: Tensor, tol: Tensor, passes: int) -> Tensor:
    """:func:`fill_boundaries` over every pixel of (N, h, w) ``labels`` at once; ``tol`` (N,).

    Same rule (ties between equally close neighbours may resolve differently)."""
    lab = F.pad(labels, (1, 1, 1, 1), value=-1)
    ld = F.pad(torch.log(depth.clamp_min(1e-12)), (1, 1, 1, 1), value=0.0)
    cand = F.pad((labels < 0) & (depth > 0), (1, 1, 1, 1))[:, 1:-1, 1:-1]
    here = ld[:, 1:-1, 1:-1]
    inf = torch.full_like(ld, float("inf"))
    t = tol.to(ld.dtype)[:, None, None]

    def shifted(x: Tensor) -> Tensor:  # (N, 4, h, w): up, down, left, right neighbours
        return torch.stack(
            [x[:, :-2, 1:-1], x[:, 2:, 1:-1], x[:, 1:-1, :-2], x[:, 1:-1, 2:]], dim=1
        )

    for _ in range(passes):
        ld_lab = torch.where(lab >= 0, ld, inf)
        best_diff, best = (shifted(ld_lab) - here[:, None]).abs_().min(1)
        take = cand & (best_diff < t)
        nb_lab = torch.gather(shifted(lab), 1, best[:, None])[:, 0]
        lab[:, 1:-1, 1:-1] = torch.where(take, nb_lab, lab[:, 1:-1, 1:-1])
        cand = cand & ~take
    return lab[:, 1:-1, 1:-1].contiguous()


def segment_depth_layers(
    depth: Tensor,
    stride: int = 2,
    crease: float = 0.010,
    max_step: float = 0.25,
    max_layers: int = 24,
    min_fraction: float = 0.004,
    backend: str = "auto",
    conf: Tensor | None = None,
    noise_k: float = 2.0,
) -> Layers:
    """Segment (N, H, W) depth maps into at most ``max_layers`` layers each (on a strided grid).

    ``backend`` of the connected components: "scipy" (on the CPU, whatever the device of
    ``depth``), "torch" (on ``depth``'s device) or "auto" (scipy for CPU tensors, else torch).
    Same components either way.

    ``noise_k`` > 0 (default): noise-aware cuts (:func:`robust_cut_mask`), with ``conf`` (N, H,
    W) >= 0, the model's confidence (optional), weighting the smoothing; each frame's measured
    noise is in ``Layers.noise``. Cut bands are then a few pixels wide, so components are kept
    from a quarter of the minimum size, grown back over the bands, and only then held to
    ``min_fraction``. ``noise_k=0``: the plain one-pixel test with fixed thresholds
    (:func:`cut_mask`; clean depth only, kept for comparison).
    """
    d = strided_depth(depth, stride)
    if backend == "auto":
        backend = "scipy" if d.device.type == "cpu" else "torch"
    cc = connected_components_scipy if backend == "scipy" else connected_components_torch
    min_pixels = max(1, int(min_fraction * d.shape[1] * d.shape[2]))
    if noise_k <= 0:
        member, conn_r, conn_d = cut_mask(d, crease, max_step)
        labels, num = relabel(cc(member, conn_r, conn_d), max_layers, min_pixels)
        labels = fill_boundaries(labels, d, max_step * 0.2)
        return Layers(labels, num, d, stride, None, _coverage(labels))
    h, w = d.shape[1:]
    # The confidence is only read on a sparse lattice (which pixels measure the noise): a strided
    # view, not a block average.
    c = None if conf is None else conf[:, : h * stride : stride, : w * stride : stride]
    cut = robust_cut_mask(d, crease, max_step, c, noise_k)
    roots = cc(cut.member, cut.conn_r, cut.conn_d)
    labels, num = relabel(roots, max_layers, min_pixels)
    # Cut lines are up to three pixels wide (the coarse scale's): three passes reach across.
    labels = fill_boundaries(labels, cut.depth, cut.step.clamp_min(max_step * 0.2), 3)
    return Layers(labels, num, d, stride, cut.noise, _coverage(labels))


def _coverage(labels: Tensor) -> Tensor:
    """(N, h, w) labels -> (N,) float32 fraction of pixels with a layer."""
    return (labels >= 0).sum((1, 2)).float() / max(1, labels.shape[1] * labels.shape[2])


def upsample_labels(labels: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Nearest-neighbour upsampling of a strided map (N, h, w) to (N, H, W) (labels or scales);
    the border rows/columns the strided grid did not cover copy their neighbours.

    One gather through a precomputed (H*W) source index, in the input's own dtype (int16
    labels stay int16: no float round trip over every pixel).
    """
    if stride == 1:
        return labels
    n, h, w = labels.shape
    if (h * stride, w * stride) == (height, width):  # exact multiple: a broadcast copy
        up = labels[:, :, None, :, None].expand(n, h, stride, w, stride)
        return up.reshape(n, height, width)
    dev = labels.device
    rows = (torch.arange(height, device=dev) // stride).clamp_(max=h - 1)
    cols = (torch.arange(width, device=dev) // stride).clamp_(max=w - 1)
    index = (rows[:, None] * w + cols[None, :]).reshape(-1)
    return labels.reshape(n, h * w).index_select(1, index).view(n, height, width)


def mul_upsampled_(target: Tensor, strided: Tensor, stride: int) -> Tensor:
    """``target *= upsample_labels(strided)`` in place, without the upsampled temporary when the
    full size is an exact multiple of the grid (a broadcast over (stride, stride) blocks).

    target (N, H, W) contiguous, strided (N, h, w) -> target."""
    n, height, width = target.shape
    _, h, w = strided.shape
    if stride > 1 and (h * stride, w * stride) == (height, width) and target.is_contiguous():
        target.view(n, h, stride, w, stride).mul_(strided[:, :, None, :, None])
        return target
    return target.mul_(upsample_labels(strided, stride, height, width))
