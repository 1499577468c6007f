"""The few viser calls whose form differs between 0.2.7 (nerfstudio 1.1.5's pin) and 1.1.x.

Features are detected on the installed package (signatures and attributes), not on version
numbers, so a release in between takes whichever path it supports.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any

import numpy as np


def viser_version() -> str:
    """The installed viser version (0.2.7 has no ``viser.__version__``)."""
    return importlib.metadata.version("viser")


class SceneCompat:
    """Version-independent scene and GUI operations on one ``viser.ViserServer``."""

    def __init__(self, server: Any) -> None:
        self.server = server
        scene = server.scene
        cloud_params = inspect.signature(scene.add_point_cloud).parameters
        # float16 (1.x default) loses ~1e-3 relative precision: visible banding in large scenes.
        self.cloud_kwargs: dict[str, Any] = (
            {"precision": "float32"} if "precision" in cloud_params else {}
        )
        self.has_line_segments = hasattr(scene, "add_line_segments")
        # 1.1 renamed line_width (screen pixels) to thickness + thickness_units.
        self.line_kwargs = (
            {"thickness_units": "screen"}
            if self.has_line_segments
            and "thickness_units" in inspect.signature(scene.add_line_segments).parameters
            else {}
        )

    def point_cloud(
        self, name: str, points: np.ndarray, colors: np.ndarray, point_size: float
    ) -> Any:
        """Create or replace the point cloud ``name``: (N, 3) float32, (N, 3) uint8.

        Re-adding under the same name replaces the node on every client; 0.2.7 handles cannot
        change points in place, so both versions take this path.
        """
        return self.server.scene.add_point_cloud(
            name,
            points=np.ascontiguousarray(points, np.float32),
            colors=np.ascontiguousarray(colors, np.uint8),
            point_size=float(point_size),
            **self.cloud_kwargs,
        )

    def polyline(
        self, name: str, positions: np.ndarray, color: tuple[int, int, int], width: float
    ) -> Any:
        """Create or replace a polyline through (N >= 2, 3) positions."""
        positions = np.asarray(positions, np.float32)
        if self.has_line_segments:
            segments = np.stack([positions[:-1], positions[1:]], axis=1)  # (N-1, 2, 3)
            width_kw = {"thickness": width} if self.line_kwargs else {"line_width": width}
            return self.server.scene.add_line_segments(
                name, points=segments, colors=color, **width_kw, **self.line_kwargs
            )
        # 0.2.7 has no line segments; a Catmull-Rom spline with zero tension runs straight
        # through the control points.
        return self.server.scene.add_spline_catmull_rom(
            name,
            positions=positions,
            curve_type="catmullrom",
            tension=0.0,
            line_width=width,
            color=color,
        )

    def set_slider_range(self, slider: Any, maximum: float, value: float) -> None:
        """Set a slider's maximum and value together, so no client ever sees a value beyond
        its range (a browser clamps it and sends the clamped value back as a user edit).

        1.x handles expose ``max``; 0.2.7 only takes the partial-props update message its
        client already understands, sent as one message for both fields.
        """
        if hasattr(slider, "max"):
            with self.server.atomic():
                slider.max = maximum
                slider.value = value
            return
        from viser._messages import GuiUpdateMessage  # 0.2.7 only: frozen by nerfstudio's pin

        impl = slider._impl
        impl.gui_api._websock_interface.queue_message(
            GuiUpdateMessage(impl.id, {"max": maximum, "value": value})
        )
        impl.value = type(impl.value)(value)  # server-side state, without firing callbacks
