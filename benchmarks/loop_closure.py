"""Loop closure on long synthetic sequences with drift: ATE with and without it (no weights, CPU).

Each sequence runs twice on the same emulated model (with the emulator's per-window drift
option, so stitched trajectories drift as real ones do): the plain streaming engine, and
:class:`~laser_plugin.loop.LoopClosingReconstructor`, scored on its final corrected trajectory
(what the sinks hold after the last ``on_correction``). Looped sequences (``loop``,
``figure8``) revisit places; the others (``forward``, ``demo``, ``turn``) do not, so any loop
accepted there must still be a true revisit: every accepted loop is checked against ground truth
(co-visibility of its keyframes rendered from the true poses and depths). Throughput: the loop
stages' time (descriptor query, spilling, verification, optimisation, re-emission) against the
plain engine's time per frame.

    python benchmarks/loop_closure.py --out benchmarks/results/loop_closure.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from laser_plugin import LaserConfig, StreamingReconstructor, metrics
from laser_plugin.loop import LoopClosingReconstructor, LoopConfig
from laser_plugin.loop.verify import covisibility
from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig, make_scene

SEQUENCES = {  # name: (frames, has revisits)
    "loop": (600, True),
    "figure8": (600, True),
    "forward": (300, False),
    "demo": (300, False),
    "turn": (300, False),
}


def gt_covisibility(scene, frames_a, frames_b) -> float:
    """Best ground-truth co-visibility between two sets of frames (true depth and poses)."""
    k = torch.as_tensor(scene.intrinsics, dtype=torch.float64)
    best = 0.0
    for a in frames_a:
        for b in frames_b:
            best = max(
                best,
                covisibility(
                    torch.as_tensor(scene.render(a).depth, dtype=torch.float64),
                    torch.as_tensor(scene.cam_to_world[a]), k,
                    torch.as_tensor(scene.render(b).depth, dtype=torch.float64),
                    torch.as_tensor(scene.cam_to_world[b]), k,
                ),
            )  # fmt: skip
    return best


def run_sequence(
    name: str,
    n: int,
    drift_rot_deg: float,
    drift_scale: float,
    height: int,
    width: int,
    min_similarity: float = LoopConfig.min_similarity,
) -> dict:
    scene = make_scene(name, n, height, width)
    model = EmulatedModel(
        scene, EmulatorConfig(drift_rot_deg=drift_rot_deg, drift_scale=drift_scale)
    )
    gt = scene.cam_to_world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        base = StreamingReconstructor(model, LaserConfig()).reconstruct(scene.frames())
        t_base = time.perf_counter() - t
        rec = LoopClosingReconstructor(
            model, LaserConfig(), LoopConfig(min_similarity=min_similarity)
        )
        t = time.perf_counter()
        frames = rec.reconstruct(scene.frames())
        t_loop = time.perf_counter() - t
    idx, corrected = rec.corrected_trajectory()
    raw = np.stack([f.cam_to_world for f in base])
    accepted = [e for e in rec.events if e.accepted]
    covis = [gt_covisibility(scene, e.current_frames, e.candidate_frames) for e in accepted]
    out = {
        "frames": n,
        "ate_without": metrics.ate_rmse(raw, gt),
        "ate_with": metrics.ate_rmse(corrected, gt[idx]),
        "candidates": rec.counts["candidates"],
        "accepted": len(accepted),
        "rejected": rec.counts["rejected"],
        "pruned": rec.counts["pruned"],
        "false_accepted": int(sum(c < 0.2 for c in covis)),
        "accepted_gt_covisibility": [round(c, 3) for c in covis],
        "rejections": sorted(
            {
                e.reason.split(" ")[0] + " " + e.reason.split(" ")[1]
                for e in rec.events
                if not e.accepted
            }
        ),
        "corrected_frames": rec.counts["corrected_frames"],
        "ms_per_frame_without": 1000 * t_base / n,
        "ms_per_frame_with": 1000 * t_loop / n,
        "loop_ms_per_frame": {k: 1000 * v / n for k, v in rec.loop_timings.items()},
    }
    out["detection_cost"] = (rec.loop_timings["detection"] + rec.loop_timings["spill"]) / t_base
    out["total_loop_cost"] = sum(rec.loop_timings.values()) / t_base
    out["ate_reduction"] = 1.0 - out["ate_with"] / out["ate_without"]
    assert len(frames) == n
    rec.cleanup()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sequences", nargs="*", default=list(SEQUENCES))
    ap.add_argument(
        "--scale-frames", type=float, default=1.0, help="multiply every sequence's length"
    )
    ap.add_argument("--drift-rot-deg", type=float, default=0.05)
    ap.add_argument("--drift-scale", type=float, default=0.01)
    ap.add_argument(
        "--min-similarity", type=float, default=LoopConfig.min_similarity,
        help="descriptor threshold; a low one sends many look-alike candidates to verification (stress test)",
    )  # fmt: skip
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=112)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    print(f"{'sequence':10} {'frames':>6} {'ATE w/o':>8} {'ATE with':>8} {'lower':>6} {'acc':>4} {'rej':>4} "
          f"{'false':>5} {'detect':>7} {'all loop':>8}")  # fmt: skip
    for name in args.sequences:
        n = int(SEQUENCES[name][0] * args.scale_frames)
        r = run_sequence(
            name,
            n,
            args.drift_rot_deg,
            args.drift_scale,
            args.height,
            args.width,
            args.min_similarity,
        )
        r["revisits"] = SEQUENCES[name][1]
        results[name] = r
        print(
            f"{name:10} {n:6d} {r['ate_without']:8.4f} {r['ate_with']:8.4f} {100 * r['ate_reduction']:5.1f}% "
            f"{r['accepted']:4d} {r['rejected']:4d} {r['false_accepted']:5d} {100 * r['detection_cost']:6.2f}% "
            f"{100 * r['total_loop_cost']:7.2f}%",
            flush=True,
        )
    payload = {"settings": vars(args) | {"out": str(args.out)}, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main()
