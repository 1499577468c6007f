"""Accuracy of streaming LASER on synthetic sequences with ground truth (no weights, CPU).

For each sequence: full LASER, w/o intra-window edges, w/o layer alignment (Sim(3) only), and
the emulated model run offline on the whole sequence (the reference streaming tries to reach).
Prints a table and writes JSON. Metrics: depth AbsRel and δ<1.25 with one scale per sequence
(the video-depth protocol), ATE RMSE after Sim(3) Umeyama, RPE, and layer consistency (per
object, the spread over frames of its log depth scale relative to the room; 0 = consistent).

"default (laser run)" is what the command runs (LaserConfig's defaults), beside plain Sim(3)
stitching with the same defaults. The ablation uses ``overlap_estimate="later"`` for every variant (each overlap frame keeps the
later window's estimate), the convention under which "w/o E_intra" differs from Sim(3) only.
"full" uses confidence-weighted layer fusion (``layer_fusion="confidence"``); the paper's rule
(the earlier estimate imposed) is reported as "full, paper fusion", and the blend whose earlier
estimate weighs with its accumulated confidence as "full, accumulated fusion".

    python benchmarks/accuracy.py --out benchmarks/results/accuracy.json

``--sweep noise`` runs the robustness sweep of issue 20 instead: LASER as `laser run` runs it
(and the ablation's "full") against Sim(3)
stitching as the emulated depth gets worse (per-pixel noise 0-2%, outliers, flying pixels at
occlusions, a per-window depth^gamma distortion, a deep hall with small objects), at a smaller
size and length so that it takes a few minutes on one CPU core. Writes
benchmarks/results/accuracy_noise_sweep.json and a PNG of the consistency ratio against noise.

    python benchmarks/accuracy.py --sweep noise
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig, make_scene
from laser_plugin.models.synthetic.evaluate import evaluate_depths_poses, evaluate_frames

#: What `laser run` uses (LaserConfig's defaults: each overlap frame keeps the earlier window's
#: estimate, the paper's fusion rule), and its Sim(3)-only counterpart: the figures a user gets.
DEFAULT = "default (laser run)"
DEFAULT_SIM3 = "default, Sim(3) only"
VARIANTS = {
    DEFAULT: {},
    DEFAULT_SIM3: dict(layer_alignment=False),
    "full": dict(overlap_estimate="later", layer_fusion="confidence"),
    "w/o E_intra": dict(overlap_estimate="later", layer_fusion="confidence", intra_edges=False),
    "w/o LSA (Sim(3) only)": dict(overlap_estimate="later", layer_alignment=False),
    "full, paper fusion": dict(overlap_estimate="later", layer_fusion="previous"),
    "full, accumulated fusion": dict(overlap_estimate="later", layer_fusion="accumulated"),
    "full, points registration": dict(
        overlap_estimate="later", layer_fusion="confidence", registration="points"
    ),
}


def run_sequence(name: str, frames: int | None, error_mode: str, height: int, width: int) -> dict:
    scene = make_scene(name, frames, height, width)
    model = EmulatedModel(scene, EmulatorConfig(error_mode=error_mode))
    images = list(scene.frames())
    out = {}
    for label, kw in VARIANTS.items():
        t0 = time.perf_counter()
        result = StreamingReconstructor(model, LaserConfig(**kw)).reconstruct(images)
        out[label] = evaluate_frames(result, scene) | {"seconds": time.perf_counter() - t0}
    pred = model.predict(list(range(scene.num_frames)))  # offline: one window, whole sequence
    out["offline reference"] = evaluate_depths_poses(
        list(pred.depth.numpy()),
        pred.cam_to_world.double().numpy(),
        scene,
        list(range(scene.num_frames)),
    )
    return out


def summarise(results: dict) -> dict:
    keys = ["abs_rel", "delta_1_25", "ate", "rpe_trans", "rpe_rot_deg", "consistency"]
    mean = {
        v: {k: float(np.mean([r[v][k] for r in results.values()])) for k in keys}
        for v in next(iter(results.values()))
    }
    full, noi, sim3, off = (
        mean[k] for k in ("full", "w/o E_intra", "w/o LSA (Sim(3) only)", "offline reference")
    )
    return {
        "mean": mean,
        "ordering_full<no_intra<sim3": bool(full["abs_rel"] < noi["abs_rel"] < sim3["abs_rel"]),
        "ordering_per_sequence": {
            name: bool(
                r["full"]["abs_rel"]
                < r["w/o E_intra"]["abs_rel"]
                < r["w/o LSA (Sim(3) only)"]["abs_rel"]
            )
            for name, r in results.items()
        },
        "consistency_ratio_full_vs_sim3": full["consistency"] / max(sim3["consistency"], 1e-12),
        "consistency_ratio_default_vs_sim3": mean[DEFAULT]["consistency"]
        / max(mean[DEFAULT_SIM3]["consistency"], 1e-12),
        "abs_rel_default_vs_sim3": [mean[DEFAULT]["abs_rel"], mean[DEFAULT_SIM3]["abs_rel"]],
        # The same ratio above the floor no per-layer scale can remove (the offline reference's
        # spread: per-frame model noise), reported beside it, not instead of it.
        "consistency_excess_ratio_full_vs_sim3": (full["consistency"] - off["consistency"])
        / max(sim3["consistency"] - off["consistency"], 1e-12),
        "abs_rel_gap_closed": (sim3["abs_rel"] - full["abs_rel"])
        / max(sim3["abs_rel"] - off["abs_rel"], 1e-12),
    }


#: The sweep's levels: (label, scene, emulator settings). Noise rows isolate per-pixel noise (no
#: outliers); the others are at the 1% noise and 1% outliers where issue 20 found layer
#: alignment switched off, plus one harder property each.
SWEEP_BASE = dict(pixel_noise=0.01, outliers=0.01)
SWEEP = [
    ("noise 0%", None, dict(pixel_noise=0.0, outliers=0.0)),
    ("noise 0.2%", None, dict(pixel_noise=0.002, outliers=0.0)),
    ("noise 0.5%", None, dict(pixel_noise=0.005, outliers=0.0)),
    ("noise 1%", None, dict(pixel_noise=0.01, outliers=0.0)),
    ("noise 2%", None, dict(pixel_noise=0.02, outliers=0.0)),
    ("noise 1% + outliers 1%", None, SWEEP_BASE),
    ("noise 1% + outliers 5%", None, dict(SWEEP_BASE, outliers=0.05)),
    ("+ flying pixels", None, dict(SWEEP_BASE, flying_pixels=0.5)),
    ("+ depth^gamma +-5%", None, dict(SWEEP_BASE, gamma_max=0.05)),
    ("deep hall, small objects", "deep", SWEEP_BASE),
]
SWEEP_VARIANTS = {k: VARIANTS[k] for k in (DEFAULT, DEFAULT_SIM3, "full", "w/o LSA (Sim(3) only)")}


def _sweep_level(level: tuple) -> dict:
    """One level of :data:`SWEEP`: {sequence: {variant: metrics}} (a process of its own with
    ``--jobs``; every level is seeded, so the result does not depend on how they are spread)."""
    (_label, scene_name, emu), sequences, frames, height, width = level
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    per_seq = {}
    for name in [scene_name] if scene_name else sequences:
        scene = make_scene(name, frames, height, width)
        model = EmulatedModel(scene, EmulatorConfig(**emu))
        images = list(scene.frames())
        per_seq[name] = {}
        for variant, kw in SWEEP_VARIANTS.items():
            rec = StreamingReconstructor(model, LaserConfig(**kw))
            result = rec.reconstruct(images)
            layers = rec.window_stats
            per_seq[name][variant] = evaluate_frames(result, scene) | {
                "layer_coverage": float(np.mean([w.layer_coverage for w in layers])),
                "layers_per_frame": float(np.mean([w.num_layers for w in layers])),
                "inter_edges_per_window": float(
                    np.mean([w.num_inter_edges for w in layers if w.window > 0] or [0])
                ),
                "depth_noise": float(np.median([w.depth_noise for w in layers])),
            }
    return per_seq


def run_sweep(sequences: list[str], frames: int, height: int, width: int, jobs: int = 1) -> dict:
    """Full LASER vs Sim(3) at every level of :data:`SWEEP`; per level the mean over
    ``sequences`` (a level with its own scene runs that scene instead) and the verdicts.

    The consistency ratio is judged on the objects of at least 0.5% of the frame (issue 20's
    size for small objects; at the sweep's 96x168 that is 80 pixels); the ratio over every
    object the metric can measure (30 pixels) is reported beside it."""
    levels = [(lv, sequences, frames, height, width) for lv in SWEEP]
    t0 = time.perf_counter()
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_sweep_level, levels))
    else:
        results = [_sweep_level(lv) for lv in levels]
    rows = {}
    for (label, scene_name, emu), per_seq in zip(SWEEP, results):
        keys = ["abs_rel", "ate", "consistency", "consistency_objects_0.5pct", "layer_coverage"]
        keys += ["layers_per_frame", "inter_edges_per_window", "depth_noise"]
        mean = {
            v: {k: float(np.mean([r[v][k] for r in per_seq.values()])) for k in keys}
            for v in SWEEP_VARIANTS
        }
        # Judged on what a user runs; the ablation convention's ratio is reported beside it.
        full, sim3 = mean[DEFAULT], mean[DEFAULT_SIM3]
        ratio = full["consistency_objects_0.5pct"] / max(sim3["consistency_objects_0.5pct"], 1e-12)
        ratio_all = full["consistency"] / max(sim3["consistency"], 1e-12)
        abl, abl_sim3 = mean["full"], mean["w/o LSA (Sim(3) only)"]
        verdict = {
            "consistency_ratio": ratio,
            "consistency_ratio_all_objects": ratio_all,
            "consistency_ratio_ablation_full": abl["consistency_objects_0.5pct"]
            / max(abl_sim3["consistency_objects_0.5pct"], 1e-12),
            "consistency_ratio<=0.5": bool(ratio <= 0.5),
            "abs_rel<=sim3": bool(full["abs_rel"] <= sim3["abs_rel"]),
            "ate_within_5%_of_sim3": bool(full["ate"] <= 1.05 * sim3["ate"]),
        }
        verdict["pass"] = all(v for v in verdict.values() if isinstance(v, bool))
        rows[label] = {
            "scene": scene_name or ",".join(sequences),
            "emulator": emu,
            "mean": mean,
            "per_sequence": per_seq,
            **verdict,
        }
        print(
            f"{label:<28} ratio {ratio:.2f} (all objects {ratio_all:.2f}, ablation's full "
            f"{verdict['consistency_ratio_ablation_full']:.2f})"
            f"  AbsRel {full['abs_rel']:.4f} vs {sim3['abs_rel']:.4f}"
            f"  ATE {full['ate']:.4f} vs {sim3['ate']:.4f}  coverage {full['layer_coverage']:.2f}"
            f"  {'PASS' if verdict['pass'] else 'FAIL'}",
            flush=True,
        )
    print(f"sweep: {time.perf_counter() - t0:.0f} s with {jobs} job(s)")
    return rows


def plot_sweep(rows: dict, path: Path) -> None:
    """Consistency ratio (full / Sim(3)) against per-pixel noise, the other levels as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    noise = [
        (r["emulator"]["pixel_noise"] * 100, r["consistency_ratio"])
        for k, r in rows.items()
        if k.startswith("noise") and r["emulator"]["outliers"] == 0
    ]
    ax.plot(*zip(*noise), "o-", label="per-pixel noise only (objects >= 0.5% of the frame)")
    every = [
        (r["emulator"]["pixel_noise"] * 100, r["consistency_ratio_all_objects"])
        for k, r in rows.items()
        if k.startswith("noise") and r["emulator"]["outliers"] == 0
    ]
    ax.plot(*zip(*every), "o:", color="gray", label="per-pixel noise only (every object)")
    for k, r in rows.items():
        if not (k.startswith("noise") and r["emulator"]["outliers"] == 0):
            ax.plot(r["emulator"]["pixel_noise"] * 100, r["consistency_ratio"], "s", label=k)
    ax.axhline(0.5, color="k", ls="--", lw=1, label="target (<= 0.5)")
    ax.set_xlabel("per-pixel depth noise (%)")
    ax.set_ylabel("layer consistency, laser run / Sim(3)")
    top = max(
        max(r["consistency_ratio"], r["consistency_ratio_all_objects"]) for r in rows.values()
    )
    ax.set_ylim(0, max(1.05, top + 0.05))
    ax.set_title("LASER layer alignment under depth noise (lower is better)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", choices=["noise"], default=None, help="robustness sweep instead")
    ap.add_argument("--sweep-frames", type=int, default=120, help="frames per sweep sequence")
    ap.add_argument(
        "--sweep-size", default="96x168", help="HxW of the sweep (smaller: minutes, not hours)"
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="sweep levels (or sequences) run in parallel processes"
    )
    ap.add_argument("--sequences", default="demo,stop_and_go,turn,lateral")
    ap.add_argument(
        "--frames", type=int, default=None, help="frames per sequence (default: each scene's own)"
    )
    ap.add_argument("--error-mode", default="layers", choices=["layers", "distortion", "both"])
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.sweep == "noise":
        out = args.out
        if out == Path("benchmarks/results/accuracy.json"):
            out = Path("benchmarks/results/accuracy_noise_sweep.json")
        # stop_and_go by default: the sequence whose low-parallax stops give the largest layer
        # errors (Sim(3) consistency 0.11; demo 0.05, turn and lateral about the noise floor).
        default = args.sequences == ap.get_default("sequences")
        seqs = ["stop_and_go"] if default else args.sequences.split(",")
        sh, sw = (int(v) for v in args.sweep_size.split("x"))
        t0 = time.perf_counter()
        rows = run_sweep(seqs, args.sweep_frames, sh, sw, args.jobs)
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "all_pass": all(r["pass"] for r in rows.values()),
            "seconds": time.perf_counter() - t0,
        }
        out.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"out": str(out), "sequences": seqs},
                    "levels": rows,
                    "summary": summary,
                },
                indent=2,
            )
        )
        plot_sweep(rows, out.with_suffix(".png"))
        print(f"all levels pass: {summary['all_pass']} ({summary['seconds']:.0f} s); wrote {out}")
        return
    names = args.sequences.split(",")
    seq_args = [(n, args.frames, args.error_mode, args.height, args.width) for n in names]
    if args.jobs > 1:  # one process per sequence (each is seeded: same figures either way)
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            args.jobs, initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            results = dict(zip(names, pool.map(run_sequence, *zip(*seq_args))))
    else:
        results = {}
        for name, a in zip(names, seq_args):
            results[name] = run_sequence(*a)
            print(f"done {name}", flush=True)
    summary = summarise(results)
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"synthetic accuracy ({args.error_mode} errors, {args.height}x{args.width}); mean over {len(results)} sequences"
    )
    for col in ["variant", "AbsRel", "δ<1.25", "ATE", "RPE t", "RPE r (deg)", "consistency"]:
        table.add_column(col)
    for v, m in summary["mean"].items():
        table.add_row(
            v,
            *(
                f"{m[k]:.4f}"
                for k in ["abs_rel", "delta_1_25", "ate", "rpe_trans", "rpe_rot_deg", "consistency"]
            ),
        )
    console = Console()
    console.print(table)
    for name, r in results.items():
        console.print(name, {v: round(r[v]["abs_rel"], 4) for v in r})
    console.print(
        f"ordering full < w/o E_intra < w/o LSA: {summary['ordering_full<no_intra<sim3']}; "
        f"consistency full/Sim(3): {summary['consistency_ratio_full_vs_sim3']:.2f} "
        f"(above the offline floor: {summary['consistency_excess_ratio_full_vs_sim3']:.2f}); "
        f"AbsRel gap to offline closed: {100 * summary['abs_rel_gap_closed']:.0f}%"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out)}, "results": results, "summary": summary},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
