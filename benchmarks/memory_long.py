"""RAM over a very long synthetic stream with loop closure: is it flat?

A many-lap loop (so loops are closed and past frames re-emitted again and again) at a tiny
resolution runs through :class:`~laser_plugin.loop.LoopClosingReconstructor` with a sink that
feeds a :class:`spilled_map.SpilledVoxelMap` (the global map, spilled to disk per window).
Resident memory (RSS) is sampled every 50 frames; the peak so far is reported at each
checkpoint. Per frame nothing stays in RAM (frames, keyframes, pose log and map spill to disk);
per window a pose-graph node and edge and K float16 descriptors do (a few KB).

    python benchmarks/memory_long.py --frames 20000 --out benchmarks/results/memory_long.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from spilled_map import SpilledVoxelMap  # beside this script

from laser_plugin import LaserConfig, metrics
from laser_plugin.loop import LoopClosingReconstructor, LoopConfig
from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig, SyntheticScene
from laser_plugin.models.synthetic.trajectories import loop


class MapSink:
    """Adds each window's confident points to a spilled voxel map; counts corrections."""

    def __init__(self, root=None):
        self.map = SpilledVoxelMap(root)
        self.pts: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.window = -1
        self.frames = 0
        self.corrected = 0

    def on_frame(self, frame) -> None:
        if frame.window != self.window and self.pts:
            self.map.add_window(self.window, np.concatenate(self.pts), np.concatenate(self.cols))
            self.pts, self.cols = [], []
        self.window = frame.window
        p, c = frame.points_world(min_conf=0.5, stride=2)
        self.pts.append(p)
        self.cols.append(c)
        self.frames += 1

    def on_correction(self, frames) -> None:
        self.corrected += len(frames)

    def close(self) -> None:
        if self.pts:
            self.map.add_window(self.window, np.concatenate(self.pts), np.concatenate(self.cols))


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_long_scene(frames: int, laps: int, height: int, width: int) -> SyntheticScene:
    f = (width / 2) / np.tan(np.radians(70.0) / 2)
    k = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    return SyntheticScene("loop-long", loop(frames, laps=laps), k, height, width)


def run(frames: int, laps: int, height: int, width: int, checkpoints: list[int]) -> dict:
    scene = make_long_scene(frames, laps, height, width)
    model = EmulatedModel(scene, EmulatorConfig(drift_rot_deg=0.05, drift_scale=0.01))
    rec = LoopClosingReconstructor(model, LaserConfig(), LoopConfig(), keep_source_images=False)
    sink = MapSink()
    peak = current_rss()
    report = {}
    start = time.perf_counter()
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in rec.run(scene.frames(), [sink]):
            n += 1
            if n % 50 == 0 or n in checkpoints:
                peak = max(peak, current_rss())
            if n in checkpoints:
                report[n] = {"peak_rss_mib": peak / 2**20, "seconds": time.perf_counter() - start}
                print(
                    f"{n:6d} frames  peak RSS {peak / 2**20:7.1f} MiB  {time.perf_counter() - start:7.1f} s",
                    flush=True,
                )
    pts, _ = sink.map.merged(rec.correction, max_points=200_000)
    idx, corrected = rec.corrected_trajectory()
    _, raw = rec.uncorrected_trajectory()
    out = {
        "ate_without_loop_closure": metrics.ate_rmse(raw, scene.cam_to_world[idx]),
        "ate_with_loop_closure": metrics.ate_rmse(corrected, scene.cam_to_world[idx]),
        "rejections": rec.rejections,
        "frames": n,
        "checkpoints": report,
        "loops_accepted": rec.counts["accepted"],
        "loops_rejected": rec.counts["rejected"],
        "corrected_frames": rec.counts["corrected_frames"],
        "map_points_on_disk": sink.map.num_points,
        "map_disk_mib": sink.map.store.disk_bytes() / 2**20,
        "spill_disk_mib": rec.loop.disk_bytes() / 2**20,
        "merged_map_points": len(pts),
        "index_kib": rec._index.nbytes() / 1024,
        "ms_per_frame": 1000 * (time.perf_counter() - start) / max(n, 1),
    }
    rec.cleanup()
    sink.map.cleanup()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--laps", type=int, default=0, help="default: one lap per 1,000 frames")
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=56)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    laps = args.laps or max(1, args.frames // 1000)
    checkpoints = sorted(
        {c for c in (1000, 5000, 10000, 20000) if c <= args.frames} | {args.frames}
    )
    result = run(args.frames, laps, args.height, args.width, checkpoints)
    print(json.dumps({k: v for k, v in result.items() if k != "checkpoints"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"settings": vars(args) | {"out": str(args.out)}, "result": result}, indent=2
            )
        )
    return result


if __name__ == "__main__":
    main()
