"""COLMAP export read back with pycolmap (installed with the nerfstudio extra)."""

from __future__ import annotations

import numpy as np
import pytest
from nerfstudio_scene import HEIGHT, K_MODEL, PLANE_Z, WIDTH, plane_frame

from laser_plugin.integrations.nerfstudio import ColmapExportConfig, ColmapWriter

pytestmark = pytest.mark.nerfstudio
N = 6


@pytest.mark.parametrize("model_format", ["bin", "txt"])
def test_colmap_export_reads_back(tmp_path, model_format):
    pycolmap = pytest.importorskip("pycolmap")
    writer = ColmapWriter(tmp_path, ColmapExportConfig(model_format=model_format))
    frames = [plane_frame(i) for i in range(N)]
    for f in frames:
        writer.on_frame(f)
    writer.close()

    rec = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0"))
    assert rec.num_images() == N
    assert len(rec.cameras) == 1  # identical intrinsics share one camera
    cam = next(iter(rec.cameras.values()))
    assert cam.model.name == "PINHOLE" and (cam.width, cam.height) == (2 * WIDTH, 2 * HEIGHT)
    # COLMAP's pixel convention is nerfstudio's: top-left pixel centre at (0.5, 0.5)
    np.testing.assert_allclose(
        cam.params,
        [
            2 * K_MODEL[0, 0],
            2 * K_MODEL[1, 1],
            2 * (K_MODEL[0, 2] + 0.5),
            2 * (K_MODEL[1, 2] + 0.5),
        ],
    )
    by_name = {img.name: img for img in rec.images.values()}
    for f in frames:
        img = by_name[f"frame_{f.index:06d}.png"]
        cam_from_world = (
            img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        )
        np.testing.assert_allclose(
            cam_from_world.matrix(), np.linalg.inv(f.cam_to_world)[:3], atol=1e-9
        )
        assert (tmp_path / "images" / img.name).is_file()
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    assert len(xyz) > 100
    np.testing.assert_allclose(xyz[:, 2], PLANE_Z, atol=1e-3)  # confident points only, on the plane
    # a point projects inside the image of a camera that saw it (pose + intrinsics consistent)
    img0 = by_name["frame_000000.png"]
    uv = cam.img_from_cam(
        (np.linalg.inv(frames[0].cam_to_world) @ np.c_[xyz, np.ones(len(xyz))].T).T[:, :3]
    )
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
    assert inside.mean() > 0.2 and img0.camera_id == cam.camera_id
