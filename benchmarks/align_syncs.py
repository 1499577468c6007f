"""Where GPU alignment waits for the GPU: host synchronisations per window, by call site.

On a GPU shared with the network, every host sync in the alignment makes the aligning thread wait
for its stream to drain behind whatever the network has queued (benchmarks/archive/SPEED_NOTES.md: alignment takes
35-55 ms per window alone, 60-90 ms next to a network). This runs the plain engine over the
synthetic scene at 518x294 (L=20, O=5) with alignment on a CUDA device and torch's sync debug
mode on, and prints the syncs per window grouped by the innermost ``laser_plugin`` frame, with
the stage times.

    python benchmarks/align_syncs.py [--device cuda] [--frames 110] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
import traceback
import warnings
from pathlib import Path

import torch

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.synthetic import make_model, make_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--height", type=int, default=294)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    scene = make_scene("demo", args.frames, args.height, args.width)
    frames = list(scene.frames())
    cfg = LaserConfig(device=args.device)
    cuda = torch.device(args.device).type == "cuda"

    model = make_model(scene=scene)
    cache: dict[int, object] = {}

    def replay(images):  # the emulator renders on the CPU: render each window once
        key = replay.calls  # the k-th window of every run is the same window
        replay.calls += 1
        if key not in cache:
            cache[key] = model(images)
        return cache[key]

    def run(count: bool) -> tuple[StreamingReconstructor, collections.Counter, float]:
        replay.calls = 0
        rec = StreamingReconstructor(replay, cfg)
        sites: collections.Counter = collections.Counter()
        root = str(Path(__file__).resolve().parents[1] / "laser_plugin")

        def hook(message, category, filename, lineno, file=None, line=None):
            stack = traceback.extract_stack()[:-1]
            site = next((f for f in reversed(stack) if f.filename.startswith(root)), None)
            if site is None:
                sites["(outside laser_plugin)"] += 1
                return
            name = f"{Path(site.filename).relative_to(root)}:{site.lineno} {site.name}"
            sites[f"{name}: {(site.line or '').strip()[:70]}"] += 1

        t = time.perf_counter()
        with warnings.catch_warnings():
            if count and cuda:
                warnings.simplefilter("always")
                warnings.showwarning = hook
                torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in rec.run(frames):
                    pass
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        return rec, sites, time.perf_counter() - t

    run(False)  # warm-up: kernels, allocator
    rec, _, _ = run(False)
    stages: dict[str, float] = collections.defaultdict(float)
    for s in list(rec.window_stats)[1:]:
        for k, v in s.timings.items():
            stages[k] += v
    n = len(rec.window_stats) - 1
    rec, sites, _ = run(True)
    windows = len(rec.window_stats)
    result = {
        "card": torch.cuda.get_device_name(args.device) if cuda else "cpu",
        "windows": windows,
        "ms_per_window": {k: round(1000 * v / n, 2) for k, v in stages.items()},
        "syncs_per_window": round(sum(sites.values()) / windows, 1),
        "sites_per_window": {k: round(v / windows, 2) for k, v in sites.most_common()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
