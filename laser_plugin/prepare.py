"""The per-window half of alignment: everything that needs no earlier window.

Sanitising a prediction, ranking its confidences and segmenting its depth into layers read only
the window's own prediction. The segmentation is also scale-invariant (it compares relative depth
steps, log-depth differences and inverse-depth creases relative to the inverse depth), so it can
run on the model-scale depth, before the Sim(3) registration fixes the window's scale: the
registration then multiplies the strided depth by the scale, and no label changes.

So this half can run where the window was predicted (a worker process, on its GPU) while the
aligning thread registers the previous window: with two GPUs the aligning thread is the
bottleneck, and segmentation is a sixth of its work (benchmarks/DECISIONS.md, "workers prepare
their windows between windows"). The engine calls :func:`prepare_window` itself when it gets
a plain :class:`WindowPrediction`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from laser_plugin.config import LaserConfig
from laser_plugin.errors import LaserError
from laser_plugin.geometry.layers import segment_depth_layers, strided_depth, upsample_labels
from laser_plugin.geometry.sanitize import sanitize_prediction
from laser_plugin.types import WindowPrediction

UNUSABLE = "unusable model output: "
"""Prefix of the message :func:`prepare_window` gives a window whose prediction is not finite as
a whole; the engine stops the run on it (:class:`ModelOutputError`). A message, so it also comes
back from a worker process that prepared the window."""


class ModelOutputError(LaserError):
    """The network's output for a window is unusable as a whole (not finite): broken weights or
    numerics. Stopping at once, naming the window, beats an error in the alignment much later."""


UNUSABLE_HINT = (
    "the weights or the numerics are broken (check --weights; on a GPU try --no-fast); the "
    "frames finalised before this window were kept"
)


def non_finite_model_error(exc: BaseException, where: str) -> ModelOutputError | None:
    """The one-line error for a network whose own computation met non-finite values (π³'s
    rotation SVD raises on the NaN output of broken weights on the CPU), or None for any other
    exception. Used where a window is predicted: the engine, and a worker process (whose other
    errors come back as tracebacks)."""
    # torch.linalg.LinAlgError is public (torch's documentation) but not in its __all__.
    linalg_error = torch.linalg.LinAlgError  # pyright: ignore[reportPrivateImportUsage]
    if isinstance(exc, linalg_error) and "non-finite" in str(exc):
        first = str(exc).strip().splitlines()[0]
        return ModelOutputError(
            f"{where}: the model's computation met non-finite values ({first}): {UNUSABLE_HINT}"
        )
    return None


def unusable_output(pred: WindowPrediction, fixes: list[str]) -> str | None:
    """Why ``pred`` cannot be aligned at all, or None. ``fixes``: what sanitising reported.

    Sanitising repairs what a working network gets wrong at times (some NaN pixels or poses, or
    one window with no valid depth: tests/test_faults_model.py); this catches what only a broken
    one gives: no finite camera pose in the window, or neither a finite depth nor a finite
    confidence anywhere in it. Costs nothing for a sound window beyond a pose check of L
    matrices (the depth is looked at only when sanitising found none valid)."""
    if not bool(torch.isfinite(pred.cam_to_world).flatten(1).all(1).any()):
        return "every camera pose is NaN or infinite"
    if "no valid depth in this window" in fixes and not (
        bool(torch.isfinite(pred.depth).any()) or bool(torch.isfinite(pred.conf).any())
    ):
        return "every depth and confidence value is NaN or infinite"
    return None


@dataclass
class PreparedWindow:
    """A window's prediction, sanitised and segmented, at the model's scale.

    Shapes: L frames, (H, W) the model size, (h, w) = (H, W) // stride the layer grid.
    """

    depth: Tensor
    """(L, H, W) float32, 0 = invalid."""
    conf_n: Tensor
    """(L, H, W) float32 confidence rank in [0, 1] within the window, 0 where invalid."""
    confident: Tensor
    """(L, H, W) bool: valid and among the window's most confident pixels."""
    cam_to_world: Tensor
    """(L, 4, 4) float32, proper rotations."""
    intrinsics: Tensor
    """(L, 3, 3) float32."""
    labels: Tensor | None = None
    """(L, h, w) int64 layer labels, -1 = none (None: layer alignment off)."""
    num_layers: Tensor | None = None
    """(L,) int64 layers per frame."""
    depth_strided: Tensor | None = None
    """(L, h, w) float32 strided depth the labels refer to, at the model's scale."""
    labels_full: Tensor | None = None
    """(L, H, W) int16 labels upsampled to the model size."""
    conf_strided: Tensor | None = None
    """(L, h, w) float32 the model's own confidence on the layer grid (layer fusion only)."""
    layer_noise: Tensor | None = None
    """(L,) each frame's depth noise as the segmentation measured it (None: not measured)."""
    descriptors: Tensor | None = None
    """(L, D) global descriptors, passed through from the prediction."""
    stride: int = 1
    messages: tuple[str, ...] = ()
    """What sanitising fixed (the engine reports them as window warnings)."""

    def tensors(self) -> dict[str, Tensor | None]:
        """The tensor fields by name (what a worker ships)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type.startswith("Tensor")}

    def to(self, device: torch.device | str) -> PreparedWindow:
        moved = {k: None if v is None else v.to(device) for k, v in self.tensors().items()}
        return replace(self, **moved)

    def record_stream(self, stream: torch.cuda.Stream | None = None) -> None:
        """As :meth:`WindowPrediction.record_stream`: the tensors were made on another stream."""
        for x in self.tensors().values():
            if x is not None and x.is_cuda:
                x.record_stream(stream or torch.cuda.default_stream(x.device))


def prepare_window(pred: WindowPrediction, config: LaserConfig) -> PreparedWindow:
    """Sanitise, rank and segment one window's prediction on its own device (see module doc)."""
    cfg = config
    with torch.inference_mode():
        depth, conf, poses, intr, fixes = sanitize_prediction(pred)
        unusable = unusable_output(pred, fixes)
        if unusable is not None:  # the engine stops on it: skip the rest of the work
            zeros = torch.zeros_like(depth)
            return PreparedWindow(
                depth, zeros, zeros.bool(), poses, intr, messages=(UNUSABLE + unusable,)
            )
        valid = depth > 0
        conf_n = rank_normalise(conf, valid)
        confident = valid & (conf_n >= 1.0 - cfg.top_conf_fraction)
        out = PreparedWindow(
            depth,
            conf_n,
            confident,
            poses,
            intr,
            descriptors=pred.descriptors,
            messages=tuple(fixes),
        )
        if not cfg.layer_alignment:
            return out
        h, w = depth.shape[-2:]
        stride = cfg.stride_for(h, w)
        layers = segment_depth_layers(
            depth,
            stride,
            cfg.crease,
            cfg.depth_jump,
            cfg.max_layers,
            cfg.min_layer_fraction,
            conf=conf_n,  # ranks: which pixels the noise is measured on
            noise_k=cfg.segment_noise_k,
        )
        conf_strided = None
        if cfg.layer_fusion in ("confidence", "accumulated"):
            conf_strided = strided_depth(conf.clamp_min(1e-12) * valid, stride)
        return replace(
            out,
            labels=layers.labels,
            num_layers=layers.num_layers,
            depth_strided=layers.depth,
            labels_full=upsample_labels(layers.labels.to(torch.int16), stride, h, w),
            conf_strided=conf_strided,
            layer_noise=layers.noise,
            stride=stride,
        )


def rank_normalise(conf: Tensor, valid: Tensor, samples: int = 65536, bins: int = 1024) -> Tensor:
    """Map confidences to their approximate rank in [0, 1] within the window (0 where invalid).

    Only the order of a model's confidence is meaningful (π³: sigmoid of logits, VGGT: 1 + exp),
    so ranks make thresholds comparable across models. The ranks come from a histogram of a
    strided sample of log-confidences turned into a lookup table: O(N) elementwise work, no sort
    or binary search over the full window.
    """
    # The histogram only needs a sample: take a regular lattice of the window first and drop the
    # invalid pixels from that (a boolean gather over every pixel costs more than all the rest).
    step = max(1, conf.numel() // (2 * samples))
    sample = conf.reshape(-1)[::step][valid.reshape(-1)[::step]]
    if sample.numel() == 0:
        if not bool(valid.any()):
            return torch.zeros_like(conf)
        sample = conf[valid]
    log_sample = torch.log(sample.float().clamp_min(1e-30))
    lo, hi = float(log_sample.min()), float(log_sample.max())
    if not hi > lo:
        return torch.where(valid, torch.full_like(conf, 0.5), torch.zeros_like(conf))
    hist = torch.histc(log_sample, bins=bins, min=lo, max=hi)
    cdf = torch.cumsum(hist, 0) / hist.sum()
    mid = cdf - 0.5 * hist / hist.sum()  # rank of a bin's centre
    # One pass per op, in place: log, affine map to bin coordinates, clamp, truncate, look up.
    x = conf.float().clamp_min(1e-30)
    x.log_().sub_(lo).mul_(bins / (hi - lo)).clamp_(0, bins - 1)
    rank = mid.index_select(0, x.to(torch.int32).reshape(-1)).view_as(conf)  # int32: half the bytes
    return rank.mul_(valid).to(conf.dtype)  # in place: no inverted-mask temporary
