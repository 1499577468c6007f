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
import torch.nn.functional as F
from torch import Tensor

from laser_plugin.geometry.camera import invert_rigid
from laser_plugin.geometry.robust import group_counts, robust_scale


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
    node_prior: Tensor | None = None
    """(L, M) with confidence fusion: mean confidence (precision) of the earlier estimate that
    reached each node, 0 where unreached; the fused estimate's precision is this plus the new
    window's own confidence (``layer_fusion="accumulated"`` carries it to the next window)."""


def _pair_codes(lab_a: Tensor, lab_b: Tensor, m: int) -> Tensor:
    """(F, P) labels in [-1, m) of two maps per frame -> (F, P) pair codes in [0, F (m+1)^2).

    Code ``(f (m+1) + a + 1) (m+1) + b + 1``: -1 ("no layer") is a label like any other, so one
    histogram gives the pair counts and both areas.
    """
    m1 = m + 1
    off = (torch.arange(lab_a.shape[0], device=lab_a.device) * (m1 * m1))[:, None]
    return (lab_a + 1) * m1 + (lab_b + 1) + off


def _pair_iou(codes: Tensor, num_frames: int, m: int) -> tuple[Tensor, Tensor]:
    """IoU of every (frame, a, b) label pair from :func:`_pair_codes`.

    Returns (inter (F, M, M), iou (F, M, M)) over labels 0..M-1 (the "none" row/column dropped).
    """
    m1 = m + 1
    size = num_frames * m1 * m1
    hist = group_counts(codes.reshape(-1), size).view(num_frames, m1, m1).double()
    inter = hist[:, 1:, 1:]
    area_a = hist[:, 1:, :].sum(-1)  # every pixel of a, whatever b is there
    area_b = hist[:, :, 1:].sum(-2)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    return inter, iou


def _box_sum(x: Tensor, r: int) -> Tensor:
    """Sum of (N, h, w) ``x`` over the (2r+1)^2 box around each pixel (clipped at the borders),
    by prefix sums along each axis (edge-replicated, so every box is two slices): O(pixels)
    whatever the radius."""
    h, w = x.shape[-2:]
    c = F.pad(F.pad(x.cumsum(2), (1, 0)), (r, r), mode="replicate")
    rows = c[:, :, 2 * r + 1 : 2 * r + 1 + w] - c[:, :, :w]
    c = F.pad(F.pad(rows.cumsum(1), (0, 0, 1, 0))[:, None], (0, 0, r, r), mode="replicate")[:, 0]
    return c[:, 2 * r + 1 : 2 * r + 1 + h] - c[:, :h]


def landing_index(
    depth: Tensor,
    pose_src: Tensor,
    pose_dst: Tensor,
    k_src: Tensor,
    k_dst: Tensor,
    pixels: Tensor | None = None,
) -> Tensor:
    """Where the pixels of B source maps land in their destination cameras, as flat indices.

    depth (B, h, w); poses (B, 4, 4) camera-to-world; intrinsics (B, 3, 3) for (h, w);
    ``pixels`` (P,) flat indices of the source pixels to project (default: all h*w).
    Returns (B, P) int64: ``v * w + u`` of the landing pixel, or ``h * w`` (a spare slot past
    the end) where the pixel has no depth, lands behind the camera or outside the image.
    """
    b, h, w = depth.shape
    dt = torch.float64
    idx = torch.arange(h * w, device=depth.device) if pixels is None else pixels
    z = depth.reshape(b, -1)[:, idx].to(dt)
    k_src, k_dst = k_src.to(dt), k_dst.to(dt)
    x = ((idx % w).to(dt) - k_src[:, 0, 2, None]) / k_src[:, 0, 0, None] * z
    y = ((idx // w).to(dt) - k_src[:, 1, 2, None]) / k_src[:, 1, 1, None] * z
    rel = invert_rigid(pose_dst.to(dt)) @ pose_src.to(dt)
    p = torch.stack([x, y, z], -1) @ rel[:, :3, :3].transpose(-1, -2) + rel[:, None, :3, 3]
    zc = p[..., 2]
    zs = zc.clamp_min(1e-9)
    uu = torch.round(k_dst[:, 0, 0, None] * p[..., 0] / zs + k_dst[:, 0, 2, None]).clamp(-1, w)
    vv = torch.round(k_dst[:, 1, 1, None] * p[..., 1] / zs + k_dst[:, 1, 2, None]).clamp(-1, h)
    uu, vv = uu.long(), vv.long()
    ok = (z > 0) & (zc > 0) & (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
    return torch.where(ok, vv * w + uu, h * w)


def _write_labels(labels: Tensor, target: Tensor, h: int, w: int) -> Tensor:
    """(N,) labels written at (N,) flat targets of an (h, w) map (``h * w``: dropped), -1
    elsewhere: one indexed write into a spare slot past the end, no data-dependent shapes."""
    out = torch.full((h * w + 1,), -1, dtype=labels.dtype, device=labels.device)
    out[target] = labels
    return out[: h * w].view(h, w)


def scatter_labels(labels: Tensor, landing: Tensor) -> Tensor:
    """Forward-warp an (h, w) label map along a :func:`landing_index` row (h*w,): labelled
    pixels (>= 0) that land write their label there; -1 elsewhere. No host sync on a GPU."""
    h, w = labels.shape
    lab = labels.reshape(-1)
    return _write_labels(lab, torch.where(lab >= 0, landing, h * w), h, w)


def _warp_subset(
    labels: Tensor,
    depth: Tensor,
    pose_src: Tensor,
    pose_dst: Tensor,
    k_src: Tensor,
    k_dst: Tensor,
    dense: bool | None = None,
) -> Tensor:
    """Forward-warp the labelled pixels (>= 0) of one (h, w) map into another camera; -1 elsewhere.

    On the CPU only the labelled pixels are projected (few, in the skip-link loop). On a GPU
    (``dense``, default: not on the CPU) every pixel is, and those that must not land write into
    the spare slot: no data-dependent shapes, so no host sync per call. Where two pixels land on
    one, the CPU keeps the later in row-major order either way; on a GPU which write wins is
    unspecified (as for any indexed write).
    """
    poses_k = (pose_src[None], pose_dst[None], k_src[None], k_dst[None])
    if dense if dense is not None else labels.device.type != "cpu":
        return scatter_labels(labels, landing_index(depth[None], *poses_k)[0])
    h, w = labels.shape
    lab = labels.reshape(-1)
    idx = torch.nonzero((lab >= 0) & (depth.reshape(-1) > 0)).squeeze(1)
    if idx.numel() == 0:
        return torch.full_like(labels, -1)
    return _write_labels(lab[idx], landing_index(depth[None], *poses_k, pixels=idx)[0], h, w)


def warp_labels(labels: Tensor, depth: Tensor, poses: Tensor, intrinsics: Tensor) -> Tensor:
    """Forward-warp labels of frame t into frame t+1 with the window's geometry.

    labels, depth: (L, h, w); poses (L, 4, 4) camera-to-world; intrinsics (L, 3, 3) for (h, w).
    Returns (L-1, h, w) labels of frames 0..L-2 as seen from frames 1..L-1 (-1 where none landed).

    A pixel (u, v) with depth d lands at ``K' (R K^-1 [u v 1]^T d + t)``: the matrix ``A = K' R
    K^-1`` acts on the pixel grid alone, so the per-pixel work is three multiply-adds and a divide.
    """
    n, h, w = labels.shape
    dt = torch.float64 if depth.dtype == torch.float64 else torch.float32
    rel = invert_rigid(poses[1:].double()) @ poses[:-1].double()  # cam_t -> cam_{t+1}
    k_next, k_inv = intrinsics[1:].double(), torch.linalg.inv(intrinsics[:-1].double())
    a = (k_next @ rel[:, :3, :3] @ k_inv).to(dt)  # (n-1, 3, 3)
    b = (k_next @ rel[:, :3, 3:]).to(dt)[..., 0]  # (n-1, 3)
    u0 = torch.arange(w, device=depth.device, dtype=dt)
    v0 = torch.arange(h, device=depth.device, dtype=dt)
    d = depth[:-1].to(dt)

    def row(i: int) -> Tensor:  # (n-1, h, w): d * (A_i0 u + A_i1 v + A_i2) + b_i
        g = a[:, i, 0, None, None] * u0 + (
            a[:, i, 1, None, None] * v0[:, None] + a[:, i, 2, None, None]
        )
        return torch.addcmul(b[:, i, None, None], d, g)

    z = row(2)
    zs = z.clamp_min(1e-9)
    u = torch.round(row(0).div_(zs)).clamp_(-1, w).long()
    v = torch.round(row(1).div_(zs)).clamp_(-1, h).long()
    src = labels[:-1]
    ok = (src >= 0) & (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & (d > 0)
    # Pixels that do not land are written to a spare slot past the end.
    frame = (torch.arange(n - 1, device=labels.device) * (h * w))[:, None, None]
    target = torch.where(ok, frame + v * w + u, torch.full_like(u, (n - 1) * h * w))
    out = torch.full(((n - 1) * h * w + 1,), -1, dtype=labels.dtype, device=labels.device)
    out[target.reshape(-1)] = src.reshape(-1)
    return out[:-1].view(n - 1, h, w)


#: Log-depth distance from the mean of the labelled pixels around it beyond which an unlabelled
#: pixel is not filled from them (keeps the Sim(3) scale). Issue 20: small objects no layer kept
#: took the correction of the wall behind them (on the noise sweep's stop_and_go at 1% noise,
#: consistency 0.0621 -> 0.0589; 0.05 gave 0.0594).
FILL_DEPTH_TOL = 0.1


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
    intra_hops: int = 1,
    fill_radius: int = 0,
    dense_warp: bool | None = None,
) -> LayerAlignment:
    """Per-layer scales for a window registered by Sim(3) (all on the strided grid).

    With ``conf_prev`` (O, h, w) and ``conf_new`` (L, h, w), absolute model confidences, each
    inter-window edge is fused instead of imposed (an extension beyond the paper): the scale
    ``s_e`` becomes ``s_e ** (c_prev / (c_prev + c_new))`` with the mean confidences of the
    shared pixels, so a layer the new window sees much more reliably keeps more of its own
    depth. Without them, every edge imposes the earlier estimate (the paper). ``node_prior`` then
    reports the earlier estimate's mean confidence per node, for callers that accumulate it.

    ``intra_hops`` > 1 adds skip links: a layer of frame t+1 that no adjacent-frame edge reached
    is linked to a reached layer of frame t+1-k (k = 2..intra_hops) whose chain ended there,
    warped directly, so one frame where segmentation glitched or one weak IoU does not end the
    chain for the rest of the window. ``fill_radius`` > 0: unlabelled pixels take the mean
    log-scale of the labelled pixels within that radius instead of their frame's mean, unless
    their depth is far from those pixels' (:data:`FILL_DEPTH_TOL`) or no labelled pixel is
    within the radius: then they keep scale 1 (the Sim(3) scale).

    ``dense_warp`` (default: on a GPU) warps the skip links through one landing map per hop for
    the whole window instead of projecting the orphaned pixels per link (same result).

    labels_new, depth_new: (L, h, w) for the new window, its first O frames being the overlap;
    labels_prev, depth_prev: (O, h, w) final estimates of those overlap frames; poses (L, 4, 4)
    and intrinsics (L, 3, 3) of the new window (global frame, intrinsics for (h, w)).
    """
    n, h, w = labels_new.shape
    n_o = labels_prev.shape[0]
    dev = labels_new.device
    top = labels_new.max()
    if n_o:
        top = torch.maximum(top, labels_prev.max())
    m = max(int(top), 0) + 1  # one host sync: M sizes every table below
    acc_sum = torch.zeros(n * m, dtype=torch.float64, device=dev)
    acc_w = torch.zeros(n * m, dtype=torch.float64, device=dev)
    fuse = conf_prev is not None and conf_new is not None
    acc_prior = torch.zeros(n * m, dtype=torch.float64, device=dev) if fuse else None

    # Inter-window edges on the overlap frames.
    num_inter = 0
    if n_o > 0:
        codes = _pair_codes(labels_prev.reshape(n_o, -1), labels_new[:n_o].reshape(n_o, -1), m)
        inter, iou = _pair_iou(codes, n_o, m)
        is_edge = (iou > iou_threshold) & (inter >= min_pixels)
        edge_ids = torch.nonzero(is_edge.reshape(-1)).squeeze(1)  # flat (frame, a, b)
        num_inter = int(edge_ids.numel())
        if num_inter:
            m1 = m + 1
            f_e, a_e, b_e = edge_ids // (m * m), (edge_ids // m) % m, edge_ids % m
            lookup = torch.full((n_o * m1 * m1,), -1, dtype=torch.long, device=dev)
            lookup[(f_e * m1 + a_e + 1) * m1 + b_e + 1] = torch.arange(num_inter, device=dev)
            pix_edge = lookup[codes.reshape(-1)]
            sel = pix_edge >= 0
            grp = pix_edge[sel]
            fit = robust_scale(
                depth_prev.reshape(-1)[sel],
                depth_new[:n_o].reshape(-1)[sel],
                grp,
                num_inter,
                delta=huber_delta,
                iterations=iterations,
                with_residual=False,
                # A few hundred samples per edge pin its scale to well under 1% (the shared
                # pixels are thinned evenly, so every edge keeps its share).
                max_samples=32768,
            )
            ok = fit.count >= min_pixels
            node = (f_e * m + b_e)[ok]  # (frame, b) node of the new window
            wgt = iou.reshape(-1)[edge_ids[ok]]
            edge_scale = fit.scale[ok].double()
            if conf_prev is not None and conf_new is not None:
                cp = torch.zeros(num_inter, dtype=torch.float64, device=dev).index_add_(
                    0, grp, conf_prev.reshape(-1)[sel].double()
                )
                cn = torch.zeros(num_inter, dtype=torch.float64, device=dev).index_add_(
                    0, grp, conf_new[:n_o].reshape(-1)[sel].double()
                )
                frac = (cp / (cp + cn).clamp_min(1e-12))[ok]
                edge_scale = edge_scale**frac
                npix = group_counts(grp, num_inter).double().clamp_min(1)
                acc_prior.index_add_(0, node, wgt * (cp / npix)[ok])
            acc_sum.index_add_(0, node, wgt * edge_scale)
            acc_w.index_add_(0, node, wgt)

    # Intra-window edges, then propagation in frame order.
    num_intra = 0
    # Ablation "w/o E_intra" (intra_edges=False): no intra-window edges, so scales stay on the
    # overlap frames (which matter when they are re-emitted: LaserConfig.overlap_estimate="later").
    if n > 1 and n_o > 0 and intra_edges:
        src_lab = (
            warp_labels(labels_new, depth_new, poses, intrinsics) if intra_warp else labels_new[:-1]
        )
        codes = _pair_codes(src_lab.reshape(n - 1, -1), labels_new[1:].reshape(n - 1, -1), m)
        _, iou = _pair_iou(codes, n - 1, m)
        link_all = torch.where(iou > iou_threshold, iou, torch.zeros_like(iou))
        present = torch.zeros(n, m + 1, dtype=torch.bool, device=dev)
        present.scatter_(1, (labels_new.reshape(n, -1) % (m + 1)), True)  # -1 -> column m
        # The propagation is a chain of (M,)-vector steps that decide as they go which skip links
        # to try. On a GPU each step costs a dozen kernel launches and a host sync, and the
        # aligning thread is launch-bound (benchmarks/DECISIONS.md, "layer graph's propagation
        # chain on the host"): the chain runs on the host (one copy of the (L-1, M, M) links
        # there, one of the accumulators back); only the skip links' warps and IoUs stay on the
        # device.
        cpu = torch.device("cpu")
        acc_dev = (acc_sum, acc_w, acc_prior)
        link_all, present = link_all.to(cpu), present[:, :m].to(cpu)
        acc_sum, acc_w = acc_sum.view(n, m).to(cpu), acc_w.view(n, m).to(cpu)
        acc_prior = acc_prior.view(n, m).to(cpu) if fuse else None
        intra_count = int((link_all > 0).sum())
        has_successor = (link_all > 0).any(2)  # (L-1, M): the layer continues in frame t+1

        def add_links(src: int, dst: int, link: Tensor) -> None:
            w_src = acc_w[src]
            reached = w_src > 0
            link = link * reached[:, None]
            acc_sum[dst] += torch.where(reached, acc_sum[src] / w_src.clamp_min(1e-30), 0.0) @ link
            acc_w[dst] += reached.double() @ link
            if fuse:
                acc_prior[dst] += (
                    torch.where(reached, acc_prior[src] / w_src.clamp_min(1e-30), 0.0) @ link
                )

        # On a GPU, where each skip-link warp lands is computed once per hop for the window (a
        # few batched kernels) instead of per call (about 40 small kernels each, tens of calls
        # per window); the CPU warps only the few orphaned pixels.
        landing = {}
        if intra_warp and (dev.type != "cpu" if dense_warp is None else dense_warp):
            for k in range(2, min(intra_hops, n - 1) + 1):
                landing[k] = landing_index(
                    depth_new[: n - k],
                    poses[: n - k],
                    poses[k:],
                    intrinsics[: n - k],
                    intrinsics[k:],
                )
        for t in range(n - 1):
            add_links(t, t + 1, link_all[t])
            # Skip links: a layer of frame t+1 the chain missed (a frame where segmentation
            # glitched, one weak IoU) is linked to a reached layer of frame t+1-k whose chain
            # ended there (no adjacent successor), warped directly. Only those orphaned layers'
            # pixels are warped, so this costs little.
            for k in range(2, intra_hops + 1):
                s = t + 1 - k
                if s < 0:
                    break
                missed = acc_w[t + 1] == 0
                if not bool((missed & present[t + 1]).any()):
                    break
                orphan = (acc_w[s] > 0) & ~has_successor[s]
                if not bool(orphan.any()):
                    continue
                src = labels_new[s]
                orphan_dev = orphan.to(dev, non_blocking=True)
                src = torch.where((src >= 0) & orphan_dev[src.clamp_min(0)], src, -1)
                if k in landing:
                    src = scatter_labels(src, landing[k][s])
                elif intra_warp:
                    src = _warp_subset(
                        src,
                        depth_new[s],
                        poses[s],
                        poses[t + 1],
                        intrinsics[s],
                        intrinsics[t + 1],
                    )
                codes_k = _pair_codes(src.reshape(1, -1), labels_new[t + 1].reshape(1, -1), m)
                iou_k = _pair_iou(codes_k, 1, m)[1][0].to(cpu)  # the one sync of a skip link
                ok = (iou_k > iou_threshold) & orphan[:, None] & missed[None, :]
                if not bool(ok.any()):
                    continue
                add_links(s, t + 1, torch.where(ok, iou_k, torch.zeros_like(iou_k)))
                intra_count += int(ok.sum())
        num_intra = intra_count
        # Back into the device accumulators (on the CPU these are the same memory). Copies from
        # pageable host memory are staged at once, so they need not wait for the GPU.
        acc_sum = acc_dev[0].copy_(acc_sum.reshape(-1), non_blocking=True)
        acc_w = acc_dev[1].copy_(acc_w.reshape(-1), non_blocking=True)
        acc_prior = acc_dev[2].copy_(acc_prior.reshape(-1), non_blocking=True) if fuse else None

    reached = (acc_w > 0).view(n, m)
    node_scale = torch.where(
        acc_w > 0, acc_sum / acc_w.clamp_min(1e-30), torch.ones_like(acc_sum)
    ).view(n, m)
    node_scale = node_scale.to(depth_new.dtype)

    # Per-pixel scale; unlabelled pixels take their frame's area-weighted geometric mean.
    lab = labels_new.clamp_min(0)
    pix = torch.gather(node_scale, 1, lab.view(n, -1)).view(n, h, w)
    labelled = labels_new >= 0
    logs = torch.where(labelled, torch.log(pix), torch.zeros_like(pix)).sum((1, 2))
    cnt = labelled.sum((1, 2)).clamp_min(1)
    frame_mean = torch.exp(logs / cnt)
    pixel_scale = torch.where(labelled, pix, frame_mean[:, None, None].expand_as(pix))
    if fill_radius > 0:
        # Pixels without a layer are mostly the rims of surfaces (the crease test drops them) and
        # thin slivers of objects: the layers around them say more about their scale than the
        # whole frame does. Normalised convolution of log-scales over labelled pixels.
        lw = labelled.to(pix.dtype)
        ld = torch.log(depth_new.clamp_min(1e-12))
        # One box-sum pass over the maps (fewer calls).
        num, nd, den = _box_sum(torch.cat([torch.log(pix) * lw, ld * lw, lw]), fill_radius).split(n)
        local = torch.exp(num / den.clamp_min(1e-12))
        pixel_scale = torch.where(labelled | (den <= 0.5), pixel_scale, local)
        if FILL_DEPTH_TOL > 0:
            # A pixel whose depth is far from the labelled pixels around it is no rim of theirs
            # but something else (a small object no layer kept): it keeps the Sim(3) scale, as
            # an unreached layer does, instead of taking a surface's correction. So does one
            # with no labelled pixel around at all (nothing says it shares a layer's error).
            off = (den <= 0.5) | ((ld - nd / den.clamp_min(1e-12)).abs() > FILL_DEPTH_TOL)
            pixel_scale = torch.where(~labelled & off, torch.ones_like(pix), pixel_scale)
    node_prior = None
    if fuse:
        node_prior = torch.where(
            acc_w > 0, acc_prior / acc_w.clamp_min(1e-30), torch.zeros_like(acc_prior)
        )
        node_prior = node_prior.view(n, m).to(depth_new.dtype)
    return LayerAlignment(node_scale, reached, pixel_scale, num_inter, num_intra, node_prior)


# -- Is layer alignment doing anything? ---------------------------------------------------------

#: Below this mean fraction of pixels in a depth layer, a window's layer alignment has too little
#: to work with (issue 20: on noisy depth it silently fell back to plain Sim(3) stitching).
MIN_LAYER_COVERAGE = 0.3
#: This many consecutive windows (that have an overlap) without one inter-window layer edge: no
#: layer scale reaches the new frames, so the output is Sim(3) stitching.
EDGELESS_WINDOWS = 3


def _stat(stats, name: str, default: float = 0.0) -> float:
    """A field of a :class:`~laser_plugin.types.WindowStats` or of its summary.json record."""
    value = stats.get(name, default) if isinstance(stats, dict) else getattr(stats, name, default)
    return default if value is None else float(value)


class LayerAlignmentWatch:
    """Watches the windows of a run and says, once, when layer alignment is effectively off.

    Feed it each window's :class:`~laser_plugin.types.WindowStats` (or summary.json record) in
    order; :meth:`update` returns a one-line warning the first time either holds, else None:

    - fewer than ``min_coverage`` of a window's pixels are in a depth layer;
    - ``edgeless_windows`` consecutive windows with an overlap formed no inter-window edge.

    Pure: no printing, no engine state (the CLI prints what it returns). ``enabled=False`` (layer
    alignment switched off on purpose) never warns.
    """

    def __init__(
        self,
        enabled: bool = True,
        min_coverage: float = MIN_LAYER_COVERAGE,
        edgeless_windows: int = EDGELESS_WINDOWS,
    ):
        self.enabled = enabled
        self.min_coverage = min_coverage
        self.edgeless_windows = edgeless_windows
        self.edgeless = 0
        self.message: str | None = None

    @staticmethod
    def _noise_note(stats) -> str:
        noise = _stat(stats, "depth_noise")
        # The measured level is about 1.5x the relative per-pixel noise (layers.robust_cut_mask).
        return f"; depth noise about {100 * noise / 1.5:.1f}% per pixel" if noise > 0 else ""

    def update(self, stats) -> str | None:
        """The warning, the first time a window shows layer alignment is off; else None."""
        if not self.enabled or self.message is not None:
            return None
        window = int(_stat(stats, "window"))
        coverage = _stat(stats, "layer_coverage", 1.0)
        tail = " - the output is plain Sim(3) stitching there (see WindowStats.layer_coverage)"
        if coverage < self.min_coverage:
            self.message = (
                f"layer alignment is effectively off: window {window} has only "
                f"{100 * coverage:.0f}% of its pixels in a depth layer{self._noise_note(stats)}"
                + tail
            )
            return self.message
        if window > 0:  # window 0 has no earlier window to link to
            self.edgeless = self.edgeless + 1 if _stat(stats, "num_inter_edges") == 0 else 0
            if self.edgeless >= self.edgeless_windows:
                self.message = (
                    f"layer alignment is effectively off: no depth layer linked across windows "
                    f"in windows {window - self.edgeless + 1}-{window}"
                    f"{self._noise_note(stats)}" + tail
                )
                return self.message
        return None


def layer_summary(records, enabled: bool = True) -> dict:
    """What layer alignment did over a run, from its windows' stats or summary.json records.

    Returns mean layers per frame, mean fraction of pixels in a layer, inter-window edges per
    window (windows with an overlap), the number of those without any, the median measured depth
    noise, and the watch's warning (None if layer alignment worked or was switched off)."""
    records = list(records)
    watch = LayerAlignmentWatch(enabled)
    for r in records:
        watch.update(r)
    linked = [r for r in records if _stat(r, "window") > 0]
    noise = sorted(_stat(r, "depth_noise") for r in records)

    def mean(vals: list[float]) -> float | None:
        return round(sum(vals) / len(vals), 4) if vals else None

    return {
        "enabled": enabled,
        "layers_per_frame": mean([_stat(r, "num_layers") for r in records]),
        "layer_coverage": mean([_stat(r, "layer_coverage") for r in records]),
        "inter_edges_per_window": mean([_stat(r, "num_inter_edges") for r in linked]),
        "windows_without_inter_edges": sum(_stat(r, "num_inter_edges") == 0 for r in linked),
        "depth_noise": round(noise[len(noise) // 2], 5) if noise else None,
        "warning": watch.message,
    }
