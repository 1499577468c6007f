"""Sim(3) in its 4x4 matrix form ``[[s R, t], [0, 1]]`` (float64, batched over leading dims).

The matrix form of :class:`~laser_plugin.geometry.similarity.Sim3` (``Sim3.matrix`` and
``Sim3.from_matrix`` convert one transform): the pose graph composes and differentiates whole
batches of them, so it keeps them as matrices. A correction ``C`` maps a point of the
uncorrected world to the corrected one (``X' = s R X + t``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from laser_plugin.geometry.similarity import Sim3


def sim3_from(scale, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(...,) scale, (..., 3, 3) rotation, (..., 3) translation -> (..., 4, 4)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    out = np.zeros((*rotation.shape[:-2], 4, 4))
    out[..., :3, :3] = scale[..., None, None] * rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def sim3_split(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 4, 4) -> scale (...,), rotation (..., 3, 3), translation (..., 3)."""
    a = m[..., :3, :3]
    s = np.cbrt(np.linalg.det(a))
    return s, a / s[..., None, None], m[..., :3, 3]


def sim3_inverse(m: np.ndarray) -> np.ndarray:
    """Closed-form inverse: ``(s, R, t)^-1 = (1/s, R^T, -R^T t / s)``."""
    s, r, t = sim3_split(m)
    rt = np.swapaxes(r, -1, -2)
    return sim3_from(1.0 / s, rt, -(rt @ t[..., None])[..., 0] / s[..., None])


def sim3_exp(delta: np.ndarray, length: float = 1.0) -> np.ndarray:
    """Retraction: (..., 7) ``(log s, rotation vector, translation / length)`` -> (..., 4, 4).

    Not the exact Sim(3) exponential (translation is not coupled to the rotation), which a
    local parametrisation for Gauss-Newton does not need: it is smooth and identity at 0.
    """
    delta = np.asarray(delta, dtype=np.float64)
    flat = delta.reshape(-1, 7)
    rot = Rotation.from_rotvec(flat[:, 1:4]).as_matrix()
    out = sim3_from(np.exp(flat[:, 0]), rot, flat[:, 4:7] * length)
    return out.reshape((*delta.shape[:-1], 4, 4))


def sim3_log(m: np.ndarray, length: float = 1.0) -> np.ndarray:
    """Inverse of :func:`sim3_exp`: (..., 4, 4) -> (..., 7)."""
    s, r, t = sim3_split(m)
    flat_r = r.reshape(-1, 3, 3)
    rv = Rotation.from_matrix(flat_r).as_rotvec().reshape((*r.shape[:-2], 3))
    return np.concatenate([np.log(s)[..., None], rv, t / length], axis=-1)


def correct_pose(correction: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, float]:
    """Apply a Sim(3) correction (4, 4) to a rigid camera-to-world pose (4, 4).

    Returns the corrected rigid pose (4, 4) and the factor camera-frame depths scale by.
    """
    sim = Sim3.from_matrix(np.asarray(correction, dtype=np.float64))
    return sim.apply_poses(np.asarray(cam_to_world, dtype=np.float64)), float(sim.scale)
