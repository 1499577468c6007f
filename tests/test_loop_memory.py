"""RAM stays flat over a long looped stream with loop closure (short CI version of
benchmarks/memory_long.py, which reports 20,000 frames)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_long.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("memory_long", BENCH)
    module = importlib.util.module_from_spec(spec)
    if str(BENCH.parent) not in sys.path:  # the benchmark imports spilled_map.py beside it
        sys.path.insert(0, str(BENCH.parent))
    spec.loader.exec_module(module)
    return module


def test_rss_is_flat_over_1500_frames_with_loops_closed():
    result = load_benchmark().run(frames=1500, laps=3, height=24, width=40, checkpoints=[500, 1500])
    assert result["frames"] == 1500
    # Laps 2 and 3 revisit lap 1: loops are closed and past frames re-emitted from disk.
    assert result["loops_accepted"] >= 1 and result["corrected_frames"] > 0
    assert result["map_points_on_disk"] > 0 and result["spill_disk_mib"] > 0
    grow = result["checkpoints"][1500]["peak_rss_mib"] - result["checkpoints"][500]["peak_rss_mib"]
    # 1,000 more frames of 24x40 would hold ~12 MiB of images and maps if anything kept them.
    assert grow < 8.0, result["checkpoints"]
