"""benchmarks/cli_speed.py on the CPU with a tiny random π³: the real `laser run` subprocess on a
generated H.264 video, and every figure of its report present and sane (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_speed_runs_on_the_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "res.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cli_speed.py"),
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--frames",
            "10",
            "--resolutions",
            "360p",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--cli-args",
            "--window-size",
            "4",
            "--overlap",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    run = res["runs"]["360p"]
    assert run["frames"] == 10 and run["status"] == "complete"
    assert run["outputs"] == "images,depth,conf,points"  # the CLI's default outputs
    assert run["frames_per_s"] > 0 and run["warmup_s"] >= 0 and run["startup_s"] > 0
    # Stages of the engine, one entry per sink, and the writer's own threads.
    assert {"model", "sink_RunWriter", "sink_StateSaver"} <= set(run["ms_per_frame"])
    assert {"on_frame", "encode", "commit"} <= set(run["writer_ms_per_frame"])
    entries = run["bytes_per_frame_by_entry"]
    assert entries["depth"] > 0 and entries["conf"] > 0 and entries["images"] > 0
    assert "source" not in entries  # a video's frames are not copied into the run
    assert run["bytes_per_frame"] >= sum(entries[k] for k in ("depth", "conf", "images"))
    assert run["peak_rss_mb"] > 100
    assert "speed_py" not in run  # only on CUDA
    assert "360p: 10 frames, steady" in r.stdout
    run_dir = tmp_path / "work" / "run_360p"
    assert sorted(p.suffix for p in (run_dir / "images").iterdir()) == [".jpg"] * 10
