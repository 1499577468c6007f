"""The viewer's control panel: builds the widgets; the sink wires their callbacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from laser_plugin.integrations.viser.colors import COLOR_MODES
from laser_plugin.integrations.viser.config import ViserConfig

PAUSE_LABEL = "Pause stream"
RESUME_LABEL = "Resume stream"


@dataclass
class Controls:
    """Handles of the GUI widgets (viser GUI handles, mutable)."""

    readout: Any
    """Markdown: frames, points, state, last window."""
    pause: Any
    """Button shown while streaming."""
    resume: Any
    """Button shown while paused."""
    frame: Any
    """Slider: the frame the view shows (the newest one while it sits at its maximum)."""
    follow: Any
    """Checkbox: move the view with the shown camera."""
    show_frustums: Any
    """Checkbox: camera frustums on/off."""
    color_mode: Any
    """Dropdown: rgb / layer / confidence / depth."""
    min_conf: Any
    """Slider: confidence threshold of displayed points."""
    point_size: Any
    """Slider: point size relative to the voxel size."""


def build_controls(server: Any, config: ViserConfig) -> Controls:
    """Add the panel to ``server.gui``; order of creation is the order on screen."""
    gui = server.gui
    readout = gui.add_markdown("waiting for frames")
    pause = gui.add_button(PAUSE_LABEL, hint="Block the reconstruction until resumed")
    resume = gui.add_button(RESUME_LABEL, visible=False)
    with gui.add_folder("Timeline"):
        # viser needs min < max; the range grows as frames arrive.
        frame = gui.add_slider("Frame", min=0, max=1, step=1, initial_value=0)
        follow = gui.add_checkbox("Follow camera", initial_value=config.follow)
    with gui.add_folder("Display"):
        show_frustums = gui.add_checkbox("Show frustums", initial_value=config.show_frustums)
        color_mode = gui.add_dropdown(
            "Colour by", options=COLOR_MODES, initial_value=config.color_mode
        )
        min_conf = gui.add_slider(
            "Min confidence", min=0.0, max=1.0, step=0.01, initial_value=config.min_conf
        )
        point_size = gui.add_slider(
            "Point size", min=0.1, max=10.0, step=0.1, initial_value=config.point_size
        )
    return Controls(
        readout=readout,
        pause=pause,
        resume=resume,
        frame=frame,
        follow=follow,
        show_frustums=show_frustums,
        color_mode=color_mode,
        min_conf=min_conf,
        point_size=point_size,
    )
