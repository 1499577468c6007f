"""A real LASER run on the synthetic demo scene, exported with `laser export` and parsed by
nerfstudio: the parsed cameras are our trajectory (trajectory.txt, intrinsics.txt) after the
documented transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from laser_plugin.geometry.conventions import opengl_to_opencv_c2w
from laser_plugin.io.ply import read_ply

NUM_FRAMES = 24


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The run directory `laser demo` writes (synthetic scene, emulated model), kept short."""
    from laser_plugin.cli.main import main

    run_dir = tmp_path_factory.mktemp("run") / "demo"
    args = ["demo", "--output-dir", str(run_dir), "--frames", str(NUM_FRAMES), "--quiet"]
    assert main([*args, "--window-size", "8", "--overlap", "3"]) == 0
    return run_dir


def _tum(run_dir):
    """trajectory.txt -> (N, 4, 4) camera-to-world (OpenCV); quaternions are x y z w."""
    rows = np.loadtxt(run_dir / "trajectory.txt", ndmin=2)
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = Rotation.from_quat(rows[:, 4:8]).as_matrix()
    c2w[:, :3, 3] = rows[:, 1:4]
    return c2w


def _intrinsics(run_dir):
    """intrinsics.txt -> (N, 6): fx fy cx cy width height (OpenCV pixel centres)."""
    return np.loadtxt(run_dir / "intrinsics.txt", ndmin=2)[:, 1:]


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    from laser_plugin.cli.main import main

    out = tmp_path_factory.mktemp("ns") / "dataset"
    assert main(["export", "nerfstudio", str(demo_run), str(out)]) == 0
    return out


def test_export_matches_trajectory_files(demo_run, exported):
    meta = json.loads((exported / "transforms.json").read_text())
    tum, intr = _tum(demo_run), _intrinsics(demo_run)
    assert len(meta["frames"]) == len(tum) == NUM_FRAMES
    for frame, c2w, k in zip(meta["frames"], tum, intr):
        back = opengl_to_opencv_c2w(np.array(frame["transform_matrix"]))
        np.testing.assert_allclose(back, c2w, atol=1e-6)  # TUM keeps ~9 significant digits
        fx, fy, cx, cy, w, h = k
        sx, sy = frame["w"] / w, frame["h"] / h
        np.testing.assert_allclose(
            [frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]],
            [fx * sx, fy * sy, (cx + 0.5) * sx, (cy + 0.5) * sy],
            rtol=1e-6,
        )
    xyz, _ = read_ply(exported / "sparse_pc.ply")
    assert len(xyz) > 1000 and np.isfinite(xyz).all()


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    from laser_plugin.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "nerfstudio", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "not a laser run directory" in err


def test_colmap_export_cli(demo_run, tmp_path):
    from laser_plugin.cli.main import main

    assert main(["export", "colmap", str(demo_run), str(tmp_path / "colmap")]) == 0
    sparse = tmp_path / "colmap" / "sparse" / "0"
    assert {p.name for p in sparse.iterdir()} == {"cameras.bin", "images.bin", "points3D.bin"}
    assert len(list((tmp_path / "colmap" / "images").iterdir())) == NUM_FRAMES


@pytest.mark.nerfstudio
def test_laser_data_parses_demo_export(demo_run, exported):
    import dataclasses

    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    configs, _ = discover_dataparsers()
    parser = dataclasses.replace(configs["laser-data"], data=exported).setup()
    meta = json.loads((exported / "transforms.json").read_text())
    names = [f["file_path"] for f in meta["frames"]]
    tum = _tum(demo_run)
    for split, listed in (("train", meta["train_filenames"]), ("val", meta["val_filenames"])):
        out = parser.get_dataparser_outputs(split)
        ids = [names.index(p) for p in listed]
        assert [p.name for p in out.image_filenames] == [names[i].split("/")[-1] for i in ids]
        c2w_gl = np.tile(np.eye(4), (len(ids), 1, 1))
        c2w_gl[:, :3, :] = out.cameras.camera_to_worlds.numpy()
        c2w_cv = opengl_to_opencv_c2w(c2w_gl)
        # positions and orientations (as quaternions, the TUM file's own representation)
        np.testing.assert_allclose(c2w_cv[:, :3, 3], tum[ids, :3, 3], atol=1e-5)
        q_parsed = Rotation.from_matrix(c2w_cv[:, :3, :3]).as_quat()
        q_tum = Rotation.from_matrix(tum[ids, :3, :3]).as_quat()
        np.testing.assert_allclose(np.abs(np.sum(q_parsed * q_tum, axis=1)), 1.0, atol=1e-6)
        intr = _intrinsics(demo_run)[ids]
        np.testing.assert_allclose(out.cameras.fx.numpy()[:, 0], intr[:, 0], rtol=1e-5)
        np.testing.assert_allclose(out.cameras.cx.numpy()[:, 0], intr[:, 2] + 0.5, rtol=1e-5)
    xyz, _ = read_ply(exported / "sparse_pc.ply")
    np.testing.assert_allclose(out.metadata["points3D_xyz"].numpy(), xyz, atol=1e-5)
    assert out.metadata["depth_unit_scale_factor"] == 1.0


def test_interrupted_stream_still_leaves_a_valid_dataset(tmp_path):
    """The engine closes sinks when the stream breaks: the frames finished so far form a dataset."""
    from laser_plugin import LaserConfig
    from laser_plugin.integrations.nerfstudio.pipeline import reconstruct_to_nerfstudio
    from laser_plugin.models.synthetic import make_model, make_scene

    scene = make_scene("demo", num_frames=NUM_FRAMES)

    def camera():
        for i, rgb in enumerate(scene.frames()):
            if i == 17:
                raise RuntimeError("camera unplugged")
            yield rgb

    with pytest.raises(RuntimeError, match="unplugged"):
        reconstruct_to_nerfstudio(
            camera(),
            tmp_path,
            model=make_model(scene=scene),
            laser=LaserConfig(window_size=8, overlap=3),
        )
    meta = json.loads((tmp_path / "transforms.json").read_text())
    indices = [f["laser_index"] for f in meta["frames"]]
    assert len(indices) >= 8 and indices == list(range(len(indices)))
    assert all(
        (tmp_path / f["file_path"]).is_file() and (tmp_path / f["depth_file_path"]).is_file()
        for f in meta["frames"]
    )
