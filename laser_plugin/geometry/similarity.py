"""The one Sim(3) type, for torch tensors and numpy arrays alike.

``Sim3(scale, rotation, translation)`` maps ``X -> s R X + t`` (docs/conventions.md, "Sim(3)").
The engine's registration holds torch tensors in it (``geometry.sim3``), evaluation and loop
closure numpy arrays (``metrics``, ``loop.sim3np``); the methods are the same for both, written
with operators the two share, so no code converts between two types. Its 4x4 matrix form
``[[s R, t], [0, 1]]`` (:meth:`Sim3.matrix`, :meth:`Sim3.from_matrix`) is what the pose graph
composes in batches (``loop.sim3np``). Torch is not imported here: evaluation uses the type
without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _is_torch(x: Any) -> bool:
    return hasattr(x, "clone") and hasattr(x, "new_zeros")


def _copy(x: Any) -> Any:
    return x.clone() if _is_torch(x) else np.array(x, copy=True)


@dataclass(frozen=True)
class Sim3:
    """Similarity ``X -> s R X + t``: scale () (or a float), rotation (3, 3), translation (3,),
    all torch or all numpy. Unpacks as ``s, R, t = sim``."""

    scale: Any
    rotation: Any
    translation: Any

    def __iter__(self):
        return iter((self.scale, self.rotation, self.translation))

    @staticmethod
    def identity(device=None, dtype=None) -> Sim3:
        """The identity, as torch tensors (the engine's; ``dtype`` default float32)."""
        import torch

        dtype = dtype or torch.float32
        return Sim3(
            torch.ones((), device=device, dtype=dtype),
            torch.eye(3, device=device, dtype=dtype),
            torch.zeros(3, device=device, dtype=dtype),
        )

    def apply_points(self, points: Any) -> Any:
        """(..., 3) -> (..., 3)."""
        return self.scale * points @ self.rotation.T + self.translation

    def apply_poses(self, cam_to_world: Any) -> Any:
        """(..., 4, 4) rigid camera-to-world poses in this transform's source frame -> the same
        cameras in its target frame: ``[R R_c | s R t_c + t]`` (rotations are not scaled, so the
        poses stay rigid; their depths scale by ``s``)."""
        out = _copy(cam_to_world)
        out[..., :3, :3] = self.rotation @ cam_to_world[..., :3, :3]
        out[..., :3, 3] = self.apply_points(cam_to_world[..., :3, 3])
        return out

    def matrix(self) -> Any:
        """(4, 4) homogeneous matrix ``[[s R, t], [0, 1]]``."""
        r = self.rotation
        m = r.new_zeros((4, 4)) if _is_torch(r) else np.zeros((4, 4), dtype=r.dtype)
        m[:3, :3] = self.scale * r
        m[:3, 3] = self.translation
        m[3, 3] = 1
        return m

    @staticmethod
    def from_matrix(m: Any) -> Sim3:
        """The transform of a (4, 4) matrix ``[[s R, t], [0, 1]]`` (s > 0)."""
        a = m[:3, :3]
        if _is_torch(m):
            import torch

            s = torch.linalg.det(a).clamp_min(0) ** (1.0 / 3.0)
        else:
            s = float(np.cbrt(np.linalg.det(a)))
        return Sim3(s, a / s, _copy(m[:3, 3]))

    def inverse(self) -> Sim3:
        """``(s, R, t)^-1 = (1/s, R^T, -R^T t / s)``."""
        rt = self.rotation.T
        return Sim3(1.0 / self.scale, rt, -(rt @ self.translation) / self.scale)

    def compose(self, other: Sim3) -> Sim3:
        """``self ∘ other``: first ``other``, then ``self``."""
        return Sim3(
            self.scale * other.scale,
            self.rotation @ other.rotation,
            self.apply_points(other.translation),
        )
