"""Camera-axis conventions at the engine's boundary: OpenCV inside, OpenGL for nerfstudio.

OpenCV camera axes (the engine, COLMAP, gsplat): x right, y down, z forward.
OpenGL camera axes (nerfstudio ``transforms.json``, Blender): x right, y up, z back.

The two camera frames differ by a half turn about the camera x axis, ``diag(1, -1, -1)``. In a
camera-to-world matrix the camera axes are the columns of the rotation, so the change acts on the
right: ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)``. The camera centre (last column) and the world
frame are untouched. The flip is its own inverse, so both directions share one implementation;
they exist as two names so call sites say which way they go.

This is the only place the axis flip is written (DESIGN.md §3, STYLE.md "conventions").
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Column signs of diag(1, -1, -1, 1): negate the camera y and z axes.
_FLIP_SIGNS = (1.0, -1.0, -1.0, 1.0)


def _flip_camera_yz(c2w: ArrayT) -> ArrayT:
    if isinstance(c2w, torch.Tensor):
        if c2w.shape[-2:] != (4, 4):
            raise ValueError(
                f"expected (..., 4, 4) camera-to-world matrices, got {tuple(c2w.shape)}"
            )
        signs = torch.tensor(_FLIP_SIGNS, dtype=c2w.dtype, device=c2w.device)
        return c2w * signs  # broadcasts over the last (column) axis = right-multiply by diag
    c2w = np.asarray(c2w)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected (..., 4, 4) camera-to-world matrices, got {c2w.shape}")
    if not np.issubdtype(c2w.dtype, np.floating):
        c2w = c2w.astype(np.float64)
    return c2w * np.asarray(_FLIP_SIGNS, dtype=c2w.dtype)


def opencv_to_opengl_c2w(c2w: ArrayT) -> ArrayT:
    """Camera-to-world with OpenCV camera axes -> the same camera with OpenGL camera axes.

    ``c2w`` is (..., 4, 4), numpy or torch; returns a new array of the same type, shape and dtype
    (integer numpy input becomes float64). The input is not modified.
    """
    return _flip_camera_yz(c2w)


def opengl_to_opencv_c2w(c2w: ArrayT) -> ArrayT:
    """Inverse of :func:`opencv_to_opengl_c2w` (the flip is an involution). (..., 4, 4)."""
    return _flip_camera_yz(c2w)
