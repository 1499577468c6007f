"""Robust per-group scale fits (IRLS with a Huber loss), batched over groups with segment sums."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ScaleFit(NamedTuple):
    scale: Tensor
    """(G,) fitted scale per group (1 where a group had no samples)."""
    residual: Tensor
    """(G,) median absolute relative residual |1 - s * den / num| after the fit."""
    count: Tensor
    """(G,) number of samples per group."""


def group_counts(group: Tensor, num_groups: int) -> Tensor:
    """``bincount(group, minlength=num_groups)`` for ``group`` (N,) int64 in [0, num_groups).

    On a GPU by ``index_add_`` into a table of known size: ``bincount`` reads the largest value
    back to size its output, a host sync (costly while a network shares the GPU)."""
    if not group.is_cuda:
        return torch.bincount(group, minlength=num_groups)
    out = torch.zeros(num_groups, dtype=torch.int64, device=group.device)
    return out.index_add_(0, group, torch.ones_like(group))


def segment_median(values: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Median of ``values`` (N,) within each of ``num_groups`` groups given by ``group`` (N,).

    Groups without samples get NaN; an even count takes the lower middle value. One group is a
    selection (O(N)); several take one sort of a combined (group, value) key.
    """
    if values.numel() == 0:
        return torch.full((num_groups,), float("nan"), dtype=values.dtype, device=values.device)
    if num_groups == 1:
        return values.median().reshape(1)
    # Values mapped monotonically into [0, 1] and offset by 2 * group: a single float64 sort
    # orders by group, then by value (two argsorts, one of them stable, cost twice as much).
    v = values.double()
    lo, hi = v.min(), v.max()
    key = (v - lo) / (hi - lo).clamp_min(1e-300) + 2.0 * group.double()
    order = torch.argsort(key)
    counts = group_counts(group, num_groups)
    starts = torch.cumsum(counts, 0) - counts
    mid = (starts + (counts - 1).clamp_min(0) // 2).clamp(max=values.numel() - 1)
    med = values[order[mid]]
    return torch.where(counts > 0, med, torch.full_like(med, float("nan")))


def thin(mask_or_count: int, max_samples: int, device=None) -> Tensor | None:
    """Evenly spaced indices keeping at most ``max_samples`` of ``n`` (None: keep all).

    A few tens of thousands of pixels pin a scale down to well under 0.1%; fitting millions
    only costs time.
    """
    n = int(mask_or_count)
    if n <= max_samples:
        return None
    return torch.linspace(0, n - 1, max_samples, device=device).round().long()


def robust_scale(
    num: Tensor,
    den: Tensor,
    group: Tensor | None = None,
    num_groups: int = 1,
    weight: Tensor | None = None,
    delta: float = 0.05,
    iterations: int = 10,
    max_samples: int = 65536,
    with_residual: bool = True,
) -> ScaleFit:
    """Fit ``num ≈ s_g * den`` per group by IRLS with a Huber loss on log-ratio residuals.

    The residual of a sample is ``r = log(num / den) - log s``: scale-free (near and far pixels
    count alike) and symmetric (a depth twice too large weighs as much as one half too small, so
    the breakdown point is the same either way). Each iteration is a weighted mean
    ``log s = Σ w log(num/den) / Σ w`` with Huber weights ``w = min(1, delta / |r|)``. The start is
    the median ratio, so up to half the samples may be outliers. The Huber threshold adapts to the
    data: ``min(delta, 1.345 * 1.4826 * MAD(r))`` per group (the usual 95%-efficiency tuning on a
    robust sigma), so a clean group is fitted tightly. A few final iterations with Tukey's
    biweight (cut at 4.685 robust sigmas) remove the small pull Huber weights leave to gross
    outliers.

    num, den: (N,) positive values; group: (N,) int64 in [0, G); weight: (N,) prior weights.
    ``with_residual=False`` skips the residual's median (one sort) where nobody reads it (NaN).
    """
    if group is None:
        group = torch.zeros(num.shape[0], dtype=torch.long, device=num.device)
    ok = torch.isfinite(num) & torch.isfinite(den) & (num > 0) & (den > 0)
    if weight is not None:
        ok &= torch.isfinite(weight) & (weight > 0)
    num, den, group = num[ok], den[ok], group[ok]
    group_all = group
    prior = weight[ok] if weight is not None else torch.ones_like(num)
    keep = thin(num.numel(), max_samples, num.device)
    if keep is not None:
        num, den, group, prior = num[keep], den[keep], group[keep], prior[keep]
    y = torch.log(num) - torch.log(den)
    counts = group_counts(group_all if keep is not None else group, num_groups)

    def weighted_mean(w: Tensor, current: Tensor) -> Tensor:
        if num_groups == 1:
            sw, swy = w.sum().reshape(1), (w * y).sum().reshape(1)
        else:
            sw = torch.zeros(num_groups, dtype=y.dtype, device=y.device).index_add_(0, group, w)
            swy = torch.zeros(num_groups, dtype=y.dtype, device=y.device).index_add_(
                0, group, w * y
            )
        new = swy / sw.clamp_min(1e-30)
        return torch.where((sw > 0) & torch.isfinite(new), new, current)

    log_s = torch.nan_to_num(segment_median(y, group, num_groups), nan=0.0)
    mad = torch.nan_to_num(segment_median((y - log_s[group]).abs(), group, num_groups), nan=delta)
    delta_g = torch.clamp(1.345 * 1.4826 * mad, min=1e-4, max=delta)[group]
    for _ in range(iterations):
        r = y - log_s[group]
        log_s = weighted_mean(
            prior * torch.clamp(delta_g / r.abs().clamp_min(1e-12), max=1.0), log_s
        )
    if iterations > 0:
        mad = torch.nan_to_num(
            segment_median((y - log_s[group]).abs(), group, num_groups), nan=delta
        )
        cut = torch.clamp(4.685 * 1.4826 * mad, min=1e-3)[group]
        for _ in range(3):
            r = y - log_s[group]
            log_s = weighted_mean(prior * torch.clamp(1.0 - (r / cut) ** 2, min=0.0) ** 2, log_s)
    scale = torch.exp(log_s)
    if not with_residual:
        return ScaleFit(scale, torch.full_like(scale, float("nan")), counts)
    residual = segment_median((1.0 - torch.exp(log_s[group] - y)).abs(), group, num_groups)
    return ScaleFit(scale, torch.nan_to_num(residual, nan=0.0), counts)
