"""Depth-layer segmentation: cut each depth map into connected surfaces of consistent depth.

Cuts come from the second difference of inverse depth. On a plane, inverse depth is affine in the
pixel coordinates, so its second difference is zero however steeply the plane recedes; it is
large at an occlusion boundary (a depth jump) and at a crease where two surfaces meet (an object
standing on a floor). So a box on a floor, or a person in front of a wall, becomes its own layer
even in a deep scene, which a depth-band clustering or a threshold relative to the depth range
would merge (DESIGN.md §4). The rest is connected components and tidying.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Layers(NamedTuple):
    labels: Tensor
    """(N, h, w) int64 layer label per pixel on the strided grid, -1 = no layer."""
    num_layers: Tensor
    """(N,) layers per frame; labels of frame i are in [0, num_layers[i])."""
    depth: Tensor
    """(N, h, w) the strided depth the labels refer to (0 = invalid)."""
    stride: int


def strided_depth(depth: Tensor, stride: int) -> Tensor:
    """Average valid depths over stride x stride blocks: (N, H, W) -> (N, H//s, W//s), 0 invalid."""
    valid = (torch.isfinite(depth) & (depth > 0)).to(depth.dtype)
    d = torch.where(valid > 0, depth, torch.zeros_like(depth))
    if stride == 1:
        return d
    h, w = depth.shape[-2] // stride * stride, depth.shape[-1] // stride * stride
    num = F.avg_pool2d(d[:, None, :h, :w], stride)[:, 0]
    cnt = F.avg_pool2d(valid[:, None, :h, :w], stride)[:, 0]
    # A block is valid only when all its pixels are: partial blocks straddle boundaries.
    return torch.where(cnt > 0.999, num / cnt.clamp_min(1e-12), torch.zeros_like(num))


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
    conn_r = member[:, :, :-1] & member[:, :, 1:] & ((ld[:, :, 1:] - ld[:, :, :-1]).abs() < max_step)
    conn_d = member[:, :-1, :] & member[:, 1:, :] & ((ld[:, 1:, :] - ld[:, :-1, :]).abs() < max_step)
    return member, conn_r, conn_d


def connected_components_torch(member: Tensor, conn_r: Tensor, conn_d: Tensor) -> Tensor:
    """4-connected components over allowed links, batched; works on any device.

    Returns (N, h, w) int64 root ids (a pixel index within the frame), -1 for non-members.
    Min-label propagation with pointer jumping, so the iteration count grows with the log of a
    component's diameter rather than the diameter.
    """
    n, h, w = member.shape
    big = h * w
    idx = torch.arange(big, device=member.device).reshape(1, h, w).expand(n, h, w)
    lab = torch.where(member, idx, torch.full_like(idx, big))
    for it in range(4 * (h + w)):
        new = lab.clone()
        new[:, :, :-1] = torch.where(conn_r, torch.minimum(new[:, :, :-1], lab[:, :, 1:]), new[:, :, :-1])
        new[:, :, 1:] = torch.where(conn_r, torch.minimum(new[:, :, 1:], lab[:, :, :-1]), new[:, :, 1:])
        new[:, :-1, :] = torch.where(conn_d, torch.minimum(new[:, :-1, :], lab[:, 1:, :]), new[:, :-1, :])
        new[:, 1:, :] = torch.where(conn_d, torch.minimum(new[:, 1:, :], lab[:, :-1, :]), new[:, 1:, :])
        # Pointer jumping: a label is the index of a pixel of the same component; follow it twice.
        for _ in range(2):
            safe = new.clamp(max=big - 1).reshape(n, -1)
            hop = torch.gather(new.reshape(n, -1), 1, safe).reshape(n, h, w)
            new = torch.where(member, torch.minimum(new, hop), new)
        if it % 4 == 3 and torch.equal(new, lab):
            break
        lab = new
    return torch.where(member, lab, torch.full_like(lab, -1))


def connected_components_scipy(member: Tensor, conn_r: Tensor, conn_d: Tensor) -> Tensor:
    """CPU reference of :func:`connected_components_torch` via ``scipy.ndimage.label``.

    ndimage labels pixel sets, not links, so links are encoded on a 2x upsampled grid where a
    link is a pixel between its two ends. Same output convention (root = smallest pixel index).
    """
    from scipy import ndimage

    n, h, w = member.shape
    m = member.cpu().numpy()
    cr = conn_r.cpu().numpy()
    cd = conn_d.cpu().numpy()
    out = np.full((n, h, w), -1, dtype=np.int64)
    grid = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)
    for i in range(n):
        grid[:] = False
        grid[::2, ::2] = m[i]
        grid[::2, 1::2] = cr[i]
        grid[1::2, ::2] = cd[i]
        lab, count = ndimage.label(grid)
        lab = lab[::2, ::2]
        if count == 0:
            continue
        flat = lab.reshape(-1)
        # root = smallest pixel index of each component
        first = np.full(count + 1, h * w, dtype=np.int64)
        np.minimum.at(first, flat, np.arange(h * w))
        roots = first[flat].reshape(h, w)
        out[i] = np.where(m[i], roots, -1)
    return torch.from_numpy(out).to(member.device)


def relabel(roots: Tensor, max_layers: int, min_pixels: int) -> tuple[Tensor, Tensor]:
    """Root ids -> labels 0..M-1 per frame by decreasing size, dropping small ones (-> -1)."""
    n, h, w = roots.shape
    frame = torch.arange(n, device=roots.device).reshape(n, 1, 1).expand(n, h, w)
    has = roots >= 0
    key = (frame * (h * w) + roots)[has]
    uniq, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    comp_frame = uniq // (h * w)
    # rank components within each frame by size (largest first)
    order = torch.argsort(comp_frame.double() * (h * w + 1) - counts.double())
    ranks = torch.empty_like(order)
    sorted_frames = comp_frame[order]
    first_of_frame = torch.searchsorted(sorted_frames, sorted_frames, right=False)
    ranks[order] = torch.arange(order.numel(), device=roots.device) - first_of_frame
    keep = (ranks < max_layers) & (counts >= min_pixels)
    comp_label = torch.where(keep, ranks, torch.full_like(ranks, -1))
    labels = torch.full((n, h, w), -1, dtype=torch.long, device=roots.device)
    labels[has] = comp_label[inverse]
    num = torch.zeros(n, dtype=torch.long, device=roots.device)
    if keep.any():
        num.scatter_reduce_(0, comp_frame[keep], ranks[keep] + 1, reduce="amax")
    return labels, num


def fill_boundaries(labels: Tensor, depth: Tensor, max_step: float, passes: int = 2) -> Tensor:
    """Give unlabeled valid pixels the label of the 4-neighbour closest in log depth, if close.

    Pixels on a crease belong to one of the two surfaces; pixels on a depth jump whose depth
    matches neither side stay unlabeled.
    """
    ld = torch.log(depth.clamp_min(1e-12))
    for _ in range(passes):
        lab_p = F.pad(labels[:, None].double(), (1, 1, 1, 1), value=-1)[:, 0].long()
        ld_p = F.pad(ld[:, None], (1, 1, 1, 1), value=0)[:, 0]
        best_diff = torch.full_like(ld, float("inf"))
        best_lab = labels.clone()
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            nb_lab = lab_p[:, dy : dy + labels.shape[1], dx : dx + labels.shape[2]]
            nb_ld = ld_p[:, dy : dy + labels.shape[1], dx : dx + labels.shape[2]]
            diff = (nb_ld - ld).abs()
            better = (nb_lab >= 0) & (diff < best_diff)
            best_diff = torch.where(better, diff, best_diff)
            best_lab = torch.where(better, nb_lab, best_lab)
        take = (labels < 0) & (depth > 0) & (best_diff < max_step)
        labels = torch.where(take, best_lab, labels)
    return labels


def segment_depth_layers(
    depth: Tensor,
    stride: int = 2,
    crease: float = 0.012,
    max_step: float = 0.25,
    max_layers: int = 24,
    min_fraction: float = 0.004,
    backend: str = "auto",
) -> Layers:
    """Segment (N, H, W) depth maps into at most ``max_layers`` layers each (on a strided grid).

    ``backend``: "scipy" (CPU), "torch" (any device) or "auto" (scipy on the CPU, else torch).
    """
    d = strided_depth(depth, stride)
    member, conn_r, conn_d = cut_mask(d, crease, max_step)
    if backend == "auto":
        backend = "scipy" if d.device.type == "cpu" else "torch"
    cc = connected_components_scipy if backend == "scipy" else connected_components_torch
    roots = cc(member, conn_r, conn_d)
    min_pixels = max(1, int(min_fraction * d.shape[1] * d.shape[2]))
    labels, num = relabel(roots, max_layers, min_pixels)
    labels = fill_boundaries(labels, d, max_step * 0.2)
    return Layers(labels, num, d, stride)


def upsample_labels(labels: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Nearest-neighbour upsampling of a strided map (N, h, w) to (N, H, W) (labels or scales);
    the border rows/columns the strided grid did not cover copy their neighbours."""
    if stride == 1:
        return labels
    h, w = labels.shape[1] * stride, labels.shape[2] * stride
    src = labels[:, None].float() if not labels.is_floating_point() else labels[:, None]
    up = F.interpolate(src, size=(h, w), mode="nearest")
    if (h, w) != (height, width):
        up = F.pad(up, (0, width - w, 0, height - h), mode="replicate")
    up = up[:, 0]
    return up if labels.is_floating_point() else up.round().to(labels.dtype)
