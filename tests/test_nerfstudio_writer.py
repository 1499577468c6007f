"""The nerfstudio dataset writer and the COLMAP writer on closed-form geometry (no nerfstudio)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nerfstudio_scene import HEIGHT, K_MODEL, PLANE_Z, WIDTH, plane_frame
from PIL import Image

from laser_plugin.errors import OutputError
from laser_plugin.geometry.conventions import opengl_to_opencv_c2w
from laser_plugin.integrations.nerfstudio import (
    NerfstudioExportConfig,
    NerfstudioWriter,
    PinholeIntrinsics,
    TransformsFile,
)
from laser_plugin.integrations.nerfstudio.writer import held_out_indices
from laser_plugin.io.ply import read_ply

N = 10


def _export(out, n=N, **cfg):
    writer = NerfstudioWriter(out, NerfstudioExportConfig(**cfg))
    frames = [plane_frame(i) for i in range(n)]
    for f in frames:
        writer.on_frame(f)
    writer.close()
    return frames, json.loads((out / "transforms.json").read_text())


def test_transforms_json_matches_frames(tmp_path):
    frames, meta = _export(tmp_path)
    parsed = TransformsFile.from_json(meta)
    assert len(parsed.frames) == N and meta["camera_model"] == "PINHOLE"
    for f, entry in zip(frames, parsed.frames):
        # poses: OpenGL in the file, our OpenCV pose after the documented inverse conversion
        np.testing.assert_allclose(
            opengl_to_opencv_c2w(entry.transform_matrix), f.cam_to_world, atol=1e-12
        )
        # intrinsics: source image is 2x the model image; half-pixel convention
        assert (entry.intrinsics.w, entry.intrinsics.h) == (2 * WIDTH, 2 * HEIGHT)
        assert entry.intrinsics.fl_x == pytest.approx(2 * K_MODEL[0, 0])
        assert entry.intrinsics.cx == pytest.approx(2 * (K_MODEL[0, 2] + 0.5))
        assert entry.intrinsics.cy == pytest.approx(2 * (K_MODEL[1, 2] + 0.5))
        assert entry.laser_index == f.index and entry.timestamp == pytest.approx(f.timestamp)
        img = np.asarray(Image.open(tmp_path / entry.file_path))
        np.testing.assert_array_equal(img, f.source_image)
        depth = np.load(tmp_path / entry.depth_file_path)
        np.testing.assert_array_equal(depth, f.depth)
    assert meta["depth_unit_scale_factor"] == 1.0
    assert meta["laser"]["schema_version"] == 1


def test_intrinsics_convention_is_exact_under_resize():
    """A pixel centre of the model image and the same scene point in the 2x source image map to
    the same ray: the half-pixel convention makes resizing a plain scale."""
    k_model = PinholeIntrinsics.from_opencv(K_MODEL, WIDTH, HEIGHT)
    k_source = k_model.resized(2 * WIDTH, 2 * HEIGHT)
    u, v = 7.0, 11.0  # model pixel centre (OpenCV integers)
    ray_model = np.linalg.inv(k_model.to_opencv()) @ [u, v, 1]
    # that pixel covers source pixels 2u..2u+1; its centre is at 2u + 0.5 in OpenCV integers
    ray_source = np.linalg.inv(k_source.to_opencv()) @ [2 * u + 0.5, 2 * v + 0.5, 1]
    np.testing.assert_allclose(ray_model, ray_source, atol=1e-12)


def test_point_cloud_is_filtered_and_downsampled(tmp_path):
    _export(tmp_path)
    xyz, rgb = read_ply(tmp_path / "sparse_pc.ply")
    assert len(xyz) > 100
    # every point lies on the plane: the wrong, low-confidence corner was filtered out
    # (its points would sit at Z ~ 2); voxel means of plane points stay on the plane
    np.testing.assert_allclose(xyz[:, 2], PLANE_Z, atol=1e-3)
    samples = N * (HEIGHT // 2) * (WIDTH // 2)
    assert len(xyz) < 0.6 * samples  # overlapping views were merged into voxels
    assert rgb.dtype == np.uint8 and rgb.std() > 10


def test_model_resolution_png16_and_downscales(tmp_path):
    frames, meta = _export(
        tmp_path, image_resolution="model", depth_format="png16", num_downscales=2
    )
    assert meta["depth_unit_scale_factor"] == pytest.approx(0.001)
    first = meta["frames"][0]
    assert (first["w"], first["h"]) == (WIDTH, HEIGHT)
    assert first["cx"] == pytest.approx(K_MODEL[0, 2] + 0.5)
    stored = np.asarray(Image.open(tmp_path / first["depth_file_path"])).astype(np.float64)
    valid = frames[0].depth > 0
    np.testing.assert_allclose(stored[valid] * 0.001, frames[0].depth[valid], atol=6e-4)
    name = first["file_path"].split("/")[-1]
    depth_name = first["depth_file_path"].split("/")[-1]
    for factor in (2, 4):
        img = Image.open(tmp_path / f"images_{factor}" / name)
        assert img.size == (WIDTH // factor, HEIGHT // factor)
        # nerfstudio resolves depths_N/<basename> without checking: it must exist for every frame
        for fr in meta["frames"]:
            assert (tmp_path / f"depths_{factor}" / fr["depth_file_path"].split("/")[-1]).is_file()
        d = np.asarray(Image.open(tmp_path / f"depths_{factor}" / depth_name))
        assert d.shape == (HEIGHT // factor, WIDTH // factor)


def test_splits_hold_out_every_eighth(tmp_path):
    _, meta = _export(tmp_path, n=17)
    val, train = meta["val_filenames"], meta["train_filenames"]
    assert [int(p[-10:-4]) for p in val] == [4, 12]
    assert set(val).isdisjoint(train) and len(val) + len(train) == 17
    assert meta["test_filenames"] == val
    assert held_out_indices(3, 8) == [1]  # short clips still get an eval image
    assert held_out_indices(1, 8) == [] and held_out_indices(20, 0) == []


def test_refuses_existing_dataset_and_overwrites_stale_files(tmp_path):
    _export(tmp_path, n=6)
    with pytest.raises(OutputError, match="already holds"):
        NerfstudioWriter(tmp_path)
    _, meta = _export(tmp_path, n=3, overwrite=True)
    assert len(meta["frames"]) == 3
    assert len(list((tmp_path / "images").iterdir())) == 3  # stale frames of the first export gone


def test_no_transforms_json_until_closed(tmp_path):
    writer = NerfstudioWriter(tmp_path)
    writer.on_frame(plane_frame(0))
    assert not (tmp_path / "transforms.json").exists()
    writer.close()
    assert (tmp_path / "transforms.json").exists()
    writer.close()  # idempotent


def test_empty_export_writes_no_dataset_and_bad_paths_are_clear_errors(tmp_path):
    NerfstudioWriter(tmp_path).close()
    assert not (tmp_path / "transforms.json").exists()  # no frames: not a dataset
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        NerfstudioWriter(tmp_path / "file")


def test_cropped_source_falls_back_to_model_images(tmp_path):
    """A source that is not a resize of the model image (a crop) cannot use scaled intrinsics."""
    frame = plane_frame(0)
    frame.source_image = np.zeros((4 * HEIGHT, 2 * WIDTH, 3), np.uint8)  # other aspect ratio
    writer = NerfstudioWriter(tmp_path)
    with pytest.warns(UserWarning, match="not a resize"):
        writer.on_frame(frame)
    writer.close()
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert (meta["frames"][0]["w"], meta["frames"][0]["h"]) == (WIDTH, HEIGHT)
    assert Image.open(tmp_path / meta["frames"][0]["file_path"]).size == (WIDTH, HEIGHT)
