"""Where loop closure finds a frame again when a loop moves it: the frame archive.

After a loop closes, every frame the correction moved is sent again to the sinks, so its image,
depth and confidence must come back from disk (RAM stays flat over hours of video). Two archives:

- :class:`SpilledFrames`: loop closure writes each frame itself, into a :class:`SpillStore`
  (the Python API with sinks of the caller's choosing: nothing else keeps the frames).
- :class:`RunDirFrames`: a run directory already holds every emitted frame, written by the run
  writer off the critical path. Reading them back from there (``laser run``, batch) writes each
  frame once instead of twice: on a GPU the second copy's encoding competed with alignment for
  the CPU (benchmarks/DECISIONS.md, "loop closure without a frame spill of its own").

Layers are not kept: a corrected frame goes to the sinks' ``on_correction``, which move poses
and rescale depth (the run writer, Rerun, viser), and a layer map is the same after a correction.
Both give the frame as the engine made it before any loop correction (``raw``): loop closure
spills a frame before correcting it, and a run directory's depth map that a correction scaled
carries its factor (``ReconstructedFrame.depth_scale``, saved with the depth), divided out here. Poses, intrinsics and timestamps are kept by
loop closure itself (:class:`~laser_plugin.loop.closure.LoopClosure`'s per-frame log).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from laser_plugin.spill import SpillStore


class ArchivedFrame(NamedTuple):
    """The arrays of one frame as the engine made them (H, W: the model's size)."""

    image: np.ndarray
    """(H, W, 3) uint8."""
    depth: np.ndarray
    """(H, W) float32, raw (no loop correction's scale)."""
    conf: np.ndarray
    """(H, W) float32 in [0, 1] (stored as uint8: steps of 1/255)."""


class FrameArchive(Protocol):
    """What loop closure needs to find an emitted frame again."""

    def put(self, index: int, frame) -> None:
        """Keep ``frame`` (a ReconstructedFrame as the engine made it, before any loop correction
        and before it is emitted; must not block long)."""

    def get(self, index: int) -> ArchivedFrame | None:
        """The frame kept under ``index``, or None if there is none."""

    def flush(self) -> None:
        """Wait until every frame put or emitted so far can be read back."""

    def cleanup(self) -> None:
        """Delete what this archive wrote (never the run's own files)."""


class SpilledFrames:
    """Frames spilled by loop closure itself (see module doc): JPEG image (quality 95), float16
    depth, uint8 confidence; written by a background thread of the store."""

    def __init__(self, root: str | Path | None, compress: bool) -> None:
        self.store = SpillStore(
            root, "loop-frames", compress=compress, flat=True, background=True, jpeg=("image",)
        )

    def put(self, index: int, frame) -> None:
        self.store.put(
            index,
            image=frame.image,
            depth=frame.depth.astype(np.float16),
            conf=(np.clip(frame.conf, 0, 1) * 255 + 0.5).astype(np.uint8),
        )

    def get(self, index: int) -> ArchivedFrame | None:
        if index not in self.store:
            return None
        rec = self.store.get(index)
        return ArchivedFrame(
            rec["image"],
            rec["depth"].astype(np.float32),
            rec["conf"].astype(np.float32) / 255.0,
        )

    def flush(self) -> None:
        self.store.flush()

    def cleanup(self) -> None:
        self.store.cleanup()


class StoredRun(Protocol):
    """The part of :class:`~laser_plugin.io.run_dir.RunWriter` :class:`RunDirFrames` uses."""

    def read_frame(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """(image (H, W, 3) uint8, depth (H, W) float32 as saved, conf (H, W) float32, the
        depth's ``depth_scale``) of an emitted frame, or None if the run has no such frame."""

    def wait_durable(self) -> None:
        """Return once every frame handed to the writer can be read back."""


class RunDirFrames:
    """Frames read back from the run directory its writer fills (see module doc).

    ``put`` keeps nothing: the writer receives the same frame as a sink. The run loop hands the
    sinks every frame emitted so far before it asks for corrections (``SinkCaller.drain``), and
    :meth:`flush` waits until the writer has them on disk."""

    def __init__(self, run: StoredRun) -> None:
        self.run = run

    def put(self, index: int, frame) -> None:
        pass

    def get(self, index: int) -> ArchivedFrame | None:
        got = self.run.read_frame(index)
        if got is None:
            return None
        image, depth, conf, scale = got
        return ArchivedFrame(image, depth / np.float32(scale), conf)

    def flush(self) -> None:
        self.run.wait_durable()

    def cleanup(self) -> None:
        pass  # the run's files are the run's
