"""Principal point, planted truth: the backends' intrinsics use the engine's pixel convention
(pixel (i, j) centred at (j, i), ``geometry/camera.py:pixel_grid``), and the exports move it to
nerfstudio's/COLMAP's (centre at (j + 0.5, i + 0.5)) exactly once.

The planted camera has its optical axis through the image centre, ((W - 1) / 2, (H - 1) / 2) in
the engine's convention. Before the fix, ``models/convert.py`` wrote (W/2, H/2): the engine then
unprojected every pixel half a pixel off, and ``transforms.json`` held cx = W/2 + 0.5.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from laser_plugin.geometry.camera import unproject_depth, unproject_depth_np
from laser_plugin.geometry.conventions import opencv_to_opengl_c2w
from laser_plugin.integrations.nerfstudio import (
    ColmapExportConfig,
    ColmapWriter,
    NerfstudioExportConfig,
    NerfstudioWriter,
)
from laser_plugin.models import convert, fast
from laser_plugin.types import ReconstructedFrame

FX, FY = 37.5, 35.0
SIZES = [(28, 42), (27, 41)]  # even and odd: (W-1)/2 and W/2 differ by exactly half a pixel


def _k_true(h: int, w: int) -> torch.Tensor:
    return torch.tensor([[FX, 0.0, (w - 1) / 2], [0.0, FY, (h - 1) / 2], [0.0, 0.0, 1.0]])


def _planted(h: int, w: int, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, h, w, 3) camera-frame points of random depth, unprojected by the engine's own
    ``unproject_depth`` with the true K (float64), and that K."""
    g = torch.Generator().manual_seed(seed)
    depth = (1.0 + 4.0 * torch.rand(n, h, w, generator=g)).double()
    k = _k_true(h, w)
    return unproject_depth(depth, k.double().expand(n, 3, 3)).float(), k


@pytest.mark.parametrize("hw", SIZES)
def test_pi3_intrinsics_recover_the_planted_principal_point_and_focal(hw):
    h, w = hw
    pts, k_true = _planted(h, w)
    conf = torch.ones(2, h, w)
    K = convert.intrinsics_from_points(pts, conf)
    # principal point: exactly the planted one (the image centre, pixel centres at integers)
    assert K[:, 0, 2].tolist() == [k_true[0, 2].item()] * 2 == [(w - 1) / 2] * 2
    assert K[:, 1, 2].tolist() == [k_true[1, 2].item()] * 2 == [(h - 1) / 2] * 2
    # focal: the fit's pixel grid is measured from that same principal point, so it is unbiased
    torch.testing.assert_close(K[:, 0, 0], torch.full((2,), FX), rtol=1e-4, atol=0)
    torch.testing.assert_close(K[:, 1, 1], torch.full((2,), FY), rtol=1e-4, atol=0)
    # the full conversion gives the same K
    pred = convert.pi3_to_prediction(pts, torch.zeros(2, h, w), torch.eye(4).expand(2, 4, 4))
    torch.testing.assert_close(pred.intrinsics, K)
    # round trip through the engine: its unprojection with the fitted K gives the planted points
    back = unproject_depth(pred.depth.double(), pred.intrinsics.double())
    torch.testing.assert_close(back, pts.double(), atol=2e-3, rtol=1e-4)


def test_focal_fit_grid_is_centred_on_the_principal_point():
    """The fit's u, v are pixel coordinates minus the K principal point: a point on the optical
    axis gives x/z = 0 only at (cx, cy); the grid is symmetric about it."""
    for h, w in SIZES:
        pts, _ = _planted(h, w, n=1)
        fx, fy, used = convert.focal_fit(pts)
        assert used.all()
        torch.testing.assert_close(fx, torch.tensor([FX]), rtol=1e-4, atol=0)
        torch.testing.assert_close(fy, torch.tensor([FY]), rtol=1e-4, atol=0)
    assert convert.centred_principal_point(28, 42) == (20.5, 13.5)
    assert convert.centred_principal_point(27, 41) == (20.0, 13.0)


@pytest.mark.parametrize("hw", SIZES)
def test_vggt_intrinsics_put_the_principal_point_at_the_image_centre(hw):
    h, w = hw
    k_true = _k_true(h, w)
    # VGGT's field of view spans the image edge to edge: W pixels, i.e. (W/2) / fx either side
    fov_w, fov_h = 2 * math.atan((w / 2) / FX), 2 * math.atan((h / 2) / FY)
    enc = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1, fov_h, fov_w]])
    _, K = convert.vggt_pose_to_cameras(enc, (h, w))
    assert K[0, 0, 2].item() == (w - 1) / 2 and K[0, 1, 2].item() == (h - 1) / 2
    torch.testing.assert_close(K[0], k_true, rtol=1e-5, atol=1e-4)
    # the outermost pixel centres are half a pixel inside the field of view, symmetrically
    left = (0 - K[0, 0, 2]) / K[0, 0, 0]
    right = (w - 1 - K[0, 0, 2]) / K[0, 0, 0]
    torch.testing.assert_close(left, -right)
    torch.testing.assert_close(right + 0.5 / K[0, 0, 0], torch.tensor(math.tan(fov_w / 2)))


def test_fast_paths_use_the_same_conversion():
    assert fast.intrinsics_from_points is convert.intrinsics_from_points
    assert fast.pi3_to_prediction is convert.pi3_to_prediction
    assert fast.vggt_to_prediction is convert.vggt_to_prediction


def _frame_from_pi3(h: int, w: int, c2w: np.ndarray, source: bool) -> tuple:
    """A ReconstructedFrame built from a planted π³ output (K from the conversion), and the
    planted world points (h, w, 3)."""
    pts, _ = _planted(h, w, n=1, seed=3)
    pred = convert.pi3_to_prediction(pts, torch.zeros(1, h, w), torch.eye(4)[None])
    pts_cam = pts[0].double().numpy()
    pts_world = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    frame = ReconstructedFrame(
        index=0,
        timestamp=0.0,
        image=image,
        cam_to_world=c2w,
        intrinsics=pred.intrinsics[0].double().numpy(),
        depth=pred.depth[0].numpy(),
        conf=np.ones((h, w), np.float32),
        source_image=np.repeat(np.repeat(image, 2, 0), 2, 1) if source else None,
    )
    return frame, pts_world


def _c2w() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("yxz", [0.2, -0.1, 0.05]).as_matrix()
    c2w[:3, 3] = [0.3, -0.2, 0.1]
    return c2w


def _project_nerfstudio(entry: dict, pts_world: np.ndarray) -> np.ndarray:
    """nerfstudio's camera model (``cameras.py``): OpenGL camera-to-world, a ray through pixel
    coordinates (x, y) has direction ((x - cx) / fx, -(y - cy) / fy, -1); inverted here."""
    c2w_gl = np.asarray(entry["transform_matrix"], np.float64)
    p = (pts_world - c2w_gl[:3, 3]) @ c2w_gl[:3, :3]  # world -> OpenGL camera
    x = entry["cx"] + entry["fl_x"] * p[..., 0] / -p[..., 2]
    y = entry["cy"] - entry["fl_y"] * p[..., 1] / -p[..., 2]
    return np.stack([x, y], -1)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("resolution", ["model", "source"])
def test_exported_intrinsics_project_planted_points_onto_their_pixels(tmp_path, hw, resolution):
    """Planted π³ output -> convert -> ReconstructedFrame -> transforms.json: each planted point,
    projected with the exported intrinsics and pose as nerfstudio does, lands on the centre of the
    pixel it came from ((j + 0.5, i + 0.5) in nerfstudio's convention; 2x that for the 2x source
    images). With the old (W/2, H/2) it landed half a pixel right of and below it."""
    h, w = hw
    c2w = _c2w()
    frame, pts_world = _frame_from_pi3(h, w, c2w, source=resolution == "source")
    # the engine's own unprojection of the converted frame gives the planted points
    np.testing.assert_allclose(
        unproject_depth_np(frame.depth.astype(np.float64), frame.intrinsics) @ c2w[:3, :3].T
        + c2w[:3, 3],
        pts_world,
        atol=2e-3,
    )
    writer = NerfstudioWriter(tmp_path / "ns", NerfstudioExportConfig(image_resolution=resolution))
    writer.on_frame(frame)
    writer.close()
    entry = json.loads((tmp_path / "ns" / "transforms.json").read_text())["frames"][0]
    s = 2 if resolution == "source" else 1
    assert (entry["w"], entry["h"]) == (s * w, s * h)
    # the image centre in nerfstudio's convention is (W/2, H/2): exactly, no extra half pixel
    assert entry["cx"] == s * w / 2 and entry["cy"] == s * h / 2
    np.testing.assert_allclose(opencv_to_opengl_c2w(c2w), entry["transform_matrix"], atol=1e-12)
    uv = _project_nerfstudio(entry, pts_world)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    centres = s * np.stack([u + 0.5, v + 0.5], -1)
    np.testing.assert_allclose(uv, centres, atol=2e-3 * s)
    # every point lands inside its own pixel (the half-pixel error would put it on a corner)
    assert (np.floor(uv / s) == np.stack([u, v], -1)).all()


def test_colmap_camera_has_the_image_centre(tmp_path):
    h, w = SIZES[0]
    frame, _ = _frame_from_pi3(h, w, _c2w(), source=False)
    writer = ColmapWriter(
        tmp_path, ColmapExportConfig(image_resolution="model", model_format="txt")
    )
    writer.on_frame(frame)
    writer.close()
    lines = (tmp_path / "sparse" / "0" / "cameras.txt").read_text().splitlines()
    cam = next(ln.split() for ln in lines if ln and not ln.startswith("#"))
    assert cam[1] == "PINHOLE" and (int(cam[2]), int(cam[3])) == (w, h)
    fx, fy, cx, cy = map(float, cam[4:8])
    assert (cx, cy) == (w / 2, h / 2)  # COLMAP: top-left pixel centre at (0.5, 0.5)
    assert fx == pytest.approx(FX, rel=1e-4) and fy == pytest.approx(FY, rel=1e-4)
