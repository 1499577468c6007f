"""A compact index of keyframe descriptors for place recognition.

Each keyframe costs one float16 descriptor (D values: 384 bytes for the emulator's D = 192) plus
its window and frame numbers; images and depth live on disk (:mod:`laser_plugin.spill`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Candidate(NamedTuple):
    window: int
    """Past window the best match belongs to."""
    similarity: float
    """Best cosine similarity between a query keyframe and one of that window's keyframes."""


def normalise_descriptors(desc: np.ndarray) -> np.ndarray:
    """(N, D) -> unit rows (zero rows stay zero)."""
    desc = np.asarray(desc, dtype=np.float32)
    norm = np.linalg.norm(desc, axis=1, keepdims=True)
    return desc / np.maximum(norm, 1e-12)


class KeyframeIndex:
    """Unit descriptors of past keyframes, searchable by cosine similarity (brute force).

    Brute force is exact and, at one matrix-vector product per query over float16 rows, costs
    about a millisecond per 10,000 keyframes; an approximate index would only pay off far beyond
    the streams this engine targets.
    """

    def __init__(self, dim: int | None = None, capacity: int = 1024):
        self.dim = dim
        self._desc = None if dim is None else np.zeros((capacity, dim), np.float16)
        self._window = np.zeros(capacity, np.int64)
        self._frame = np.zeros(capacity, np.int64)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def nbytes(self) -> int:
        return (
            (0 if self._desc is None else self._desc.nbytes)
            + self._window.nbytes
            + self._frame.nbytes
        )

    def add(self, window: int, frames: np.ndarray, descriptors: np.ndarray) -> None:
        """Add keyframes (K,) frame indices of one window with their (K, D) descriptors."""
        desc = normalise_descriptors(descriptors)
        if self._desc is None:
            self.dim = desc.shape[1]
            self._desc = np.zeros((len(self._window), self.dim), np.float16)
        if desc.shape[1] != self.dim:
            raise ValueError(f"descriptor size changed from {self.dim} to {desc.shape[1]}")
        k = len(desc)
        while self.size + k > len(self._window):  # amortised doubling
            grow = len(self._window)
            self._desc = np.concatenate([self._desc, np.zeros((grow, self.dim), np.float16)])
            self._window = np.concatenate([self._window, np.zeros(grow, np.int64)])
            self._frame = np.concatenate([self._frame, np.zeros(grow, np.int64)])
        sl = slice(self.size, self.size + k)
        self._desc[sl] = desc
        self._window[sl] = window
        self._frame[sl] = frames
        self.size += k

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(descriptors (N, D) float16 unit rows, windows (N,), frames (N,)) (for a resume)."""
        n = self.size
        return self._desc[:n].copy(), self._window[:n].copy(), self._frame[:n].copy()

    @classmethod
    def from_arrays(
        cls, descriptors: np.ndarray, windows: np.ndarray, frames: np.ndarray
    ) -> KeyframeIndex:
        """The index :meth:`to_arrays` saved, row for row (the rows are not renormalised)."""
        n, dim = descriptors.shape
        index = cls(dim, capacity=max(1024, n))
        index._desc[:n] = descriptors
        index._window[:n] = windows
        index._frame[:n] = frames
        index.size = n
        return index

    def query(
        self, descriptors: np.ndarray, max_window: int, min_similarity: float
    ) -> Candidate | None:
        """Best past window (index <= ``max_window``) for (Q, D) query descriptors, if any keyframe
        of it reaches ``min_similarity``."""
        if self.size == 0 or self._desc is None:
            return None
        keep = self._window[: self.size] <= max_window
        if not keep.any():
            return None
        q = normalise_descriptors(descriptors)
        sims = (self._desc[: self.size][keep].astype(np.float32) @ q.T).max(1)  # (M,)
        best = int(np.argmax(sims))
        if sims[best] < min_similarity:
            return None
        return Candidate(int(self._window[: self.size][keep][best]), float(sims[best]))
