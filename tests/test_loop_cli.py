"""`laser run --loop-closure/--no-loop-closure` as a user runs it (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from laser_plugin.io.run_dir import load_run

LASER = [sys.executable, "-m", "laser_plugin.cli.main"]


def test_loop_closure_switch(tmp_path):
    from PIL import Image

    from laser_plugin.models.synthetic import make_scene

    scene = make_scene("demo")  # the synthetic backend's own scene (it gives descriptors)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(scene.render(i).image).save(folder / f"{i:03d}.png")
    runs = {}
    for flag in ("--loop-closure", "--no-loop-closure"):
        out = tmp_path / flag.strip("-")
        proc = subprocess.run(
            [*LASER, "run", str(folder), "--model", "synthetic", "--output-dir", str(out), "--quiet", flag],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[flag] = (load_run(out), json.loads((out / "summary.json").read_text()))
    on, off = runs["--loop-closure"], runs["--no-loop-closure"]
    # The loop stages ran (and were timed) only with the switch on.
    assert "loop_detection" in on[1]["timings_s"] and "loop_detection" not in off[1]["timings_s"]
    # 20 frames hold no revisit: both runs give the same trajectory.
    np.testing.assert_allclose(on[0].cam_to_world(), off[0].cam_to_world(), atol=1e-5)
    assert len(on[0].frames) == 20 and on[0].status == "complete"
