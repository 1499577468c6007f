"""laser-plugin: streaming 3D/4D reconstruction with LASER (layer-wise scale alignment).

The public API (DESIGN.md §3)::

    from laser_plugin import LaserConfig, StreamingReconstructor, load_model

    rec = StreamingReconstructor(load_model("synthetic"), LaserConfig())
    for frame in rec.run("video.mp4", sinks=[...]):
        ...
"""

from laser_plugin.config import LaserConfig as LaserConfig
from laser_plugin.engine import StreamingReconstructor as StreamingReconstructor
from laser_plugin.errors import LaserError as LaserError
from laser_plugin.models import load_model as load_model
from laser_plugin.types import ReconstructedFrame as ReconstructedFrame
from laser_plugin.types import ReconstructionModel as ReconstructionModel
from laser_plugin.types import Sink as Sink
from laser_plugin.types import WindowPrediction as WindowPrediction
from laser_plugin.types import WindowStats as WindowStats

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
