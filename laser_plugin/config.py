"""Engine configuration (a tyro-friendly dataclass: each field's docstring becomes ``--help``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from laser_plugin.errors import ConfigError


@dataclass
class LaserConfig:
    """Settings of the streaming LASER engine."""

    window_size: int = 20
    """Frames per window (L). The paper's best is 20."""
    overlap: int = 5
    """Frames shared by consecutive windows (O); must be in [1, window_size)."""
    iou_threshold: float = 0.3
    """Mask IoU above which two depth layers are linked (tau; robust over 0.2-0.6)."""
    layer_alignment: bool = True
    """Layer-wise scale alignment (LSA). False = plain Sim(3) stitching (VGGT-Long style)."""
    intra_edges: bool = True
    """Intra-window edges between adjacent frames. False = the paper's 'w/o E_intra' ablation:
    layer scales then reach only the overlap frames, not the frames no earlier window saw."""
    intra_hops: int = 3
    """Intra-window edges also link frames up to this far apart (1 = adjacent frames only, the
    paper): a layer the frame-to-frame chain missed (segmentation glitched in one frame, one weak
    IoU) is linked directly to the last frames that had it (benchmarks/NOTES.md)."""
    intra_warp: bool = True
    """Warp layer masks into the next frame with the window's own geometry before matching."""
    top_conf_fraction: float = 0.5
    """Fraction of most confident overlap pixels used for registration (the official code: 0.5)."""
    huber_delta: float = 0.05
    """Huber threshold on relative depth residuals in the IRLS scale fits."""
    irls_iterations: int = 10
    """IRLS iterations for the scale fits."""
    registration: Literal["cameras", "points", "both"] = "cameras"
    """Correspondences for R, t: overlap cameras (centre + view/up axis points), same-pixel world
    points, or both. Chosen on the accuracy benchmark (see benchmarks/NOTES.md)."""
    max_layers: int = 24
    """Most depth layers per frame; the largest are kept."""
    min_layer_fraction: float = 0.001
    """Segments smaller than this fraction of the frame are left without a layer."""
    depth_jump: float = 0.04
    """Relative depth step between neighbouring (strided) pixels that cuts a layer."""
    crease: float = 0.010
    """Relative second difference of inverse depth that cuts a layer at a surface crease
    (inverse depth is affine in pixels on a plane, so this is ~0 on planes). 0.010 since the
    median filter of the noise-aware segmentation (0.012 before: benchmarks/DECISIONS.md)."""
    segment_noise_k: float = 2.0
    """Noise-aware segmentation: each frame's crease and step thresholds are at least this many
    times its own depth noise, measured robustly on its confident pixels (issue 20; real depth is
    not clean to 0.2%). 0 = the fixed one-pixel thresholds only (clean synthetic depth)."""
    segment_stride: int = 0
    """Segment at 1/stride resolution (labels are upsampled). 0 = auto: 1 below 200 pixels on the
    short side, else 2 (keeps 518x294 fast while small images keep their detail)."""
    scale_fill_radius: int = 4
    """Pixels without a layer (surface rims the crease test drops, thin slivers) take the mean
    log-scale of the labelled pixels within this radius on the segmentation grid (those far in
    depth from them, or with none around, keep the Sim(3) scale); 0 = their frame's mean scale."""
    min_layer_pixels: int = 32
    """Shared pixels an inter-window edge needs before its scale is trusted."""
    layer_fusion: Literal["previous", "confidence", "accumulated"] = "confidence"
    """How an inter-window edge sets a layer's scale. "previous": the earlier estimate is imposed
    (the paper). "confidence" (the default): the two are blended in log-scale by the model's own
    mean confidence on the shared pixels, so a layer first seen in an unreliable window is pulled
    toward a later, more reliable one (an extension). Imposed, an object's scale error in the
    window that first saw it stays for the object's whole life: on the noise sweep's deep hall
    that made AbsRel worse than plain Sim(3), and on the turn and lateral sequences too; blended,
    every sweep level and sequence is at or below Sim(3)'s AbsRel, at a somewhat larger layer
    inconsistency than the imposed rule's (benchmarks/DECISIONS.md, "layer fusion"). "accumulated": the same blend,
    but the earlier estimate weighs with the confidence it has accumulated over every window that
    fused it (precisions add), so a layer seen reliably many times is no longer pulled around by
    each new window, while one first seen only in unreliable windows still follows a better
    later one."""
    overlap_estimate: Literal["earlier", "later"] = "earlier"
    """Which window's estimate an overlap frame keeps. "earlier": the first window that saw it
    (lowest latency: a frame is final as soon as its first window is aligned). "later": the next
    window's layer-aligned estimate (one window more latency), the convention under which the
    paper's "w/o E_intra" ablation differs from plain Sim(3)."""
    device: str = "cpu"
    """Device for the alignment (the model chooses its own)."""

    def validate(self) -> LaserConfig:
        """Raise :class:`ConfigError` with a one-line message for an invalid setting."""
        if self.window_size < 2:
            raise ConfigError(f"window_size must be at least 2, got {self.window_size}")
        if not 1 <= self.overlap < self.window_size:
            raise ConfigError(
                f"overlap must be in [1, window_size) = [1, {self.window_size}), got {self.overlap}"
            )
        positive = {
            "iou_threshold": self.iou_threshold,
            "top_conf_fraction": self.top_conf_fraction,
            "huber_delta": self.huber_delta,
            "depth_jump": self.depth_jump,
            "crease": self.crease,
            "min_layer_fraction": self.min_layer_fraction,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.iou_threshold >= 1:
            raise ConfigError(f"iou_threshold must be below 1, got {self.iou_threshold}")
        if self.top_conf_fraction > 1:
            raise ConfigError(f"top_conf_fraction must be at most 1, got {self.top_conf_fraction}")
        if self.scale_fill_radius < 0:
            raise ConfigError(
                f"scale_fill_radius must be 0 (off) or positive, got {self.scale_fill_radius}"
            )
        if not self.segment_noise_k >= 0:
            raise ConfigError(
                f"segment_noise_k must be 0 (off) or positive, got {self.segment_noise_k}"
            )
        if self.segment_stride < 0:
            raise ConfigError(
                f"segment_stride must be 0 (auto) or positive, got {self.segment_stride}"
            )
        for name in ("irls_iterations", "max_layers", "min_layer_pixels", "intra_hops"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.layer_fusion not in ("previous", "confidence", "accumulated"):
            raise ConfigError(
                f"layer_fusion must be previous, confidence or accumulated, got {self.layer_fusion!r}"
            )
        if self.overlap_estimate not in ("earlier", "later"):
            raise ConfigError(
                f"overlap_estimate must be earlier or later, got {self.overlap_estimate!r}"
            )
        if self.registration not in ("cameras", "points", "both"):
            raise ConfigError(
                f"registration must be cameras, points or both, got {self.registration!r}"
            )
        return self

    @property
    def stride(self) -> int:
        """New frames per window (L - O)."""
        return self.window_size - self.overlap

    def stride_for(self, height: int, width: int) -> int:
        """The segmentation stride for an image size (resolves ``segment_stride=0``)."""
        if self.segment_stride:
            return self.segment_stride
        return 1 if min(height, width) < 200 else 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
