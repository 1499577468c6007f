"""`laser eval`: point-map metrics, the runner end to end against ground truth, and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from laser_plugin.config import LaserConfig
from laser_plugin.datasets import load_dataset
from laser_plugin.eval.pointmap import (
    backproject,
    estimate_normals,
    evaluate_pointmaps,
    icp_rigid,
    reconstruction_metrics,
)
from laser_plugin.eval.protocol import PROTOCOLS
from laser_plugin.eval.runner import (
    EvalOptions,
    resize_depth,
    resize_nearest,
    run_variant,
    scale_intrinsics,
    sweep_configs,
)
from laser_plugin.types import WindowPrediction

# ----------------------------------------------------------------------------- point maps


def box_surface(rng: np.random.Generator, n: int = 3000) -> np.ndarray:
    """Points on the faces of an axis-aligned 2 x 1.5 x 1 box (no symmetry ICP could slide on)."""
    size = np.array([2.0, 1.5, 1.0])
    pts = rng.uniform(0, 1, (n, 3)) * size
    face = rng.integers(0, 6, n)
    axis, side = face % 3, face // 3
    pts[np.arange(n), axis] = side * size[axis]
    return pts


def test_backproject_closed_form() -> None:
    k = np.array([[50.0, 0, 3.5], [0, 40.0, 2.5], [0, 0, 1]])
    depth = np.full((6, 8), 2.0)
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    world_from_cam[:3, 3] = [1.0, 2.0, 3.0]
    pts = backproject(depth, k, world_from_cam)
    # Pixel (u=7, v=5): camera point ((7-3.5)/50·2, (5-2.5)/40·2, 2).
    pt_cam = np.array([0.14, 0.125, 2.0])
    np.testing.assert_allclose(pts[5, 7], world_from_cam[:3, :3] @ pt_cam + [1, 2, 3], atol=1e-12)


def test_normals_of_a_plane_and_metrics_of_identical_clouds() -> None:
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-1, 1, (500, 2)), np.zeros(500)]
    normals = estimate_normals(plane)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-9)
    s = reconstruction_metrics(plane, plane)
    assert s.acc == 0 and s.comp == 0 and s.nc == pytest.approx(1.0)


def test_accuracy_and_completeness_are_directional() -> None:
    rng = np.random.default_rng(1)
    gt = np.c_[rng.uniform(0, 1, (2000, 2)), np.zeros(2000)]
    # Prediction covers only half the plane, lifted 1 cm: accuracy sees only the lift,
    # completeness also the missing half.
    pred = gt[gt[:, 0] < 0.5] + [0, 0, 0.01]
    s = reconstruction_metrics(pred, gt)
    assert s.acc == pytest.approx(0.01, abs=2e-3)
    assert s.comp > 0.1  # mean distance of the uncovered half to the covered one is ~0.125
    assert s.nc > 0.95


def test_icp_recovers_a_small_rigid_offset() -> None:
    rng = np.random.default_rng(2)
    dst = box_surface(rng, 4000)
    rot = Rotation.from_euler("xyz", [1.0, -2.0, 1.5], degrees=True).as_matrix()
    trans = np.array([0.02, -0.015, 0.01])
    src = (dst - trans) @ rot  # dst = R src + t
    fit = icp_rigid(src, dst, threshold=0.1, iterations=60)
    # A fresh sample of the same surface, so ICP is not helped by identical points.
    np.testing.assert_allclose(fit.rotation, rot, atol=2e-3)
    np.testing.assert_allclose(fit.translation, trans, atol=3e-3)


def test_evaluate_pointmaps_undoes_a_planted_sim3() -> None:
    rng = np.random.default_rng(3)
    gt = box_surface(rng)
    scale, rot, trans = (
        0.37,
        Rotation.random(random_state=3).as_matrix(),
        np.array([1.0, -2.0, 0.5]),
    )
    pred = scale * gt @ rot.T + trans  # prediction in its own gauge
    scores, sim = evaluate_pointmaps(pred, gt)
    assert scores.acc < 1e-6 and scores.comp < 1e-6 and scores.nc > 0.99
    np.testing.assert_allclose(sim.scale, 1 / scale, rtol=1e-6)


# ----------------------------------------------------------------------------- resizing


def test_resize_depth_never_blends_invalid_pixels() -> None:
    depth = np.full((8, 8), 3.0, np.float32)
    depth[2:5, 2:5] = 0.0
    out = resize_depth(depth, (20, 20))
    vals = np.unique(out)
    assert set(np.round(vals, 5)) <= {0.0, 3.0}
    assert (out == 0).any() and (out == 3).mean() > 0.6
    ramp = np.tile(np.linspace(1, 2, 8, dtype=np.float32), (8, 1))
    np.testing.assert_allclose(resize_depth(ramp, (8, 16)).mean(), ramp.mean(), rtol=1e-3)


def test_scale_intrinsics_keeps_projections_consistent() -> None:
    k = np.array([[100.0, 0, 31.5], [0, 90.0, 23.5], [0, 0, 1]])
    k2 = scale_intrinsics(k, (48, 64), (24, 16))
    pt = np.array([0.3, -0.2, 2.0])
    u, v = (k @ pt)[:2] / pt[2]
    u2, v2 = (k2 @ pt)[:2] / pt[2]
    # pixel centres map as (x + 0.5) * s - 0.5
    np.testing.assert_allclose([u2, v2], [(u + 0.5) * 16 / 64 - 0.5, (v + 0.5) * 24 / 48 - 0.5])
    np.testing.assert_array_equal(
        resize_nearest(np.arange(16.0).reshape(4, 4), (2, 2)), [[5, 7], [13, 15]]
    )


# ----------------------------------------------------------------------------- end to end


class OracleModel:
    """Returns a synthetic scene's exact ground truth, in a random Sim(3) gauge per window."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        self.calls += 1
        imgs = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        idx = [self.scene.index_of(im) for im in imgs]
        assert None not in idx, "the engine changed the frames"
        rng = np.random.default_rng(self.calls)
        s = rng.uniform(0.3, 3.0)
        gauge = np.eye(4)
        gauge[:3, :3] = Rotation.random(random_state=self.calls).as_matrix()
        gauge[:3, 3] = rng.normal(size=3)
        poses = self.scene.gt_cam_to_world[idx].copy()
        poses[:, :3, 3] *= s
        poses = gauge @ poses
        depth = np.stack([self.scene.render(i).depth for i in idx]) * s
        n = len(idx)
        return WindowPrediction(
            depth=torch.from_numpy(depth).float(),
            conf=torch.ones(depth.shape),
            cam_to_world=torch.from_numpy(poses).float(),
            intrinsics=torch.from_numpy(np.tile(self.scene.intrinsics, (n, 1, 1))).float(),
        )


def write_scene_as_tum(scene, seq_dir: Path) -> None:
    """The scene in the TUM RGB-D layout (PNG colour, depth / 5000, groundtruth.txt)."""
    (seq_dir / "rgb").mkdir(parents=True)
    (seq_dir / "depth").mkdir()
    rgb, dep, gt = ["# color"], ["# depth"], ["# timestamp tx ty tz qx qy qz qw"]
    for i in range(scene.num_frames):
        t = 100 + i / 30
        r = scene.render(i)
        Image.fromarray(r.image).save(seq_dir / "rgb" / f"{i}.png")
        raw = np.round(r.depth * 5000)
        raw[raw > 65535] = 0  # beyond 13.1 m a 16-bit PNG / 5000 cannot hold it: no reading
        Image.fromarray(raw.astype(np.uint16)).save(seq_dir / "depth" / f"{i}.png")
        rgb.append(f"{t:.6f} rgb/{i}.png")
        dep.append(f"{t + 0.001:.6f} depth/{i}.png")
        pose = scene.gt_cam_to_world[i]
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()
        gt.append(f"{t:.6f} " + " ".join(f"{v:.12f}" for v in (*pose[:3, 3], *q)))
    for name, lines in (("rgb.txt", rgb), ("depth.txt", dep), ("groundtruth.txt", gt)):
        (seq_dir / name).write_text("\n".join(lines) + "\n")


def test_runner_scores_an_oracle_as_perfect_through_tum_files(tmp_path: Path) -> None:
    from laser_plugin.models.synthetic import make_scene

    scene = make_scene("lateral", num_frames=24, height=36, width=48)
    from laser_plugin.datasets import tum

    write_scene_as_tum(scene, tmp_path / "rgbd_dataset_synthetic")
    seq = tum.load_sequence(tmp_path / "rgbd_dataset_synthetic", intrinsics=scene.intrinsics)
    config = LaserConfig(window_size=10, overlap=3)
    # TUM has no point-map protocol; score it as the synthetic protocol does (all three).
    result = run_variant(
        [seq], lambda s: OracleModel(scene), config, "synthetic", EvalOptions(pointmap_stride=2)
    )
    m = result["sequences"][seq.name]
    assert m["frames"] == 24 and m["windows"] >= 3
    # Depth PNGs quantise to 0.2 mm; everything else is exact up to float32.
    assert m["abs_rel"] < 1e-3 and m["delta_1_25"] == 1.0
    assert m["ate"] < 1e-3 and m["rpe_rot_deg"] < 0.05
    assert m["acc"] < 2e-3 and m["comp"] < 2e-3 and m["nc"] > 0.9
    assert result["mean"]["abs_rel"] == pytest.approx(m["abs_rel"])


def test_runner_sees_the_errors_of_the_emulated_model() -> None:
    from laser_plugin.eval.runner import model_factory

    seqs = load_dataset("synthetic", "demo", num_frames=30, height=48, width=64)
    result = run_variant(seqs, model_factory("synthetic", None, "cpu"), LaserConfig(), "synthetic")
    m = result["mean"]
    # Non-zero (the emulator errs) but sane (the pipeline works): loose, honest bounds.
    assert 1e-4 < m["abs_rel"] < 0.3
    assert 0 < m["ate"] < 0.5
    assert {"acc", "comp", "nc", "rpe_trans", "fps"} <= set(m)


def test_sweep_rows_follow_the_paper_ablation() -> None:
    rows = sweep_configs(LaserConfig(), window_sizes=(10, 20), iou_thresholds=(0.3, 0.5))
    assert list(rows) == [
        "full",
        "no_layer_alignment",
        "no_intra_edges",
        "window_size=10",
        "iou_threshold=0.5",
    ]
    assert rows["no_layer_alignment"].layer_alignment is False
    assert rows["no_intra_edges"].intra_edges is False and rows["full"].intra_edges
    assert rows["window_size=10"].window_size == 10
    assert PROTOCOLS["sintel"].depth_cap == 70 and PROTOCOLS["kitti"].depth_cap is None


# ----------------------------------------------------------------------------- CLI


def run_cli(args: list[str]) -> int:
    from laser_plugin.cli.main import main

    return main(args)


def test_cli_eval_synthetic_writes_json_with_table(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = run_cli(
        [
            *[
                "eval",
                "--dataset",
                "synthetic",
                "demo",
                "--synthetic-frames",
                "24",
                "--synthetic-size",
                "40",
                "56",
            ],
            *["--window-size", "10", "--overlap", "3", "--output"],
            str(out),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "AbsRel" in table and "mean" in table and "demo" in table
    result = json.loads(out.read_text())
    assert result["settings"]["window_size"] == 10
    demo = result["variants"]["run"]["sequences"]["demo"]
    assert demo["frames"] == 24 and 0 < demo["abs_rel"] < 0.3


def test_cli_eval_sweep_json(tmp_path: Path, capsys) -> None:
    code = run_cli(
        [
            *[
                "eval",
                "--dataset",
                "synthetic",
                "demo",
                "--synthetic-frames",
                "16",
                "--synthetic-size",
                "32",
                "48",
            ],
            *["--window-size", "8", "--overlap", "2", "--sweep", "--sweep-window-sizes", "6"],
            *["--sweep-iou-thresholds", "0.5", "--json"],
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["variants"]) == [
        "full",
        "no_layer_alignment",
        "no_intra_edges",
        "window_size=6",
        "iou_threshold=0.5",
    ]
    for row in result["variants"].values():
        assert np.isfinite(row["mean"]["abs_rel"])


def test_cli_eval_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(["eval", "--dataset", "tum", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not found" in err and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        run_cli(["eval", "--dataset", "synthetic", "demo", "--sequences", "nope"])
    assert exc.value.code == 2
    assert "no sequence 'nope'" in capsys.readouterr().err


def render(table) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_report_prints_the_paper_numbers_beside_ours() -> None:
    from laser_plugin.eval.report import build_table, make_result, to_json

    ours = {"frames": 90, "ate": 0.02, "rpe_trans": 0.01, "rpe_rot_deg": 0.5, "fps": 10.0}
    variants = {"run": {"sequences": {"fr3_walk": ours}, "mean": ours}}
    text = render(build_table(make_result("tum", "pi3", {}, variants, None)))
    assert "fr3_walk" in text and "0.0200" in text
    assert "π³ + LASER (paper)" in text and "0.0160" in text and "0.0140" in text
    # KITTI odometry compares with the long-sequence ATE table instead of video depth.
    kitti = make_result("kitti", "pi3", {}, variants, "odometry")
    assert "24.17" in render(build_table(kitti)) and "0.0540" not in render(build_table(kitti))
    # A sweep on Sintel shows the paper's ablation rows; NaN becomes null in JSON.
    row = {"frames": 10, "abs_rel": float("nan")}
    sweep = {
        "full": {"sequences": {}, "mean": row},
        "no_intra_edges": {"sequences": {}, "mean": row},
    }
    result = make_result("sintel", "pi3", {}, sweep, None)
    text = render(build_table(result))
    assert "no_layer_alignment (paper, π³)" in text and "0.3280" in text
    assert json.loads(to_json(result))["variants"]["full"]["mean"]["abs_rel"] is None


def test_cli_scores_a_saved_run_like_the_live_frames(tmp_path: Path, capsys) -> None:
    from laser_plugin.engine import StreamingReconstructor
    from laser_plugin.eval.runner import score_frames
    from laser_plugin.io.run_dir import RunWriter, depth_as_saved, dequantize_conf, quantize_conf
    from laser_plugin.models.synthetic import make_model

    (seq,) = load_dataset("synthetic", "lateral", num_frames=14, height=32, width=40)
    rec = StreamingReconstructor(
        make_model(scene=seq.meta["scene"]), LaserConfig(window_size=8, overlap=2)
    )
    frames = list(rec.run(seq.iter_images(), sinks=[RunWriter(tmp_path / "run")]))
    # The run directory keeps depth as float16 and confidence as uint8 (format 2): the live
    # frames rounded the same way must score exactly like the saved run.
    as_saved = [
        dataclasses.replace(
            f,
            depth=depth_as_saved(f.depth).astype(np.float32),
            conf=dequantize_conf(quantize_conf(f.conf)),
        )
        for f in frames
    ]
    live = score_frames(seq, as_saved, PROTOCOLS["synthetic"])

    args = ["eval", "--dataset", "synthetic", "lateral", "--synthetic-frames", "14"]
    args += ["--synthetic-size", "32", "40", "--predictions", str(tmp_path / "run"), "--json"]
    assert run_cli(args) == 0
    saved = json.loads(capsys.readouterr().out)["variants"]["predictions"]["sequences"]["lateral"]
    for key in ("abs_rel", "delta_1_25", "ate", "rpe_trans", "rpe_rot_deg", "acc", "comp", "nc"):
        assert saved[key] == pytest.approx(live[key], rel=1e-5, abs=1e-7), key
    # A run of other frames is refused in one line.
    with pytest.raises(SystemExit) as exc:
        run_cli([*args[:5], "12", *args[6:]])
    assert exc.value.code == 2 and "the sequence has 12 frames" in capsys.readouterr().err


def test_eval_scores_what_laser_run_does_by_default():
    """Issue 22: `laser eval` and `laser run` share their defaults; the ablation sweep keeps the
    convention under which its "w/o E_intra" row differs from Sim(3) only."""
    import tyro

    from laser_plugin import LaserConfig
    from laser_plugin.cli.eval import Eval
    from laser_plugin.cli.run import Run

    base = ["--dataset", "synthetic", "lateral"]
    plain = tyro.cli(Eval, args=base)
    assert plain.resolved_overlap_estimate == LaserConfig().overlap_estimate == "earlier"
    run_default = tyro.cli(Run, args=["clip.mp4"]).laser.overlap_estimate
    assert plain.resolved_overlap_estimate == run_default
    assert tyro.cli(Eval, args=[*base, "--sweep"]).resolved_overlap_estimate == "later"
    explicit = tyro.cli(Eval, args=[*base, "--sweep", "--overlap-estimate", "earlier"])
    assert explicit.resolved_overlap_estimate == "earlier"


def test_eval_closes_loops_as_laser_run_does() -> None:
    """``laser eval`` scores what ``laser run`` gives: loop closure on (its default), so the
    frames a loop moved are scored corrected; --no-loop-closure scores plain LASER. On two
    drifting laps of the loop scene the corrected trajectory is the closer one to the truth."""
    from laser_plugin.eval.runner import model_factory
    from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig

    (seq,) = load_dataset("synthetic", "loop", num_frames=120, height=32, width=56)
    drift = EmulatorConfig(drift_rot_deg=0.15, drift_scale=0.02)
    make = lambda s: EmulatedModel(s.meta["scene"], drift)  # noqa: E731
    assert model_factory("synthetic", None, "cpu")(seq) is not None  # the CLI's factory works too
    on = run_variant([seq], make, LaserConfig(), "synthetic", loop_closure=True)
    off = run_variant([seq], make, LaserConfig(), "synthetic", loop_closure=False)
    m_on, m_off = on["sequences"]["loop"], off["sequences"]["loop"]
    assert m_on["loops_accepted"] >= 1 and "loops_accepted" not in m_off
    assert m_on["frames"] == m_off["frames"] == 120
    assert m_off["ate"] > 0.05  # the drift is real
    assert m_on["ate"] < 0.7 * m_off["ate"], (m_on["ate"], m_off["ate"])
