"""The nerfstudio examples run (CPU parts only; training needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_video_to_splatfacto_on_the_demo_scene(tmp_path, capsys):
    from laser_plugin.config import LaserConfig

    ex = _load("video_to_splatfacto")
    out = tmp_path / "data"
    args = ex.Args(output_dir=out, max_frames=14, laser=LaserConfig(window_size=8, overlap=3))
    assert ex.main(args) == 0
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 14 and meta["ply_file_path"] == "sparse_pc.ply"
    printed = capsys.readouterr().out
    assert f"ns-train splatfacto --data {out} laser-data" in printed


def test_video_to_splatfacto_bad_input(tmp_path, capsys):
    ex = _load("video_to_splatfacto")
    args = ex.Args(
        video=tmp_path / "missing.mp4", output_dir=tmp_path / "o", device="cpu", model="synthetic"
    )
    assert ex.main(args) == 2
    assert "input not found" in capsys.readouterr().err


def test_gsplat_example_prepares_both_datasets_on_cpu(tmp_path):
    """The data side of examples/gsplat_train.py (training itself needs CUDA and gsplat)."""
    ex = _load("gsplat_train")
    laser, truth = ex.prepare(ex.Args(output_dir=tmp_path, num_frames=16, height=64, width=112))
    for data in (laser, truth):
        assert data.images.shape == (16, 64, 112, 3) and data.c2w.shape == (16, 4, 4)
        assert data.ks.shape == (16, 3, 3) and len(data.points) > 100 and len(data.val) >= 1
    # the LASER export round-trips through transforms.json: same images, poses near the truth
    assert (tmp_path / "laser" / "transforms.json").is_file()
    assert (laser.images == truth.images).all()
    assert not np.allclose(laser.c2w, truth.c2w, atol=1e-6)  # estimated, not copied from the truth
