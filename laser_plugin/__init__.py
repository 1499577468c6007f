"""laser-plugin: streaming 3D/4D reconstruction with LASER (layer-wise scale alignment).

The public API (DESIGN.md §3)::

    from laser_plugin import LaserConfig, StreamingReconstructor, load_model

    rec = StreamingReconstructor(load_model("synthetic"), LaserConfig())
    for frame in rec.run("video.mp4", sinks=[...]):
        ...
"""

from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): ``import laser_plugin`` (every ``laser`` command, ``--help``
# included) must not pay for torch, which the engine and the models import.
_LAZY = {
    "LaserConfig": "laser_plugin.config",
    "StreamingReconstructor": "laser_plugin.engine",
    "LaserError": "laser_plugin.errors",
    "load_model": "laser_plugin.models",
    "ReconstructedFrame": "laser_plugin.types",
    "ReconstructionModel": "laser_plugin.types",
    "Sink": "laser_plugin.types",
    "WindowPrediction": "laser_plugin.types",
    "WindowStats": "laser_plugin.types",
}

if TYPE_CHECKING:
    from laser_plugin.config import LaserConfig as LaserConfig
    from laser_plugin.engine import StreamingReconstructor as StreamingReconstructor
    from laser_plugin.errors import LaserError as LaserError
    from laser_plugin.models import load_model as load_model
    from laser_plugin.types import ReconstructedFrame as ReconstructedFrame
    from laser_plugin.types import ReconstructionModel as ReconstructionModel
    from laser_plugin.types import Sink as Sink
    from laser_plugin.types import WindowPrediction as WindowPrediction
    from laser_plugin.types import WindowStats as WindowStats


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'laser_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = [
    "LaserConfig",
    "LaserError",
    "ReconstructedFrame",
    "ReconstructionModel",
    "Sink",
    "StreamingReconstructor",
    "WindowPrediction",
    "WindowStats",
    "load_model",
]
