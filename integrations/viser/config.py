"""Settings of the live viser viewer (a tyro-friendly dataclass)."""

from __future__ import annotations

from dataclasses import dataclass

from laser_plugin.errors import ConfigError
from laser_plugin.integrations.viser.colors import COLOR_MODES, ColorMode


@dataclass
class ViserConfig:
    """Live web viewer (viser): global point cloud, camera frustums, trajectory, controls."""

    host: str = "127.0.0.1"
    """Interface to listen on. Anything but a loopback address exposes the viewer (and its
    pause button) to every machine that can reach this one."""
    port: int = 8080
    """Port to listen on; viser takes the next free one if it is busy (see ``ViserSink.url``)."""
    max_points: int = 300_000
    """Most points in the global cloud; the voxel grows when the cloud would exceed it."""
    points_per_frame: int = 5000
    """About this many pixels of each frame (a regular subsample) go into the global cloud."""
    voxel_size: float | None = None
    """Voxel edge in scene units; None = the first frame's median depth / 100."""
    min_conf: float = 0.0
    """Initial confidence threshold of the displayed points (a slider in the viewer)."""
    point_size: float = 1.0
    """Initial point size, relative to the voxel size (a slider in the viewer)."""
    color_mode: ColorMode = "rgb"
    """Initial colouring: rgb, layer (depth layer of the frame that saw the point), confidence
    or depth."""
    max_frustums: int = 256
    """Most camera frustums shown; beyond it every other one is dropped (older frames too)."""
    thumbnail_width: int = 96
    """Width in pixels of the image shown in each frustum (0 = no thumbnails)."""
    frustum_scale: float | None = None
    """Frustum size in scene units; None = the first frame's median depth / 20."""
    follow: bool = False
    """Start with the view following the newest camera."""
    show_frustums: bool = True
    """Start with the camera frustums visible."""
    update_interval: float = 0.25
    """Seconds between pushes of the cloud and trajectory to the browser (frustums go at once)."""
    max_queue: int = 64
    """Frames (subsampled, ~100 kB each) waiting for the viewer thread before ``on_frame``
    blocks: absorbs the engine's per-window bursts; a slower viewer then slows the stream."""
    verbose: bool = True
    """Print the viewer's address (and a warning when it is exposed) to the terminal."""

    def validate(self) -> ViserConfig:
        """Raise :class:`ConfigError` with a one-line message for an invalid setting."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"viser port must be in [0, 65535], got {self.port}")
        if self.max_points < 1:
            raise ConfigError(f"max_points must be >= 1, got {self.max_points}")
        if self.points_per_frame < 1:
            raise ConfigError(f"points_per_frame must be >= 1, got {self.points_per_frame}")
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ConfigError(f"voxel_size must be > 0, got {self.voxel_size}")
        if self.frustum_scale is not None and not self.frustum_scale > 0:
            raise ConfigError(f"frustum_scale must be > 0, got {self.frustum_scale}")
        if not 0.0 <= self.min_conf <= 1.0:
            raise ConfigError(f"min_conf must be in [0, 1], got {self.min_conf}")
        if not 0.0 < self.point_size <= 10.0:
            raise ConfigError(f"point_size must be in (0, 10], got {self.point_size}")
        if self.color_mode not in COLOR_MODES:
            raise ConfigError(
                f"color_mode must be one of {', '.join(COLOR_MODES)}, got {self.color_mode!r}"
            )
        if self.max_frustums < 1:
            raise ConfigError(f"max_frustums must be >= 1, got {self.max_frustums}")
        if self.thumbnail_width < 0:
            raise ConfigError(f"thumbnail_width must be >= 0, got {self.thumbnail_width}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.update_interval < 0:
            raise ConfigError(f"update_interval must be >= 0, got {self.update_interval}")
        return self
