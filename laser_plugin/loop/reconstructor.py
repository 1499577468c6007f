"""``LoopClosingReconstructor``: the streaming engine with the loop-closure hook attached.

Loop closure itself lives in :mod:`laser_plugin.loop.closure` as a hook that the engine's
``align`` calls, so any way of running the network (the engine's own ``run``, the pipelined, the
multi-device and the worker-process runners) closes loops the same way. This class is the short
form ``StreamingReconstructor(model, config, hooks=[LoopClosure(loop)])`` with the hook's
results (events, counts, trajectories) readable on the reconstructor, as before.
"""

from __future__ import annotations

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.loop.closure import LoopClosure, LoopEvent
from laser_plugin.loop.config import LoopConfig
from laser_plugin.types import ReconstructionModel

# Read through to the hook (what callers and benchmarks read of the old subclass).
_FORWARDED = frozenset(
    {
        "events",
        "counts",
        "loop_timings",
        "rejections",
        "enabled",
        "correction",
        "uncorrected_trajectory",
        "corrected_trajectory",
        "cleanup",
        "_frames",
        "_keyframes",
        "_index",
        "_graph",
    }
)


class LoopClosingReconstructor(StreamingReconstructor):
    """LASER plus loop closure; same ``run`` API, sinks may add ``on_correction(frames)``."""

    def __init__(
        self,
        model: ReconstructionModel,
        config: LaserConfig | None = None,
        loop: LoopConfig | None = None,
        *,
        keep_source_images: bool = True,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__(
            model,
            config,
            keep_source_images=keep_source_images,
            input_size=input_size,
            hooks=[LoopClosure(loop)],
        )

    @property
    def loop_config(self) -> LoopConfig:
        return self.loop.config

    def __getattr__(self, name: str):
        if name in _FORWARDED:
            return getattr(self.__dict__["hooks"][0], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


__all__ = ["LoopClosingReconstructor", "LoopConfig", "LoopEvent"]
