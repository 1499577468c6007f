"""Loop closure: place recognition, geometric verification and a Sim(3) pose graph over windows."""

from laser_plugin.loop.closure import LoopClosure as LoopClosure
from laser_plugin.loop.config import LoopConfig as LoopConfig
from laser_plugin.loop.posegraph import EdgeNoise as EdgeNoise
from laser_plugin.loop.posegraph import PoseGraph as PoseGraph
from laser_plugin.loop.reconstructor import LoopClosingReconstructor as LoopClosingReconstructor
from laser_plugin.loop.reconstructor import LoopEvent as LoopEvent

__all__ = [
    "EdgeNoise",
    "LoopClosingReconstructor",
    "LoopClosure",
    "LoopConfig",
    "LoopEvent",
    "PoseGraph",
]
