"""Run the streaming engine over dataset sequences and score it against ground truth.

For each sequence: stream its frames through :class:`StreamingReconstructor`, and as each final
frame arrives collect (a) its depth resized to the ground truth's resolution on valid
ground-truth pixels, (b) its pose, (c) on keyframes, pixel-corresponding predicted and
ground-truth world points. Then score once per sequence (one depth alignment per sequence, one
Sim(3) for the trajectory, one Sim(3) + ICP for the point map) and average over sequences:
depth metrics weighted by valid-pixel count, pose and point-map metrics by plain mean.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from laser_plugin.config import LaserConfig
from laser_plugin.datasets.base import Sequence
from laser_plugin.errors import InputError
from laser_plugin.eval.pointmap import backproject, evaluate_pointmaps
from laser_plugin.eval.protocol import PROTOCOLS, Protocol
from laser_plugin.metrics import DepthAlign, ate_rmse, depth_metrics, rpe, weighted_mean
from laser_plugin.types import ReconstructedFrame


@dataclass
class EvalOptions:
    """What to score and how (the dataset's protocol supplies the defaults)."""

    depth_align: DepthAlign = "scale"
    """One per-sequence alignment of predicted depth to ground truth (metrics.md)."""
    pointmap_stride: int = 4
    """Pixel stride when collecting point-map points (bounds memory; the metrics are means)."""
    pointmap_max_points: int = 200_000
    """Random subsample of corresponding points before alignment and scoring."""
    icp_threshold: float = 0.1
    """ICP correspondence distance for the point map, ground-truth units (the protocol's 0.1)."""
    rpe_delta: int = 1
    """RPE step in frames."""


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) depth → (H, W) by bilinear interpolation that never mixes in invalid (0) pixels.

    A target pixel is valid only where all its source neighbours are (the interpolated validity
    mask is ~1); elsewhere it is 0.
    """
    if depth.shape == tuple(size):
        return depth.astype(np.float32, copy=False)
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None, None]
    valid = ((d > 0) & torch.isfinite(d)).float()
    d = torch.where(valid > 0, d, torch.zeros_like(d))
    num = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
    den = F.interpolate(valid, size=size, mode="bilinear", align_corners=False)
    out = torch.where(den > 0.999, num / den.clamp_min(1e-6), torch.zeros_like(num))
    return out[0, 0].numpy()


def resize_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) → (h, w) by nearest pixel centres (keeps ground-truth values exact)."""
    h0, w0 = depth.shape
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(int), h0 - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(int), w0 - 1)
    return depth[rows[:, None], cols[None, :]]


def scale_intrinsics(k: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from ``src`` (H, W) to ``dst`` (pixel-centre convention)."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    out = np.array(k, dtype=np.float64)
    out[0, :] *= sx
    out[1, :] *= sy
    out[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return out


@dataclass
class _Collected:
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    depth_pred: list[np.ndarray] = field(default_factory=list)
    depth_gt: list[np.ndarray] = field(default_factory=list)
    pts_pred: list[np.ndarray] = field(default_factory=list)
    pts_gt: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    windows: int = 0


def _collect_frame(
    out: _Collected, seq: Sequence, frame, protocol: Protocol, opts: EvalOptions
) -> None:
    i = frame.index
    out.poses[i] = np.asarray(frame.cam_to_world, dtype=np.float64)
    if not seq.has_depth or not (protocol.depth or protocol.pointmap):
        return
    gt = seq.load_depth(i)
    gt_ok = (gt > 0) & np.isfinite(gt)
    if protocol.depth_cap is not None:
        gt_ok &= gt < protocol.depth_cap
    if protocol.depth:
        pred = resize_depth(frame.depth, gt.shape)
        out.depth_pred.append(pred[gt_ok])
        out.depth_gt.append(gt[gt_ok])
    has_cameras = seq.has_poses and seq.intrinsics is not None
    if protocol.pointmap and has_cameras and seq.pose_valid[i]:
        size = frame.depth.shape
        gt_small = resize_nearest(np.where(gt_ok, gt, 0.0), size)
        k_gt = scale_intrinsics(seq.intrinsics[i], gt.shape, size)
        s = opts.pointmap_stride
        ok = (gt_small > 0) & (frame.depth > 0) & np.isfinite(frame.depth)
        ok = ok[::s, ::s]
        pts_gt = backproject(gt_small, k_gt, seq.cam_to_world[i])[::s, ::s][ok]
        pts_pred = backproject(frame.depth, frame.intrinsics, frame.cam_to_world)[::s, ::s][ok]
        out.pts_gt.append(pts_gt)
        out.pts_pred.append(pts_pred)


class _Latest:
    """A sink keeping each frame as last sent (``on_frame``, then loop corrections), without
    its image and confidence: what scoring reads (index, depth, pose, intrinsics)."""

    def __init__(self) -> None:
        self.frames: dict[int, ReconstructedFrame] = {}

    def _keep(self, f: ReconstructedFrame) -> None:
        self.frames[f.index] = dataclasses.replace(
            f, image=_EMPTY_IMAGE, conf=_EMPTY, layers=None, source_image=None
        )

    def on_frame(self, frame: ReconstructedFrame) -> None:
        self._keep(frame)

    def on_correction(self, frames: list[ReconstructedFrame]) -> None:
        for f in frames:
            self._keep(f)

    def close(self) -> None:
        pass


_EMPTY_IMAGE = np.zeros((0, 0, 3), np.uint8)
_EMPTY = np.zeros((0, 0), np.float32)


def evaluate_sequence(
    seq: Sequence,
    model,
    config: LaserConfig,
    protocol: Protocol,
    opts: EvalOptions | None = None,
    loop_closure: bool = False,
) -> dict[str, float]:
    """Reconstruct one sequence with ``model`` under ``config`` and score it.

    ``loop_closure``: as ``laser run`` (its default): frames a closed loop moved are scored as
    corrected, so the stream is scored once it has ended (``fps`` is then the whole stream's)."""
    from laser_plugin.session import build_engine

    rec = build_engine(model, config, loop_closure=loop_closure)  # as `laser run` builds it
    hooks = rec.hooks
    if not hooks:
        result = score_frames(seq, rec.run(seq.iter_images()), protocol, opts)
    else:
        latest = _Latest()
        t0 = time.perf_counter()
        try:
            for _ in rec.run(seq.iter_images(), [latest]):
                pass
        finally:
            hooks[0].cleanup()
        seconds = time.perf_counter() - t0
        result = score_frames(
            seq, [latest.frames[i] for i in sorted(latest.frames)], protocol, opts
        )
        result["fps"] = len(latest.frames) / max(seconds, 1e-9)
        result["loops_accepted"] = hooks[0].counts["accepted"]
    result["windows"] = int(rec.num_windows)
    return result


def score_frames(
    seq: Sequence,
    frames: Iterable,
    protocol: Protocol,
    opts: EvalOptions | None = None,
) -> dict[str, float]:
    """Score a stream of reconstructed frames (frame ``index`` i = frame i of ``seq``).

    ``frames`` may be the engine's live generator (its time is measured as ``fps``) or the
    frames of a saved run directory.
    """
    opts = opts or EvalOptions()
    out = _Collected()
    stream = iter(frames)
    n = len(seq)
    while True:
        t0 = time.perf_counter()
        frame = next(stream, None)
        out.seconds += time.perf_counter() - t0
        if frame is None:
            break
        if not 0 <= frame.index < n:
            raise InputError(
                f"{seq.name}: the reconstruction has frame {frame.index} but the sequence has {n} frames"
            )
        _collect_frame(out, seq, frame, protocol, opts)
    if sorted(out.poses) != list(range(n)):
        raise InputError(
            f"{seq.name}: {len(out.poses)} reconstructed frames but the sequence has {n} frames"
        )
    result: dict[str, float] = {"frames": n, "fps": n / max(out.seconds, 1e-9)}
    if protocol.depth and out.depth_gt:
        m = depth_metrics(
            np.concatenate(out.depth_pred),
            np.concatenate(out.depth_gt),
            method=opts.depth_align,
            clip_max=protocol.clip_max,
        )
        result.update({"abs_rel": m["abs_rel"], "delta_1_25": m["delta_1_25"]})
        result.update({"depth_scale": m["scale"], "depth_pixels": m["num_pixels"]})
    if protocol.pose:
        _warn_missing_poses(seq)
    if protocol.pose and seq.has_poses:
        valid = seq.pose_valid
        if valid.sum() >= 3:
            est = np.stack([out.poses[i] for i in range(n)])[valid]
            gt = seq.cam_to_world[valid]
            result["ate"] = ate_rmse(est, gt)
            if len(est) > opts.rpe_delta:
                r = rpe(est, gt, delta=opts.rpe_delta)
                result["rpe_trans"], result["rpe_rot_deg"] = r.trans_rmse, r.rot_rmse_deg
    if protocol.pointmap and out.pts_gt:
        scores, _ = evaluate_pointmaps(
            np.concatenate(out.pts_pred),
            np.concatenate(out.pts_gt),
            icp_threshold=opts.icp_threshold,
            max_points=opts.pointmap_max_points,
        )
        result.update({k: v for k, v in scores.as_dict().items() if k in POINTMAP_KEYS})
    return result


def _warn_missing_poses(seq: Sequence) -> None:
    """Say when the ground truth cannot score the trajectory (ATE/RPE would read "-" with no
    reason) or scores only part of it: a malformed or mismatched ground-truth file."""
    n = len(seq)
    have = int(seq.pose_valid.sum())
    if not seq.has_poses:
        why = "the sequence has no ground-truth poses"
    elif have < 3:
        why = (
            f"only {have} of its {n} frames have a finite ground-truth pose (a malformed "
            "ground-truth file, or its timestamps do not match the frames')"
        )
    elif have < n / 2:
        warnings.warn(
            f"{seq.name}: ATE/RPE use only the {have} of {n} frames that have a ground-truth pose",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    else:
        return
    warnings.warn(f"{seq.name}: no ATE/RPE: {why}", RuntimeWarning, stacklevel=3)


def run_frames(run_dir) -> Iterator:
    """The frames of a saved run directory, in order (read through ``load_run``)."""
    from laser_plugin.io.run_dir import load_run

    run = load_run(run_dir)
    for i in range(len(run.frames)):
        yield run.load_frame(i)


POINTMAP_KEYS = ("acc", "acc_med", "comp", "comp_med", "nc", "nc_med")
DEPTH_KEYS = ("abs_rel", "delta_1_25")
POSE_KEYS = ("ate", "rpe_trans", "rpe_rot_deg")


def aggregate(per_sequence: dict[str, dict[str, float]]) -> dict[str, float]:
    """Dataset scores: depth weighted by valid pixels, the rest plain means over sequences."""
    rows = list(per_sequence.values())
    out: dict[str, float] = {"sequences": len(rows), "frames": sum(r["frames"] for r in rows)}
    with_depth = [r for r in rows if "abs_rel" in r]
    for key in DEPTH_KEYS:
        if with_depth:
            out[key] = weighted_mean(
                [r[key] for r in with_depth], [r["depth_pixels"] for r in with_depth]
            )
    for key in (*POSE_KEYS, *POINTMAP_KEYS, "fps"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def model_factory(name: str, weights: str | None, device: str) -> Callable[[Sequence], object]:
    """Sequence → model. The ``synthetic`` model emulates a reconstructor over each sequence's
    own scene (so it needs the sequence); real models load once and serve every sequence."""
    if name == "synthetic":
        from laser_plugin.models.synthetic import make_model

        def synthetic(seq: Sequence):
            scene = seq.meta.get("scene")
            if scene is None:
                from laser_plugin.errors import ConfigError

                raise ConfigError("--model synthetic only runs on --dataset synthetic")
            return make_model(scene=scene)

        return synthetic
    from laser_plugin.models import load_model

    model = load_model(name, weights=weights, device=device)
    return lambda seq: model


def run_variant(
    sequences: list[Sequence],
    make_model: Callable[[Sequence], object],
    config: LaserConfig,
    dataset: str,
    opts: EvalOptions | None = None,
    progress: Callable[[str], None] | None = None,
    loop_closure: bool = False,
) -> dict:
    """Evaluate every sequence under one configuration: {"sequences": {...}, "mean": {...}}."""
    protocol = PROTOCOLS[dataset]
    per_seq = {}
    for seq in sequences:
        if progress:
            progress(f"{dataset}/{seq.name}: {len(seq)} frames")
        per_seq[seq.name] = evaluate_sequence(
            seq, make_model(seq), config, protocol, opts, loop_closure
        )
    return {"sequences": per_seq, "mean": aggregate(per_seq)}


def sweep_configs(
    base: LaserConfig,
    window_sizes: tuple[int, ...] = (),
    iou_thresholds: tuple[float, ...] = (),
) -> dict[str, LaserConfig]:
    """The paper's ablation rows: full, w/o layer alignment, w/o intra-window edges, then one
    row per window size and IoU threshold (other settings as ``base``)."""
    rows = {
        "full": base,
        "no_layer_alignment": dataclasses.replace(base, layer_alignment=False),
        "no_intra_edges": dataclasses.replace(base, intra_edges=False),
    }
    for size in window_sizes:
        if size != base.window_size:
            overlap = min(base.overlap, size - 1)
            rows[f"window_size={size}"] = dataclasses.replace(
                base, window_size=size, overlap=overlap
            )
    for tau in iou_thresholds:
        if tau != base.iou_threshold:
            rows[f"iou_threshold={tau:g}"] = dataclasses.replace(base, iou_threshold=tau)
    return rows
