"""Loop-closure settings (a tyro-friendly dataclass: each field's docstring becomes ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass

from laser_plugin.errors import ConfigError


@dataclass
class LoopConfig:
    """How loops are detected, verified and closed."""

    keyframes_per_window: int = 3
    """Frames of each window kept as keyframes (descriptor in RAM, images and depth on disk)."""
    min_similarity: float = 0.85
    """Cosine similarity of global descriptors above which a past keyframe is a loop candidate."""
    min_gap_windows: int = 4
    """Only windows at least this many windows back are candidates (recent ones always look alike)."""
    cooldown_windows: int = 3
    """Windows without detection after an accepted loop (bounds the verification cost)."""
    min_covisibility: float = 0.3
    """Fraction of a candidate keyframe's pixels that must land on the current keyframe with the
    same depth, in the verification window's own geometry, for the loop to count as a revisit."""
    max_depth_residual: float = 0.08
    """Largest robust depth residual of either registration of the verification window."""
    max_pose_residual: float = 0.1
    """Largest camera-centre residual of either registration (relative to the scene depth)."""
    max_correction_deg: float = 30.0
    """Largest rotation a loop may imply between its two ends (more means a wrong match)."""
    max_correction_scale: float = 1.5
    """Largest scale factor (or its inverse) a loop may imply."""
    seq_scale: float = 0.01
    """Std of the log scale of a sequential (window-to-window) edge."""
    seq_rotation_deg: float = 0.5
    """Std of the rotation of a sequential edge, degrees."""
    seq_translation: float = 0.02
    """Std of the translation of a sequential edge, relative to the scene depth."""
    loop_scale: float = 0.02
    """Std of the log scale of a loop edge."""
    loop_rotation_deg: float = 1.0
    """Std of the rotation of a loop edge, degrees."""
    loop_translation: float = 0.03
    """Std of the translation of a loop edge, relative to the scene depth."""
    huber: float = 3.0
    """Huber threshold on the whitened residual of loop edges."""
    prune: float = 8.0
    """Whitened residual above which a loop edge is dropped after optimisation (a false loop)."""
    iterations: int = 20
    """Levenberg-Marquardt iterations per optimisation."""
    reemit_tolerance: float = 2e-3
    """Re-emit a past frame when its correction moves it more than this (relative to the scene
    depth, or in radians, or in log scale); smaller moves wait for the next correction."""
    correction_chunk: int = 256
    """Frames per ``on_correction`` call (bounds memory while re-emitting a long stream)."""
    spill_dir: str | None = None
    """Directory for keyframes and frames spilled to disk (default: a temporary directory)."""

    def validate(self) -> LoopConfig:
        if self.keyframes_per_window < 1:
            raise ConfigError(
                f"keyframes_per_window must be at least 1, got {self.keyframes_per_window}"
            )
        if not -1.0 < self.min_similarity < 1.0:
            raise ConfigError(f"min_similarity must be in (-1, 1), got {self.min_similarity}")
        if self.min_gap_windows < 1:
            raise ConfigError(f"min_gap_windows must be at least 1, got {self.min_gap_windows}")
        if not 0.0 < self.min_covisibility <= 1.0:
            raise ConfigError(f"min_covisibility must be in (0, 1], got {self.min_covisibility}")
        for name in (
            "seq_scale",
            "seq_rotation_deg",
            "seq_translation",
            "loop_scale",
            "loop_rotation_deg",
            "loop_translation",
            "huber",
            "prune",
            "max_depth_residual",
            "max_pose_residual",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_correction_scale <= 1.0:
            raise ConfigError(
                f"max_correction_scale must be above 1, got {self.max_correction_scale}"
            )
        if self.correction_chunk < 1 or self.iterations < 1 or self.cooldown_windows < 0:
            raise ConfigError(
                "correction_chunk and iterations must be at least 1, cooldown_windows at least 0"
            )
        return self
