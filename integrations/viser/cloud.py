"""A bounded, voxel-downsampled global point cloud for live viewing (numpy only).

One point per voxel; inside a voxel the most confident observation wins. When the cloud
would exceed ``max_points`` the voxel grows by ``COARSEN_FACTOR`` and the points are merged
again, so memory and the bytes sent to the browser stay bounded however long the stream is.
Every point remembers the frame that saw it, so a viewer can show the map "as of" frame k
and move a frame's points when a loop closure corrects its pose.
"""

from __future__ import annotations

import numpy as np

COARSEN_FACTOR = 1.5
"""Voxel growth per coarsening step (3.4x fewer voxels per step on a surface-like cloud)."""

_KEY_BITS = 21
"""Bits per axis in a packed voxel key: +-2^20 voxels around the origin."""
_KEY_OFFSET = 1 << (_KEY_BITS - 1)
_KEY_MAX = (1 << _KEY_BITS) - 1


def voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Pack integer voxel coordinates of (N, 3) points into (N,) int64 keys.

    Coordinates beyond +-2^20 voxels are clamped onto the border (far outliers share voxels).
    """
    q = np.floor(points / voxel_size).astype(np.int64) + _KEY_OFFSET
    np.clip(q, 0, _KEY_MAX, out=q)
    return (q[:, 0] << (2 * _KEY_BITS)) | (q[:, 1] << _KEY_BITS) | q[:, 2]


def best_per_key(keys: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the highest-``score`` entry for each distinct key, sorted by key.

    keys (N,) int64, score (N,) -> (K,) int64 indices into the inputs.
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-score, keys))  # by key, then best score first
    sorted_keys = keys[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return order[first]


class VoxelCloud:
    """Bounded voxel map of coloured points with per-point confidence, depth, layer and frame.

    Arrays (all of length ``len(self)``): ``points`` (N, 3) float32 world, ``colors`` (N, 3)
    uint8, ``conf`` (N,) float32, ``depth`` (N,) float32 camera z-depth when seen, ``layer``
    (N,) int16 (-1 = none), ``frame`` (N,) int64 stream index of the frame that saw it.
    """

    _FIELDS = ("points", "colors", "conf", "depth", "layer", "frame")

    def __init__(self, max_points: int, voxel_size: float) -> None:
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not (voxel_size > 0 and np.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be a positive number, got {voxel_size}")
        self.max_points = int(max_points)
        self.voxel_size = float(voxel_size)
        self.points = np.zeros((0, 3), np.float32)
        self.colors = np.zeros((0, 3), np.uint8)
        self.conf = np.zeros(0, np.float32)
        self.depth = np.zeros(0, np.float32)
        self.layer = np.zeros(0, np.int16)
        self.frame = np.zeros(0, np.int64)
        # Sorted voxel keys and, for each, the row of its point: O(log N) membership per point.
        self._sorted_keys = np.zeros(0, np.int64)
        self._sorted_rows = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def add(
        self,
        points: np.ndarray,
        colors: np.ndarray,
        conf: np.ndarray,
        depth: np.ndarray,
        layer: np.ndarray,
        frame: int | np.ndarray,
    ) -> None:
        """Merge (N, 3) points (and their (N,) attributes) into the map."""
        n = points.shape[0]
        batch = {
            "points": np.asarray(points, np.float32).reshape(n, 3),
            "colors": np.asarray(colors, np.uint8).reshape(n, 3),
            "conf": np.asarray(conf, np.float32).reshape(n),
            "depth": np.asarray(depth, np.float32).reshape(n),
            "layer": np.asarray(layer, np.int16).reshape(n),
            "frame": np.broadcast_to(np.asarray(frame, np.int64), (n,)).copy(),
        }
        if n:
            self._merge(batch)
        while len(self) > self.max_points:
            self._coarsen()

    def _merge(self, batch: dict[str, np.ndarray]) -> None:
        keys = voxel_keys(batch["points"], self.voxel_size)
        pick = best_per_key(keys, batch["conf"])
        keys = keys[pick]
        batch = {k: v[pick] for k, v in batch.items()}

        pos = np.searchsorted(self._sorted_keys, keys)
        found = pos < self._sorted_keys.size
        found[found] = self._sorted_keys[pos[found]] == keys[found]

        # Voxels already filled: keep the more confident observation.
        rows = self._sorted_rows[pos[found]]
        better = batch["conf"][found] > self.conf[rows]
        for name in self._FIELDS:
            getattr(self, name)[rows[better]] = batch[name][found][better]

        new = ~found
        first_row = len(self)
        for name in self._FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), batch[name][new]]))
        new_rows = np.arange(first_row, len(self), dtype=np.int64)
        # keys are sorted and unique, so np.insert keeps the merged array sorted.
        self._sorted_keys = np.insert(self._sorted_keys, pos[new], keys[new])
        self._sorted_rows = np.insert(self._sorted_rows, pos[new], new_rows)

    def _coarsen(self) -> None:
        self.voxel_size *= COARSEN_FACTOR
        self._rebuild()

    def _rebuild(self) -> None:
        old = {name: getattr(self, name) for name in self._FIELDS}
        keys = voxel_keys(old["points"], self.voxel_size)
        pick = best_per_key(keys, old["conf"])
        for name in self._FIELDS:
            setattr(self, name, old[name][pick])
        self._sorted_keys = keys[pick]
        self._sorted_rows = np.arange(pick.size, dtype=np.int64)

    def transform_frames(self, frame_to_transform: dict[int, np.ndarray]) -> None:
        """Apply a (4, 4) world transform to the points of each listed frame (pose correction)."""
        if not frame_to_transform or not len(self):
            return
        for index, transform in frame_to_transform.items():
            rows = self.frame == index
            if rows.any():
                pts = self.points[rows].astype(np.float64)
                self.points[rows] = (pts @ transform[:3, :3].T + transform[:3, 3]).astype(
                    np.float32
                )
        self._rebuild()

    def select(self, max_frame: int | None = None, min_conf: float = 0.0) -> np.ndarray:
        """(N,) bool mask of points seen up to ``max_frame`` with confidence >= ``min_conf``."""
        mask = self.conf >= min_conf
        if max_frame is not None:
            mask &= self.frame <= max_frame
        return mask
