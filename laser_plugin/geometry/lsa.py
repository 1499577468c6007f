"""Layer-wise scale alignment (LASER §3): the depth-layer graph and per-layer scales.

Nodes are (frame, layer) of the new window, on the strided grid of :mod:`layers`. Inter-window
edges link a layer of the previous (final) estimate of an overlap frame to a layer of the new
window on the same frame when their masks overlap with IoU > tau; each gets a scale by IRLS-Huber
on the depths of the shared pixels. Intra-window edges link the same surface in adjacent frames of
the new window (masks warped with the window's own geometry, then IoU > tau). Scales flow from the
overlap frames along intra edges to frames no earlier window saw; a node's scale is the
IoU-weighted mean of what reaches it, 1 if nothing does. Depth is then scaled along camera rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from laser_plugin.geometry.camera import (
    invert_rigid,
    project_points,
    transform_points,
    unproject_depth,
)
from laser_plugin.geometry.robust import robust_scale


@dataclass
class LayerAlignment:
    node_scale: Tensor
    """(L, M) scale of each (frame, layer) node; 1 where unreached."""
    reached: Tensor
    """(L, M) True where some edge reached the node."""
    pixel_scale: Tensor
    """(L, h, w) scale per strided pixel (unlabelled pixels get their frame's mean)."""
    num_inter_edges: int
    num_intra_edges: int


def _pair_iou(lab_a: Tensor, lab_b: Tensor, frame: Tensor, num_frames: int, m: int):
    """IoU of every (frame, a, b) label pair; lab_a/lab_b/frame are flat (N,) with -1 = none.

    Returns (inter (F*M*M,), iou (F*M*M,)).
    """
    size = num_frames * m * m
    both = (lab_a >= 0) & (lab_b >= 0)
    pair = frame[both] * m * m + lab_a[both] * m + lab_b[both]
    inter = torch.bincount(pair, minlength=size).double()
    ha = lab_a >= 0
    area_a = torch.bincount(frame[ha] * m + lab_a[ha], minlength=num_frames * m).double()
    hb = lab_b >= 0
    area_b = torch.bincount(frame[hb] * m + lab_b[hb], minlength=num_frames * m).double()
    fa = torch.arange(size, device=lab_a.device)
    f, a, b = fa // (m * m), (fa // m) % m, fa % m
    union = area_a[f * m + a] + area_b[f * m + b] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    return inter, iou


def warp_labels(labels: Tensor, depth: Tensor, poses: Tensor, intrinsics: Tensor) -> Tensor:
    """Forward-warp labels of frame t into frame t+1 with the window's geometry.

    labels, depth: (L, h, w); poses (L, 4, 4) camera-to-world; intrinsics (L, 3, 3) for (h, w).
    Returns (L-1, h, w) labels of frames 0..L-2 as seen from frames 1..L-1 (-1 where none landed).
    """
    n, h, w = labels.shape
    pts = unproject_depth(depth[:-1], intrinsics[:-1]).reshape(n - 1, -1, 3)
    rel = invert_rigid(poses[1:]) @ poses[:-1]  # cam_t -> cam_{t+1}
    uv, z = project_points(transform_points(rel, pts), intrinsics[1:])
    u = torch.round(uv[..., 0]).long()
    v = torch.round(uv[..., 1]).long()
    src = labels[:-1].reshape(n - 1, -1)
    ok = (src >= 0) & (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & (depth[:-1].reshape(n - 1, -1) > 0)
    out = torch.full((n - 1, h * w), -1, dtype=labels.dtype, device=labels.device)
    frame = torch.arange(n - 1, device=labels.device)[:, None].expand_as(u)
    flat = out.view(-1)
    flat[(frame * h * w + v * w + u)[ok]] = src[ok]
    return out.view(n - 1, h, w)


def align_layers(
    labels_new: Tensor,
    depth_new: Tensor,
    labels_prev: Tensor,
    depth_prev: Tensor,
    poses: Tensor,
    intrinsics: Tensor,
    iou_threshold: float = 0.3,
    intra_edges: bool = True,
    intra_warp: bool = True,
    huber_delta: float = 0.05,
    iterations: int = 10,
    min_pixels: int = 32,
    conf_prev: Tensor | None = None,
    conf_new: Tensor | None = None,
) -> LayerAlignment:
    """Per-layer scales for a window registered by Sim(3) (all on the strided grid).

    With ``conf_prev`` (O, h, w) and ``conf_new`` (L, h, w), absolute model confidences, each
    inter-window edge is fused instead of imposed (an extension beyond the paper): the scale
    ``s_e`` becomes ``s_e ** (c_prev / (c_prev + c_new))`` with the mean confidences of the
    shared pixels, so a layer the new window sees much more reliably keeps more of its own
    depth. Without them, every edge imposes the earlier estimate (the paper).

    labels_new, depth_new: (L, h, w) for the new window, its first O frames being the overlap;
    labels_prev, depth_prev: (O, h, w) final estimates of those overlap frames; poses (L, 4, 4)
    and intrinsics (L, 3, 3) of the new window (global frame, intrinsics for (h, w)).
    """
    n, h, w = labels_new.shape
    n_o = labels_prev.shape[0]
    dev = labels_new.device
    m = int(max(labels_new.max().item(), labels_prev.max().item() if n_o else -1, 0)) + 1
    acc_sum = torch.zeros(n * m, dtype=torch.float64, device=dev)
    acc_w = torch.zeros(n * m, dtype=torch.float64, device=dev)

    # Inter-window edges on the overlap frames.
    num_inter = 0
    if n_o > 0:
        la = labels_prev.reshape(-1)
        lb = labels_new[:n_o].reshape(-1)
        frame = torch.arange(n_o, device=dev).repeat_interleave(h * w)
        inter, iou = _pair_iou(la, lb, frame, n_o, m)
        is_edge = (iou > iou_threshold) & (inter >= min_pixels)
        edge_ids = torch.nonzero(is_edge).squeeze(1)
        num_inter = int(edge_ids.numel())
        if num_inter:
            lookup = torch.full((n_o * m * m,), -1, dtype=torch.long, device=dev)
            lookup[edge_ids] = torch.arange(num_inter, device=dev)
            both = (la >= 0) & (lb >= 0)
            pix_edge = torch.full_like(la, -1)
            pix_edge[both] = lookup[frame[both] * m * m + la[both] * m + lb[both]]
            sel = pix_edge >= 0
            fit = robust_scale(
                depth_prev.reshape(-1)[sel], depth_new[:n_o].reshape(-1)[sel], pix_edge[sel],
                num_inter, delta=huber_delta, iterations=iterations,
            )
            ok = fit.count >= min_pixels
            e = edge_ids[ok]
            node = (e // (m * m)) * m + e % m  # (frame, b) node of the new window
            wgt = iou[e]
            edge_scale = fit.scale[ok].double()
            if conf_prev is not None and conf_new is not None:
                grp = pix_edge[sel]
                cp = torch.zeros(num_inter, dtype=torch.float64, device=dev).index_add_(
                    0, grp, conf_prev.reshape(-1)[sel].double())
                cn = torch.zeros(num_inter, dtype=torch.float64, device=dev).index_add_(
                    0, grp, conf_new[:n_o].reshape(-1)[sel].double())
                frac = (cp / (cp + cn).clamp_min(1e-12))[ok]
                edge_scale = edge_scale ** frac
            acc_sum.index_add_(0, node, wgt * edge_scale)
            acc_w.index_add_(0, node, wgt)

    # Intra-window edges, then propagation in frame order.
    num_intra = 0
    # Ablation "w/o E_intra" (intra_edges=False): no intra-window edges, so scales stay on the
    # overlap frames (which matter when they are re-emitted: LaserConfig.overlap_estimate="later").
    if n > 1 and n_o > 0 and intra_edges:
        src_lab = warp_labels(labels_new, depth_new, poses, intrinsics) if intra_warp else labels_new[:-1]
        frame = torch.arange(n - 1, device=dev).repeat_interleave(h * w)
        _, iou = _pair_iou(src_lab.reshape(-1), labels_new[1:].reshape(-1), frame, n - 1, m)
        iou = iou.view(n - 1, m, m)
        num_intra = int((iou > iou_threshold).sum())
        for t in range(n - 1):
            val_w = acc_w[t * m : (t + 1) * m]
            reached = val_w > 0
            if not reached.any():
                continue
            val = acc_sum[t * m : (t + 1) * m] / val_w.clamp_min(1e-30)
            link = torch.where((iou[t] > iou_threshold) & reached[:, None], iou[t], torch.zeros_like(iou[t]))
            acc_sum[(t + 1) * m : (t + 2) * m] += (link * val[:, None]).sum(0)
            acc_w[(t + 1) * m : (t + 2) * m] += link.sum(0)

    reached = (acc_w > 0).view(n, m)
    node_scale = torch.where(acc_w > 0, acc_sum / acc_w.clamp_min(1e-30), torch.ones_like(acc_sum)).view(n, m)
    node_scale = node_scale.to(depth_new.dtype)

    # Per-pixel scale; unlabelled pixels take their frame's area-weighted geometric mean.
    lab = labels_new.clamp_min(0)
    pix = torch.gather(node_scale, 1, lab.view(n, -1)).view(n, h, w)
    labelled = labels_new >= 0
    logs = torch.where(labelled, torch.log(pix), torch.zeros_like(pix)).sum((1, 2))
    cnt = labelled.sum((1, 2)).clamp_min(1)
    frame_mean = torch.exp(logs / cnt)
    pixel_scale = torch.where(labelled, pix, frame_mean[:, None, None].expand_as(pix))
    return LayerAlignment(node_scale, reached, pixel_scale, num_inter, num_intra)
