"""Multi-GPU speed: one stream on 1 vs N GPUs (laser_plugin.multi_device), full-size π³.

Random weights (speed does not depend on them), the same seed on every replica. Frames are a
panning random texture already at the network's input size (294x518, LASER's window size, as in
shared/reference/gpu-baseline.md), held in memory, so neither decoding nor resizing is measured. In one process, for each number of GPUs n = 1 .. N:

- network only: the windows predicted on n replicas through the ``Replicas`` predictor's own
  dispatch (a free replica takes the next window), no alignment;
- end to end: the run loop with ``Replicas`` over n replicas, alignment on ``--align-device``, frames
  in -> final frames out; its frames are compared with the n=1 run (max abs difference of poses
  and depths: the scale-out must not change the output).

Reported: new frames/s (frames / seconds, after a warm-up window per replica) and the speed-up
over n=1. The card and torch version are recorded with the figures.

    python benchmarks/speed_multi_gpu.py --devices all --out speed_multi_gpu.json     # GPUs
    python benchmarks/speed_multi_gpu.py --devices cpu,cpu --size tiny --frames 50    # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from laser_plugin import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.models.pi3 import make_model
from laser_plugin.multi_device import parse_devices
from laser_plugin.predictors import Replicas, Workers
from laser_plugin.sources import open_source
from laser_plugin.windows import schedule_windows


def panning_frames(height: int, width: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Frame i is a crop of a smooth random texture shifted by 2i pixels."""
    rng = np.random.default_rng(seed)
    w = width + 2 * count + 8
    coarse = rng.random((height // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :w]
    canvas = ((0.7 * up + 0.3 * rng.random((height, w, 3))) * 255).astype(np.uint8)
    return [np.ascontiguousarray(canvas[:, 2 * i : 2 * i + width]) for i in range(count)]


def sync(devices) -> None:
    for d in devices:
        if str(d).startswith("cuda"):
            torch.cuda.synchronize(d)


def network_only(engine: StreamingReconstructor, windows, devices) -> float:
    """Seconds to predict ``windows`` through the engine's ``Replicas`` predictor (its own
    dispatch: a free replica takes the next window), no alignment."""
    p = engine.predictor
    p.open(engine)
    try:
        sync(devices)
        start = time.perf_counter()
        for w in windows:
            p.submit(w)
        for w in windows:
            p.result(w)
        sync(devices)
        return time.perf_counter() - start
    finally:
        p.close([])


def add_row(results: list[dict], row: dict, out: list) -> None:
    """Append the figures for n GPUs, with the largest pose and depth difference to the first
    row's frames (``out``: (cam_to_world, depth) per frame) and the speed-ups against the first
    row of the same ``prepare`` mode (the one-GPU row)."""
    row["frames_out"] = out
    if results:  # frames against the first row's, whatever its mode
        reference = results[0]["frames_out"]
        for key, i in (("max_abs_pose_diff_vs_1", 0), ("max_abs_depth_diff_vs_1", 1)):
            row[key] = float(max(np.abs(a[i] - b[i]).max() for a, b in zip(out, reference)))
    ref = next((r for r in results if r.get("prepare") == row.get("prepare")), None)
    if ref is not None:
        for key, fps in (
            ("network_speedup", "network_only_new_fps"),
            ("end_to_end_speedup", "end_to_end_new_fps"),
        ):
            row[key] = round(row[fps] / ref[fps], 3)
    results.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "frames_out"}), flush=True)


def save(info: dict, results: list[dict], path: str | None) -> int:
    info["results"] = [{k: v for k, v in r.items() if k != "frames_out"} for r in results]
    if path:
        with open(path, "w") as fh:
            json.dump(info, fh, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="all", help="e.g. cuda:0,cuda:1, all, or cpu,cpu")
    ap.add_argument("--size", default="large", choices=["large", "tiny"])
    ap.add_argument(
        "--model", default="pi3", choices=["pi3", "vggt"], help="--process only: the network"
    )
    ap.add_argument("--frames", type=int, default=365, help="stream length (default: 24 windows)")
    ap.add_argument("--height", type=int, default=294)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--window-size", type=int, default=20)
    ap.add_argument("--overlap", type=int, default=5)
    ap.add_argument("--align-device", default=None, help="default: the first device")
    ap.add_argument(
        "--process",
        action="store_true",
        help="the fast network in one worker process per device (laser_plugin.worker) instead "
        "of the plain model in threads",
    )
    ap.add_argument(
        "--transfer", default="auto", choices=["auto", "ipc", "host"],
        help="how workers hand predictions back (--process); host suits --align-device cpu",
    )  # fmt: skip
    ap.add_argument(
        "--align-threads", type=int, default=None,
        help="torch CPU threads of this (aligning) process; default: torch's own",
    )  # fmt: skip
    ap.add_argument(
        "--fast", action="store_true",
        help="threaded runner with the fast network per replica (bf16, compile, CUDA graph)",
    )  # fmt: skip
    ap.add_argument(
        "--in-process-first",
        action="store_true",
        help="--process: serve the first device from a thread of this (aligning) process",
    )
    ap.add_argument(
        "--pending-per-device",
        type=int,
        default=2,
        help="--process: windows in flight per device (the reorder buffer: max_pending = this x n)",
    )
    ap.add_argument(
        "--prepare",
        default="processes",
        help="--process: which workers prepare their windows (all, processes, none); a comma "
        "list runs each mode on the same warm workers",
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.align_threads:
        torch.set_num_threads(args.align_threads)
    if args.process:
        return main_process(args)

    devices = parse_devices(args.devices)
    align_device = args.align_device or devices[0]
    info = {
        "devices": devices,
        "cards": [
            torch.cuda.get_device_name(d) if d.startswith("cuda") else platform.processor() or "cpu"
            for d in devices
        ],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": f"pi3 {args.size}, random weights" + (", fast path" if args.fast else ""),
        "frames": args.frames,
        "size": [args.height, args.width],
        "window": [args.window_size, args.overlap],
        "align_device": align_device,
    }
    print(json.dumps(info), flush=True)
    t = time.perf_counter()
    fast = {"fast": True, "dtype": "bf16" if devices[0].startswith("cuda") else "fp32"}
    replicas = [
        make_model(
            device=d, size=args.size, random_init=True, seed=0, **(fast if args.fast else {})
        )
        for d in devices
    ]
    info["build_s"] = round(time.perf_counter() - t, 2)
    frames = panning_frames(args.height, args.width, args.frames)
    config = LaserConfig(window_size=args.window_size, overlap=args.overlap, device=align_device)
    results = []
    for n in range(1, len(devices) + 1):
        engine = StreamingReconstructor(
            replicas[0],
            config,
            keep_source_images=False,
            input_size=(args.height, args.width),
            predictor=Replicas(replicas[:n]),
        )
        engine._model_size = None  # _prepared's state, normally set by run()
        engine._sizes_warned = False
        windows = list(
            schedule_windows(
                engine._prepared(open_source(frames)), config.window_size, config.overlap
            )
        )
        if args.fast and n == 1:  # compile and capture each replica alone (not thread-safe)
            for replica in replicas:
                for w in windows[:3]:
                    engine.predict(w, model=replica)
            sync(devices)
        network_only(engine, windows[:n], devices[:n])  # warm-up: one window per replica
        net_s = network_only(engine, windows, devices[:n])
        new_frames = args.frames  # every frame is new exactly once
        for _ in engine.run(
            frames[: config.window_size + 2 * (config.window_size - config.overlap)]
        ):
            pass  # warm-up of the alignment kernels
        engine.timings, engine.num_windows, engine.num_frames = {}, 0, 0
        engine.predictor.windows_per_replica, engine.predictor.max_buffered = [0] * n, 0
        sync(devices[:n])
        start = time.perf_counter()
        out = [(f.cam_to_world, f.depth) for f in engine.run(frames)]
        sync(devices[:n])
        e2e_s = time.perf_counter() - start
        row = {
            "gpus": n,
            "windows": len(windows),
            "network_only_new_fps": round(new_frames / net_s, 2),
            "network_only_ms_per_window": round(1000 * net_s / len(windows), 1),
            "end_to_end_new_fps": round(len(out) / e2e_s, 2),
            "end_to_end_s": round(e2e_s, 3),
            "windows_per_replica": engine.predictor.windows_per_replica,
            "max_buffered": engine.predictor.max_buffered,
            "align_ms_per_window": {
                k: round(1000 * v / max(engine.num_windows, 1), 1)
                for k, v in engine.timings.items()
                if k != "model"
            },
        }
        if devices[0].startswith("cuda"):
            row["peak_gib"] = [
                round(torch.cuda.max_memory_allocated(d) / 2**30, 2) for d in devices[:n]
            ]
        add_row(results, row, out)
    return save(info, results, args.out)


def main_process(args) -> int:
    """1 .. N worker processes (fast π³, one per device), alignment in this process."""
    import functools

    from laser_plugin.worker import WorkerPool

    devices = parse_devices(args.devices)
    align_device = args.align_device or devices[0]
    cuda = devices[0].startswith("cuda")
    info = {
        "mode": "worker processes"
        + (" (the first in process)" if args.in_process_first else "")
        + ", fast path (bf16, compile, CUDA graph)",
        "devices": devices,
        "cards": [
            torch.cuda.get_device_name(d) if d.startswith("cuda") else "cpu" for d in devices
        ],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": f"{args.model} {args.size}, random weights, fast path in worker processes",
        "frames": args.frames,
        "size": [args.height, args.width],
        "window": [args.window_size, args.overlap],
        "align_device": align_device,
        "align_threads": torch.get_num_threads(),
        "transfer": args.transfer,
        "in_process_first": args.in_process_first,
        "pending_per_device": args.pending_per_device,
        "prepare": args.prepare,
    }
    print(json.dumps(info), flush=True)
    if args.model == "vggt":
        from laser_plugin.models.vggt import make_model as build
    else:
        build = make_model
    factory = functools.partial(
        build, size=args.size, random_init=True, seed=0, fast=True,
        dtype="bf16" if cuda else "fp32",
    )  # fmt: skip
    frames = panning_frames(args.height, args.width, args.frames)
    warm = panning_frames(args.height, args.width, args.frames, seed=1)
    config = LaserConfig(window_size=args.window_size, overlap=args.overlap, device=align_device)
    stride = config.window_size - config.overlap
    results = []
    for n in range(1, len(devices) + 1):
        pool = WorkerPool(
            factory, devices[:n], transfer=args.transfer, in_process_first=args.in_process_first
        )
        try:
            t = time.perf_counter()
            pool.start()
            modes = args.prepare.split(",")
            engine = StreamingReconstructor(
                pool,
                config,
                keep_source_images=False,
                input_size=(args.height, args.width),
                predictor=Workers(
                    pool,
                    max_pending=args.pending_per_device * n,
                    prepare=modes[0].partition(":")[0],
                ),
            )
            for _ in engine.run(warm[: config.window_size + stride * (2 * n + 1)]):
                pass  # every worker compiles and captures its window shapes
            warm_s = time.perf_counter() - t
            # Network only: windows through the pool, no alignment (dispatch as the engine does).
            pool.set_prepare(None)
            windows = list(
                schedule_windows(list(enumerate(frames)), config.window_size, config.overlap)
            )
            pool.ensure_slots(2 * n, config.window_size, args.height, args.width)
            sync(devices[:n])
            start = time.perf_counter()
            pending = []
            for w in windows:
                pool.submit(w.index, [f for _, f in w.items], (args.height, args.width),
                            [(-1, i) for i, _ in w.items])  # fmt: skip
                pending.append(w.index)
                if len(pending) >= 2 * n:
                    pool.result(pending.pop(0))
            for wid in pending:
                pool.result(wid)
            net_s = time.perf_counter() - start
            for mode in modes:
                engine.predictor.prepare = mode
                for _ in engine.run(warm[: config.window_size + stride * (2 * n + 1)]):
                    pass  # this mode's kernels loaded in every worker
                pool.stats()
                engine.timings = {}
                engine.num_windows = engine.num_frames = 0  # counted per stream
                before = list(pool.windows_per_worker)
                sync(devices[:n])
                start = time.perf_counter()
                out = [(f.cam_to_world, f.depth) for f in engine.run(frames)]
                sync(devices[:n])
                e2e_s = time.perf_counter() - start
                # Read before pool.stats(): an in-process worker's stats reset this process's peak.
                peak = None
                if str(align_device).startswith("cuda"):
                    peak = torch.cuda.max_memory_allocated(align_device) / 2**30
                stats = pool.stats()
                nw = engine.num_windows
                row = {
                    "gpus": n,
                    "prepare": mode,
                    "windows": len(windows),
                    "warmup_s": round(warm_s, 1),
                    "network_only_new_fps": round(args.frames / net_s, 2),
                    "network_only_ms_per_window": round(1000 * net_s / len(windows), 1),
                    "end_to_end_new_fps": round(len(out) / e2e_s, 2),
                    "end_to_end_s": round(e2e_s, 3),
                    "windows_per_worker": [a - b for a, b in zip(pool.windows_per_worker, before)],
                    "max_buffered": engine.predictor.max_buffered,
                    "ms_per_window": {
                        k: round(1000 * v / max(nw, 1), 1) for k, v in engine.timings.items()
                    },
                    "workers": stats,
                }
                if peak is not None:
                    # With an in-process first worker: the whole pipeline on the first GPU (its
                    # network, the alignment and the hand-backs), one process, no other model.
                    row["align_process_peak_gib"] = round(peak, 2)
                    torch.cuda.reset_peak_memory_stats(align_device)
                add_row(results, row, out)
        finally:
            pool.close()
    return save(info, results, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
