"""Our export read by the real nerfstudio parsers: ``nerfstudio-data`` and our ``laser-data``."""

from __future__ import annotations

import numpy as np
import pytest
from nerfstudio_scene import HEIGHT, K_MODEL, PLANE_Z, WIDTH, plane_frame

from laser_plugin.geometry.conventions import opencv_to_opengl_c2w
from laser_plugin.integrations.nerfstudio import NerfstudioExportConfig, NerfstudioWriter
from laser_plugin.io.ply import read_ply

pytestmark = pytest.mark.nerfstudio
N = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exports of the plane scene: source resolution + npy, model resolution + 16-bit PNG."""
    out = {}
    for name, cfg in {
        "source_npy": NerfstudioExportConfig(),
        "model_png16": NerfstudioExportConfig(image_resolution="model", depth_format="png16"),
    }.items():
        root = tmp_path_factory.mktemp(name)
        writer = NerfstudioWriter(root, cfg)
        for i in range(N):
            writer.on_frame(plane_frame(i))
        writer.close()
        out[name] = root
    return out


def _train_indices():
    from laser_plugin.integrations.nerfstudio.writer import held_out_indices

    held = set(held_out_indices(N, 8))
    return [i for i in range(N) if i not in held], sorted(held)


def _laser_data_config(**kw):
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    configs, descriptions = discover_dataparsers()
    assert "laser-data" in configs, "the nerfstudio.dataparser_configs entry point is not installed"
    assert "LASER" in descriptions["laser-data"]
    import dataclasses

    return dataclasses.replace(configs["laser-data"], **kw)


def _check_cameras(outputs, frame_ids, scale: float):
    cams = outputs.cameras
    assert len(cams) == len(frame_ids)
    for row, i in enumerate(frame_ids):
        f = plane_frame(i)
        expected = opencv_to_opengl_c2w(f.cam_to_world)[:3, :4]
        np.testing.assert_allclose(cams.camera_to_worlds[row].numpy(), expected, atol=1e-5)
        assert float(cams.fx[row]) == pytest.approx(K_MODEL[0, 0] * scale, rel=1e-6)
        assert float(cams.fy[row]) == pytest.approx(K_MODEL[1, 1] * scale, rel=1e-6)
        assert float(cams.cx[row]) == pytest.approx((K_MODEL[0, 2] + 0.5) * scale, rel=1e-6)
        assert float(cams.cy[row]) == pytest.approx((K_MODEL[1, 2] + 0.5) * scale, rel=1e-6)
        assert int(cams.width[row]) == WIDTH * scale and int(cams.height[row]) == HEIGHT * scale


def test_nerfstudio_data_parses_with_documented_options(exported):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    root = exported["source_npy"]
    cfg = NerfstudioDataParserConfig(
        data=root,
        orientation_method="none",
        center_method="none",
        auto_scale_poses=False,
        depth_unit_scale_factor=1.0,
        load_3D_points=True,
    )
    parser = cfg.setup()
    train = parser.get_dataparser_outputs("train")
    train_ids, val_ids = _train_indices()
    _check_cameras(train, train_ids, scale=2)
    np.testing.assert_allclose(train.dataparser_transform.numpy(), np.eye(4)[:3], atol=1e-7)
    assert train.dataparser_scale == 1.0
    xyz, rgb = read_ply(root / "sparse_pc.ply")
    np.testing.assert_allclose(train.metadata["points3D_xyz"].numpy(), xyz, atol=1e-6)
    np.testing.assert_array_equal(train.metadata["points3D_rgb"].numpy(), rgb)
    assert len(train.metadata["depth_filenames"]) == len(train_ids)
    val = parser.get_dataparser_outputs("val")
    _check_cameras(val, val_ids, scale=2)


def test_nerfstudio_defaults_would_move_our_poses(exported):
    """Why laser-data exists: nerfstudio-data's defaults re-orient and re-scale the scene."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    out = (
        NerfstudioDataParserConfig(data=exported["source_npy"])
        .setup()
        .get_dataparser_outputs("train")
    )
    assert (
        not np.allclose(out.dataparser_transform.numpy(), np.eye(4)[:3], atol=1e-3)
        or out.dataparser_scale != 1.0
    )


@pytest.mark.parametrize("name, unit, scale", [("source_npy", 1.0, 2), ("model_png16", 0.001, 1)])
def test_laser_data_keeps_poses_and_reads_depth_unit(exported, name, unit, scale):
    cfg = _laser_data_config(data=exported[name])
    assert (
        cfg.orientation_method,
        cfg.center_method,
        cfg.auto_scale_poses,
        cfg.load_3D_points,
    ) == (
        "none",
        "none",
        False,
        True,
    )
    out = cfg.setup().get_dataparser_outputs("train")
    train_ids, _ = _train_indices()
    _check_cameras(out, train_ids, scale=scale)
    assert out.dataparser_scale == 1.0
    assert out.metadata["depth_unit_scale_factor"] == pytest.approx(unit)
    pts = out.metadata["points3D_xyz"].numpy()
    np.testing.assert_allclose(pts[:, 2], PLANE_Z, atol=1e-3)  # our world frame, untouched


def test_rays_times_depth_land_on_the_plane(exported):
    """End to end through nerfstudio's own camera model and depth loader: for every pixel, the
    nerfstudio ray scaled by the stored z-depth hits the known plane (axis flip, half-pixel
    offset, intrinsics and depth unit all have to be right)."""
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    out = _laser_data_config(data=exported["model_png16"]).setup().get_dataparser_outputs("train")
    row = 1
    cams = out.cameras
    rays = cams.generate_rays(camera_indices=row, keep_shape=True)
    depth = get_depth_image_from_path(
        out.metadata["depth_filenames"][row],
        int(cams.height[row]),
        int(cams.width[row]),
        out.metadata["depth_unit_scale_factor"] * out.dataparser_scale,
    )[..., 0].numpy()
    directions = (rays.directions * rays.metadata["directions_norm"]).numpy()  # unit z-depth rays
    pts = rays.origins.numpy() + directions * depth[..., None]
    good = np.ones_like(depth, bool)
    good[:8, :8] = False  # the planted wrong corner
    np.testing.assert_allclose(pts[good][:, 2], PLANE_Z, atol=2e-3)
    assert np.abs(pts[~good][:, 2] - PLANE_Z).min() > 0.5  # and the wrong corner really is wrong


def test_laser_data_is_a_subcommand_of_the_dataparser_union():
    """What `ns-train splatfacto ... laser-data --scale-factor 2` parses (ns-train itself needs a
    CUDA torchvision; its dataparser argument is exactly this union)."""
    import tyro
    from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion

    from laser_plugin.integrations.nerfstudio.dataparser import LaserDataParserConfig

    cfg = tyro.cli(
        AnnotatedDataParserUnion, args=["laser-data", "--data", "d", "--scale-factor", "2"]
    )
    assert isinstance(cfg, LaserDataParserConfig)
    assert (cfg.orientation_method, cfg.auto_scale_poses, cfg.scale_factor) == ("none", False, 2.0)
    default = tyro.cli(AnnotatedDataParserUnion, args=["nerfstudio-data"])
    assert not isinstance(default, LaserDataParserConfig)  # nerfstudio's own parser is untouched
