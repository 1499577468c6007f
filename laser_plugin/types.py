"""Data types that cross module boundaries (the contracts of DESIGN.md §3).

Conventions (one place for all of them):
- Cameras use OpenCV axes: x right, y down, z forward.
- ``cam_to_world`` maps camera coordinates to world coordinates (4x4, last row 0 0 0 1).
- Depth is camera-frame z-depth, not ray length.
- Intrinsics are 3x3 pixel matrices for the image size the depth map has.
- Quaternions, where they appear at a boundary, are stated there (TUM files: x, y, z, w).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@dataclass
class WindowPrediction:
    """What a reconstruction model predicts for one window, in a window-local gauge.

    The gauge (scale, rotation, translation) is arbitrary per window; the streaming engine
    registers windows to each other.
    """

    depth: Tensor
    """(L, H, W) camera-frame z-depth; > 0 where valid (NaN, Inf or <= 0 mark invalid pixels)."""
    conf: Tensor
    """(L, H, W) >= 0, larger = more reliable. Only the order matters to the engine."""
    cam_to_world: Tensor
    """(L, 4, 4) camera-to-world, OpenCV camera axes."""
    intrinsics: Tensor
    """(L, 3, 3) pixel intrinsics for the (H, W) above."""
    descriptors: Tensor | None = None
    """Optional (L, D) global image descriptors (for loop closure)."""

    @property
    def num_frames(self) -> int:
        return int(self.depth.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def validate(self, num_frames: int | None = None) -> None:
        """Check types and shapes once, at the boundary between a backend and the engine."""
        for name in ("depth", "conf", "cam_to_world", "intrinsics"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"WindowPrediction.{name} must be a torch.Tensor")
        if self.depth.ndim != 3:
            raise ValueError(
                f"WindowPrediction.depth must be (L, H, W), got {tuple(self.depth.shape)}"
            )
        n, h, w = self.depth.shape
        expected = {
            "conf": (n, h, w),
            "cam_to_world": (n, 4, 4),
            "intrinsics": (n, 3, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"WindowPrediction.{name} must have shape {shape}, got {got}")
        if num_frames is not None and n != num_frames:
            raise ValueError(f"model returned {n} frames for a window of {num_frames}")

    def to(
        self, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> WindowPrediction:
        return WindowPrediction(
            depth=self.depth.to(device, dtype),
            conf=self.conf.to(device, dtype),
            cam_to_world=self.cam_to_world.to(device, dtype),
            intrinsics=self.intrinsics.to(device, dtype),
            descriptors=None if self.descriptors is None else self.descriptors.to(device, dtype),
        )

    def record_stream(self, stream: torch.cuda.Stream | None = None) -> None:
        """Tell the CUDA allocator that ``stream`` (default: each tensor's default stream) uses
        these tensors, when they were made on another stream (a network thread's) and are read
        and freed on this one."""
        for x in (self.depth, self.conf, self.cam_to_world, self.intrinsics):
            if x.is_cuda:
                x.record_stream(stream or torch.cuda.default_stream(x.device))


@runtime_checkable
class ReconstructionModel(Protocol):
    """Any callable mapping a window of images to a :class:`WindowPrediction`.

    ``images`` is (L, 3, H, W) float32 in [0, 1], already at the model's size. Backends may also
    expose ``name``, ``license``, ``input_size(height, width) -> (H, W)`` and ``device``; the
    engine treats each of them as optional.
    """

    def __call__(self, images: Tensor) -> WindowPrediction: ...


@dataclass
class ReconstructedFrame:
    """One finalised frame in the global frame (the first frame's camera), all numpy.

    Emitted exactly once, when no later window can change it.
    """

    index: int
    """0-based position in the stream."""
    timestamp: float
    """Seconds (video time, or the index divided by the nominal frame rate)."""
    image: np.ndarray
    """(H, W, 3) uint8 RGB at the model's resolution."""
    cam_to_world: np.ndarray
    """(4, 4) float64, OpenCV axes."""
    intrinsics: np.ndarray
    """(3, 3) float64 pixels, for (H, W)."""
    depth: np.ndarray
    """(H, W) float32 z-depth; 0 where invalid."""
    conf: np.ndarray
    """(H, W) float32, larger = more reliable (normalised to [0, 1] per window by rank)."""
    window: int = 0
    """Index of the window whose estimate this is."""
    layers: np.ndarray | None = None
    """(H, W) int16 depth-layer labels (-1 = no layer), if layer alignment ran."""
    layer_scales: np.ndarray | None = None
    """(M,) float32 scale applied to each layer label (index = label)."""
    source_image: np.ndarray | None = None
    """(H0, W0, 3) uint8 RGB at the input's original resolution, if the source kept it."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Free-form per-frame information for sinks (never required)."""

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])

    @property
    def depth_scale(self) -> float:
        """The factor a loop correction multiplied ``depth`` by (``extras["depth_scale"]``; 1 when
        none): the run writer saves it with the depth, and loop closure divides it out when a
        later loop moves the frame again."""
        return float(self.extras.get("depth_scale", 1.0))

    def points_world(self, min_conf: float = 0.0, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """World points and their colours for valid pixels with ``conf >= min_conf``.

        Returns ((N, 3) float32, (N, 3) uint8). ``stride`` subsamples the pixel grid.
        """
        from laser_plugin.geometry.camera import unproject_depth_np

        d = self.depth[::stride, ::stride]
        valid = (d > 0) & np.isfinite(d) & (self.conf[::stride, ::stride] >= min_conf)
        k = self.intrinsics.copy()
        k[:2] /= stride
        pts_cam = unproject_depth_np(d, k)  # (h, w, 3)
        r, t = self.cam_to_world[:3, :3], self.cam_to_world[:3, 3]
        pts = pts_cam[valid] @ r.T + t
        return pts.astype(np.float32), self.image[::stride, ::stride][valid]


@dataclass
class WindowStats:
    """What the engine did with one window; sinks may log it (``on_window``)."""

    window: int
    frame_indices: list[int]
    """Stream indices of all frames of the window."""
    new_frame_indices: list[int]
    """Frames this window finalises."""
    scale: float
    """Sim(3) scale mapping this window's gauge to the global frame."""
    depth_residual: float
    """Robust relative depth residual on the overlap after the Sim(3) scale (0 = perfect)."""
    pose_residual: float
    """RMS residual of the overlap cameras after Sim(3), relative to the scene depth."""
    overlap_pixels: int
    """Confident overlap pixels used for registration."""
    num_layers: float
    """Mean number of depth layers per frame."""
    layer_scale_spread: float
    """Std of log layer scales applied in this window (0 when no layer alignment)."""
    num_inter_edges: int = 0
    num_intra_edges: int = 0
    layer_coverage: float = 0.0
    """Mean fraction of each frame's pixels that belong to a depth layer (0 when layer alignment
    is off). Low coverage means layer alignment has little to work on (issue 20)."""
    depth_noise: float = 0.0
    """Median over the window's frames of the depth noise the segmentation measured (robust
    level of the relative second difference of inverse depth; about 1.5x the per-pixel
    relative noise). 0 when not measured."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage for this window."""
    warnings: list[str] = field(default_factory=list)


class Sink(Protocol):
    """Receives finalised frames. ``on_window`` and ``on_correction`` are optional."""

    def on_frame(self, frame: ReconstructedFrame) -> None: ...

    def close(self) -> None: ...
