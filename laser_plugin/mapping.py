"""A bounded global point map: voxel-downsampled, confident points with colour.

Memory is bounded: when the map exceeds ``max_points`` the voxel size doubles and the map is
re-downsampled, so a kilometre-long stream keeps a coarser, not a larger, map.
"""

from __future__ import annotations

import numpy as np


class VoxelMap:
    """Keeps one (mean position, last colour) per occupied voxel."""

    def __init__(self, voxel_size: float | None = None, max_points: int = 1_000_000):
        self.voxel_size = voxel_size
        self.max_points = max_points
        self._keys = np.empty(0, dtype=np.int64)
        self._sum = np.empty((0, 3), dtype=np.float64)
        self._cnt = np.empty(0, dtype=np.int64)
        self._col = np.empty((0, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return int(self._keys.size)

    @staticmethod
    def _key(points: np.ndarray, voxel: float) -> np.ndarray:
        ijk = np.floor(points / voxel).astype(np.int64)
        ijk = np.clip(ijk, -(2**20), 2**20 - 1) + 2**20  # 21 bits per axis
        return (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]

    def add(self, points: np.ndarray, colors: np.ndarray) -> None:
        """Add (N, 3) points with (N, 3) uint8 colours."""
        ok = np.isfinite(points).all(1)
        points, colors = points[ok].astype(np.float64), colors[ok]
        if len(points) == 0:
            return
        if self.voxel_size is None:
            # Auto: 1/256 of the spread of the first batch (robust to outliers).
            spread = np.percentile(points, 95, axis=0) - np.percentile(points, 5, axis=0)
            self.voxel_size = float(max(np.linalg.norm(spread) / 256.0, 1e-6))
        keys = np.concatenate([self._keys, self._key(points, self.voxel_size)])
        sums = np.concatenate([self._sum, points])
        cnts = np.concatenate([self._cnt, np.ones(len(points), dtype=np.int64)])
        cols = np.concatenate([self._col, colors])
        self._merge(keys, sums, cnts, cols)
        while len(self._keys) > self.max_points:
            self.voxel_size *= 2.0
            centres = self._sum / self._cnt[:, None]
            self._merge(self._key(centres, self.voxel_size), self._sum, self._cnt, self._col)

    def _merge(self, keys, sums, cnts, cols) -> None:
        uniq, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        s = np.stack(
            [np.bincount(inv, weights=sums[:, k], minlength=len(uniq)) for k in range(3)], 1
        )
        c = np.bincount(inv, weights=cnts, minlength=len(uniq)).astype(np.int64)
        col = np.zeros((len(uniq), 3), dtype=np.uint8)
        col[inv] = cols  # last writer wins: the newest colour
        self._keys, self._sum, self._cnt, self._col = uniq, s, c, col

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """((N, 3) float32 voxel means, (N, 3) uint8 colours)."""
        if len(self._keys) == 0:
            return np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8)
        return (self._sum / self._cnt[:, None]).astype(np.float32), self._col.copy()
