"""`laser demo` and `laser run --model synthetic` as a user runs them (real subprocesses)."""

import json
import subprocess
import sys

import numpy as np

from laser_plugin.geometry.camera import quat_xyzw_to_rotmat
from laser_plugin.io.ply import read_ply
from laser_plugin.io.run_dir import load_run

LASER = [sys.executable, "-m", "laser_plugin.cli.main"]


def test_demo_writes_a_complete_scored_run(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            *LASER,
            "demo",
            "--frames",
            "30",
            "--height",
            "48",
            "--width",
            "80",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "depth AbsRel" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["frames"] == 30
    acc = summary["accuracy"]
    assert acc["abs_rel"] < 0.08 and acc["frames"] == 30
    assert set(summary["timings_s"]) >= {"model", "prepare", "registration"}
    run = load_run(out)
    assert [f.index for f in run.frames] == list(range(30))
    # trajectory.txt (TUM, x y z w quaternions) agrees with frames.jsonl
    traj = np.loadtxt(out / "trajectory.txt")
    assert traj.shape == (30, 8)
    c2w = run.cam_to_world()
    np.testing.assert_allclose(traj[:, 1:4], c2w[:, :3, 3], atol=1e-6)
    np.testing.assert_allclose(quat_xyzw_to_rotmat(traj[:, 4:]), c2w[:, :3, :3], atol=1e-6)
    frame = run.load_frame(7)
    assert frame.depth.shape == (48, 80) and frame.layers is not None
    pts, cols = read_ply(out / "points.ply")
    assert len(pts) > 1000 and len(pts) == len(cols) and np.isfinite(pts).all()


def test_run_on_an_image_folder_with_the_synthetic_model(tmp_path):
    """Frames written to disk and read back in another process (PNG is lossless)."""
    from PIL import Image

    from laser_plugin.models.synthetic import make_scene

    scene = make_scene("demo")  # the model's default scene (128x224)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(25):
        Image.fromarray(scene.render(i).image).save(folder / f"frame{i}.png")
    out = tmp_path / "run"
    proc = subprocess.run(
        [*LASER, "run", str(folder), "--model", "synthetic", "--output-dir", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = load_run(out)
    assert len(run.frames) == 25 and run.status == "complete"
    # natural sort (frame2 before frame10) keeps the true order: the trajectory matches
    from laser_plugin.metrics import ate_rmse

    gt = scene.cam_to_world[:25]
    path = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum()
    assert ate_rmse(run.cam_to_world(), gt) < 0.05 * path


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [*LASER, "demo", "--frames", "5", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"
