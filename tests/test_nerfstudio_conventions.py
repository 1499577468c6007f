"""OpenCV <-> OpenGL camera-to-world conversion (the one tested conversion of DESIGN.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from laser_plugin.geometry.conventions import opencv_to_opengl_c2w, opengl_to_opencv_c2w


def _random_c2w(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    out[:, :3, 3] = rng.normal(size=(n, 3)) * 3
    return out.reshape(*shape, 4, 4)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_numpy(shape, dtype):
    world_from_cam_cv = _random_c2w(shape).astype(dtype)
    before = world_from_cam_cv.copy()
    world_from_cam_gl = opencv_to_opengl_c2w(world_from_cam_cv)
    back = opengl_to_opencv_c2w(world_from_cam_gl)
    assert back.dtype == dtype and back.shape == world_from_cam_cv.shape
    np.testing.assert_array_equal(world_from_cam_cv, before)  # input untouched
    np.testing.assert_allclose(back, world_from_cam_cv, rtol=0, atol=0)
    # a conversion that did nothing would also round-trip: it must change the matrix
    assert not np.allclose(world_from_cam_gl, world_from_cam_cv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_torch_matches_numpy(dtype):
    world_from_cam_cv = torch.from_numpy(_random_c2w((4,), seed=3)).to(dtype)
    world_from_cam_gl = opencv_to_opengl_c2w(world_from_cam_cv)
    assert isinstance(world_from_cam_gl, torch.Tensor) and world_from_cam_gl.dtype == dtype
    torch.testing.assert_close(opengl_to_opencv_c2w(world_from_cam_gl), world_from_cam_cv)
    np.testing.assert_allclose(
        world_from_cam_gl.numpy(), opencv_to_opengl_c2w(world_from_cam_cv.numpy()), atol=1e-6
    )


def test_semantics_of_the_axes():
    """A point in front of an OpenCV camera (z > 0) is at z < 0 in the OpenGL camera; the image's
    up direction (-y in OpenCV) is +y in OpenGL; the camera centre does not move."""
    world_from_cam_cv = _random_c2w((), seed=7)
    world_from_cam_gl = opencv_to_opengl_c2w(world_from_cam_cv)
    pt_cam_cv = np.array([0.3, -0.2, 2.0, 1.0])  # right, up (y down), in front
    pt_world = world_from_cam_cv @ pt_cam_cv
    pt_cam_gl = np.linalg.inv(world_from_cam_gl) @ pt_world
    np.testing.assert_allclose(pt_cam_gl[:3], [0.3, 0.2, -2.0], atol=1e-12)
    np.testing.assert_allclose(world_from_cam_gl[:3, 3], world_from_cam_cv[:3, 3])
    # viewing direction in world: +z_cv == -z_gl
    np.testing.assert_allclose(world_from_cam_gl[:3, 2], -world_from_cam_cv[:3, 2])
    assert np.linalg.det(world_from_cam_gl[:3, :3]) == pytest.approx(1.0)


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\)"):
        opencv_to_opengl_c2w(np.eye(3))
    with pytest.raises(ValueError):
        opencv_to_opengl_c2w(torch.eye(3))
