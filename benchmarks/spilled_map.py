"""The global map of a long stream as voxel submaps on disk (used by ``memory_long.py``).

Each window's points become a voxel-downsampled submap in the window's uncorrected frame, written
to disk as it is finished. A loop correction is then a per-submap Sim(3) applied when the map is
read, so nothing already written has to be redone, and RAM holds only the submap being built and
the merged map being exported. (``laser run`` keeps its map in ``RunWriter``; this one lives
here because only the long-stream memory benchmark uses it.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from laser_plugin.mapping import VoxelMap
from laser_plugin.spill import SpillStore


class SpilledVoxelMap:
    """A global point map of per-window voxel submaps that live on disk.

    ``voxel_size`` is fixed by the first window (1/256 of its spread, as :class:`VoxelMap`); each
    submap stores its voxel centroids and colours in the window's own frame.
    """

    def __init__(self, root: str | Path | None = None, voxel_size: float | None = None):
        self.store = SpillStore(root, "map")
        self.voxel_size = voxel_size
        self.num_points = 0

    def add_window(self, window: int, points: np.ndarray, colors: np.ndarray) -> None:
        """Voxel-downsample (N, 3) points with (N, 3) uint8 colours and spill them as one submap."""
        sub = VoxelMap(self.voxel_size, max_points=max(1, len(points)))
        sub.add(points, colors)
        if self.voxel_size is None:
            self.voxel_size = sub.voxel_size
        if len(sub) == 0:
            return
        pts, col = sub.points()
        self.store.put(window, points=pts.astype(np.float32), colors=col)
        self.num_points += len(pts)

    def submaps(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(window, points (N, 3) float32, colours (N, 3) uint8) in window order."""
        for key in self.store.keys:
            rec = self.store.get(key)
            yield key, rec["points"], rec["colors"]

    def merged(
        self, correction: Callable[[int], np.ndarray] | None = None, max_points: int = 1_000_000
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole map as one bounded voxel cloud, each submap moved by ``correction(window)``
        (a 4x4 Sim(3)); returns ((N, 3) float32, (N, 3) uint8)."""
        out = VoxelMap(self.voxel_size, max_points=max_points)
        for key, pts, col in self.submaps():
            if correction is not None:
                c = correction(key)
                pts = pts.astype(np.float64) @ c[:3, :3].T + c[:3, 3]
            out.add(pts, col)
        return (
            out.points() if len(out) else (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
        )

    def cleanup(self) -> None:
        self.store.cleanup()
