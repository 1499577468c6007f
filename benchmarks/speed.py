"""Speed benchmark: the whole streaming pipeline (π³ or VGGT + LASER), baseline and fast path.

Full-size networks with random weights (speed does not depend on the weights) over a synthetic
600-frame video (a panning textured canvas, 360x640 source frames resized to 294x518 by the
engine's own preprocessing). In one process, for the same weights and the same frames:

- fp32 reference outputs of two windows (TF32 off), for the accuracy of every faster path;
- baseline: the network as upstream runs it (fp32 weights under bf16 autocast, eager, every window
  from scratch; π³ forced onto FlashAttention-2 as upstream's attention code does) in the plain
  engine, alignment on the CPU after the network;
- fast: bf16 trunk with fp32 heads, cached overlap-frame encoder tokens, regional torch.compile,
  one CUDA graph, alignment on the GPU, everything pipelined (decode / network / align / sinks);
- a ladder of network-only measurements, one optimisation at a time, and end-to-end variants that
  isolate the pipeline and the alignment device.

Reported: end-to-end new frames/s (frames in -> final frames out, preprocessing, alignment and
layer alignment included), network-only frames/s, per-stage seconds, latency from a frame's
arrival to its emission, peak GPU and host memory (and whether they stay flat), achieved TFLOP/s
against the measured bf16 matrix-product ceiling, and ‖a−b‖/‖b‖ of depth and poses against fp32.

    python benchmarks/speed.py --model pi3 --out speed_pi3.json           # on a GPU
    python benchmarks/speed.py --model pi3 --device cpu --size tiny --frames 60   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

import numpy as np
import torch

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.fast import accelerate, no_tf32
from laser_plugin.predictors import Pipelined, Workers
from laser_plugin.windows import schedule_windows


# -- inputs ----------------------------------------------------------------------------------
def make_canvas(height: int, width: int, frames: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture wide enough to pan across ``frames`` frames (2 px per frame)."""
    rng = np.random.default_rng(seed)
    w = width + 2 * frames + 8
    coarse = rng.random((height // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    fine = rng.random((height, w, 3)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :w]
    return ((0.7 * up + 0.3 * fine) * 255).astype(np.uint8)


class Stream:
    """The benchmark video: frame i is a crop of the canvas shifted by 2i pixels; records each
    frame's arrival time (when the engine pulls it) for the latency figures."""

    def __init__(self, canvas: np.ndarray, n: int, width: int, rate: float | None = None) -> None:
        self.canvas, self.n, self.width, self.rate = canvas, n, width, rate
        self.arrival: dict[int, float] = {}

    def __iter__(self):
        start = time.perf_counter()
        for i in range(self.n):
            if self.rate:  # a live camera: frame i exists only at start + i / rate
                wait = start + i / self.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            frame = self.canvas[:, 2 * i : 2 * i + self.width].copy()
            self.arrival[i] = time.perf_counter()
            yield frame


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Probe:
    """A sink that does what a light viewer sink does (world points of each frame) and samples
    memory after every window."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.gpu_mb: list[float] = []
        self.rss_mb: list[float] = []
        self.points = 0

    def on_frame(self, frame) -> None:
        self.points += len(frame.points_world(min_conf=0.5, stride=8))

    def on_window(self, stats) -> None:
        self.rss_mb.append(rss_mb())
        if self.cuda:
            self.gpu_mb.append(torch.cuda.memory_allocated() / 2**20)

    def close(self) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- measurements ----------------------------------------------------------------------------
def matmul_ceiling(device: torch.device) -> float | None:
    """Measured bf16 matrix-product rate (TFLOP/s) of an 8192^3 product; None on the CPU."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * 8192**3 / statistics.median(times) / 1e12


def count_flops(fn, *args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn(*args)
    return float(fc.get_total_flops())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def errors(pred, ref) -> dict:
    return {
        "depth": rel(pred.depth, ref.depth),
        "pose": rel(pred.cam_to_world, ref.cam_to_world),
        "intrinsics": rel(pred.intrinsics, ref.intrinsics),
        "finite": bool(
            torch.isfinite(pred.depth).all() and torch.isfinite(pred.cam_to_world).all()
        ),
    }


class Synced:
    """Wraps a model so each call ends with a device sync (what a CPU alignment would force
    anyway), so the engine's 'model' time is the network's time."""

    def __init__(self, model, device, attention=None) -> None:
        self.model, self.device, self.attention = model, device, attention
        self.input_size = model.input_size

    def __call__(self, images):
        ctx = self.attention() if self.attention else contextlib.nullcontext()
        with ctx:
            out = self.model(images)
        sync(self.device)
        return out


def flash_only():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def prepared_windows(rec: StreamingReconstructor, stream: Stream, cfg: LaserConfig):
    from laser_plugin.sources import open_source

    rec._model_size = None
    rec._sizes_warned = False
    return schedule_windows(rec._prepared(open_source(stream)), cfg.window_size, cfg.overlap)


def network_only(model, windows, device, max_windows: int | None = None) -> dict:
    """Seconds per window of the model alone (inputs already preprocessed, in stream order)."""
    times, new, first = [], 0, None
    for k, w in enumerate(windows):
        first = len(w.items) if first is None else first
        if max_windows is not None and k >= max_windows:
            break
        images = torch.stack([it.tensor for it in w.items])
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model(images)
        sync(device)
        times.append(time.perf_counter() - t)
        new += len(w.items) - w.num_overlap
    total = sum(times)
    return {
        "windows": len(times),
        "new_frames": new,
        "median_ms_per_window": 1e3 * statistics.median(times),
        "new_fps": new / total,
        "new_fps_steady": (new - first) / max(1e-9, total - times[0]) if len(times) > 1 else None,
    }


OUTPUTS: dict[str, dict[int, tuple]] = {}
"""Per end-to-end variant: frame index -> (cam_to_world, mean depth), to compare variants."""


def compare_outputs(label: str, reference: str) -> dict | None:
    """Max |difference| of poses and relative difference of mean depths between two variants
    run on the same frames (the worker-process path must give the in-process frames)."""
    a, b = OUTPUTS.get(label), OUTPUTS.get(reference)
    if not a or not b:
        return None
    common = sorted(set(a) & set(b))
    pose = max(float(np.abs(a[i][0] - b[i][0]).max()) for i in common)
    depth = max(abs(a[i][1] - b[i][1]) / max(abs(b[i][1]), 1e-12) for i in common)
    return {"frames": len(common), "max_abs_pose_diff": pose, "max_rel_mean_depth_diff": depth}


def end_to_end(make_runner, stream_factory, device, label: str) -> dict:
    """Run the whole pipeline over a fresh stream; wall time from the first frame pulled to the
    last frame out."""
    stream = stream_factory()
    probe = Probe(device.type == "cuda")
    runner, rec = make_runner()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    emitted: dict[int, float] = {}
    poses = OUTPUTS.setdefault(label, {})
    rss0 = rss_mb()
    t0 = time.perf_counter()
    for frame in runner.run(stream, [probe]):
        emitted[frame.index] = time.perf_counter()
        poses[frame.index] = (frame.cam_to_world, float(frame.depth.mean()))
    wall = time.perf_counter() - t0
    sync(device)
    lat = sorted(1e3 * (emitted[i] - stream.arrival[i]) for i in emitted)
    half = len(probe.gpu_mb) // 2
    out = {
        "label": label,
        "frames": len(emitted),
        "wall_s": wall,
        "new_fps": len(emitted) / wall,
        "latency_ms": {
            "p50": lat[len(lat) // 2],
            "p95": lat[int(0.95 * (len(lat) - 1))],
            "max": lat[-1],
        },
        "stages_s": {
            **getattr(runner, "timings", {}),
            **{f"engine.{k}": v for k, v in rec.timings.items()},
        },
        "rss_mb": {
            "start": rss0,
            "min": min(probe.rss_mb),
            "max": max(probe.rss_mb),
            "first_half_max": max(probe.rss_mb[: max(1, len(probe.rss_mb) // 2)]),
            "second_half_max": max(probe.rss_mb[len(probe.rss_mb) // 2 :]),
        },
        "host_peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "points": probe.points,
    }
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu_reserved_peak_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        out["gpu_allocated_mb"] = {
            "first_half_max": max(probe.gpu_mb[: max(1, half)]),
            "second_half_max": max(probe.gpu_mb[half:]),
        }
    out["num_windows"] = rec.num_windows
    return out


def align_profile(model, cfg, size, canvas, args, device, windows: int = 8) -> dict:
    """Where alignment time goes: cProfile over ``align`` of a few windows (plain engine, nothing
    else running), cumulative seconds per window for the engine and geometry functions. Host
    syncs are charged to the function that forces them."""
    import cProfile
    import pstats

    model.reset()
    rec = StreamingReconstructor(model, cfg, input_size=size)
    rec._cache, rec._held = {}, []
    preds = []
    for k, w in enumerate(
        prepared_windows(rec, Stream(canvas, 20 + 15 * windows, args.src_width), cfg)
    ):
        if k >= windows:
            break
        preds.append((w, rec.predict(w)))
    sync(device)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for w, p in preds:
        rec.align(w, p)
    sync(device)
    prof.disable()
    wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    per_fn = {}
    for (file, _line, fn), (_, _, _, cum, _) in stats.items():
        if "laser_plugin" in file and ("geometry" in file or "engine" in file or "convert" in file):
            per_fn[f"{file.split('laser_plugin/')[-1]}:{fn}"] = 1e3 * cum / len(preds)
    top = dict(sorted(per_fn.items(), key=lambda kv: -kv[1])[:25])
    return {
        "windows": len(preds),
        "ms_per_window": 1e3 * wall / len(preds),
        "cum_ms_per_window": top,
    }


def worker_factory(args, **fast_options):
    """The worker's model: the same random weights (seed 0) on the worker's device, fast path."""
    import functools

    if args.model == "pi3":
        from laser_plugin.models.pi3 import make_model
    else:
        from laser_plugin.models.vggt import make_model
    opts = {**json.loads(args.fast_options), **fast_options}
    opts.setdefault("attention", args.attention)
    opts.setdefault("fused_gelu", args.fused_gelu)
    if args.compile_mode:
        opts.setdefault("compile_mode", args.compile_mode)
    cuda = args.device.startswith("cuda")
    return functools.partial(
        make_model,
        size=args.size,
        random_init=True,
        seed=0,
        fast=True,
        dtype="bf16" if cuda else "fp32",
        fast_options=opts or None,
    )


def process_network_only(pool, canvas, args, size, max_pending: int = 2) -> dict:
    """Windows of uint8 source frames through the worker pool, no alignment: the worker's rate
    with preprocessing on its device and the hand-back included."""
    from laser_plugin.windows import schedule_windows

    frames = [(i, f) for i, f in enumerate(Stream(canvas, args.frames, args.src_width))]
    windows = list(schedule_windows(frames, args.window, args.overlap))
    pool.ensure_slots(max_pending, args.window, args.src_height, args.src_width)
    times, pending, k = [], [], 0
    start = time.perf_counter()
    new = 0
    for w in windows:
        pool.submit(w.index, [f for _, f in w.items], size, [(999, i) for i, _ in w.items])
        pending.append(w)
        if len(pending) >= max_pending:
            done = pending.pop(0)
            r = pool.result(done.index)
            times.append(r["seconds"])
            new += len(done.items) - done.num_overlap
            k += 1
    for done in pending:
        r = pool.result(done.index)
        times.append(r["seconds"])
        new += len(done.items) - done.num_overlap
    total = time.perf_counter() - start
    return {
        "windows": len(windows),
        "new_frames": new,
        "new_fps": new / total,
        "worker_median_ms_per_window": 1e3 * statistics.median(times),
    }


def process_variants(
    args, device, size, cfg_dev, cfg_cpu, canvas, warm_canvas, stream_n, step, res, imgs, refs
):
    """The network in a worker process (laser_plugin.worker), alignment in this one: one worker
    per variant (hand-back mode, fast-path options), each checked against fp32 and timed."""
    from laser_plugin.worker import WorkerPool

    variants = [(f"process_{t}", t, {}) for t in args.process_transfers]
    for k, (name, transfer, opts) in enumerate(variants):
        # "local": the worker is a thread of this process (WorkerPool(in_process_first=True)),
        # so alignment and network share one CUDA context on their own streams.
        local = transfer == "local"
        pool = WorkerPool(
            worker_factory(args, **opts),
            [args.device],
            transfer="auto" if local else transfer,
            in_process_first=local,
        )
        t = time.perf_counter()
        try:
            pool.start()
            rec = StreamingReconstructor(
                pool, cfg_dev, input_size=size, predictor=Workers(pool, prepare=args.prepare)
            )
            for _ in rec.run(Stream(warm_canvas, 3 * args.window, args.src_width)):
                pass  # compiles and captures every window shape in the worker
            res[f"{name}_warmup_s"] = time.perf_counter() - t
            pool.stats()
            if refs:
                step(f"{name}_accuracy",
                     lambda pool=pool: [errors(pool(x.clone()), r) for x, r in zip(imgs, refs, strict=True)])  # fmt: skip

            def run_e2e(cfg, label, n=None, rec=rec, pool=pool, local=local):
                def mk():
                    rec.config = cfg
                    rec.device = torch.device(cfg.device)
                    rec.timings = {}
                    rec.num_windows = rec.num_frames = 0  # per-stream counts (warm-up ran before)
                    return rec, rec

                out = end_to_end(mk, stream_n(n or args.frames), device, label)
                ref = res.get("fast", {}).get("label")
                out["vs_in_process_fast"] = compare_outputs(label, ref) if ref else None
                out["workers"] = pool.stats()
                out["worker_pinned_slots"] = pool.pinned
                if local and "gpu_peak_mb" in out:
                    # One process: its peak also holds this benchmark's own copy of the weights
                    # (the in-process variants' model), which the local worker does not need.
                    out["gpu_peak_mb_without_benchmark_model"] = out["gpu_peak_mb"] - res.get(
                        "weights_mb_fast", 0.0
                    )
                return out

            step(f"{name}_network_only",
                 lambda pool=pool, transfer=transfer: {**process_network_only(pool, canvas, args, size), "transfer": transfer})  # fmt: skip
            step(name, lambda name=name: run_e2e(cfg_dev, f"worker process, {name}"))
            if name == "process_local" and args.images_after_too:
                # The same warm runner with the worker's image copy after the network (before
                # run 9f), then before it again.
                from laser_plugin import worker as worker_mod

                for suffix, before in (("images_after", False), ("images_before_again", True)):
                    worker_mod.IMAGES_BEFORE_NETWORK = before
                    step(f"{name}_{suffix}",
                         lambda s=suffix, n=name: run_e2e(cfg_dev, f"worker process, {n}, {s}"))  # fmt: skip
            if k == 0 and not args.no_process_cpu_align:
                step(
                    "process_align_cpu",
                    lambda: run_e2e(
                        cfg_cpu, "worker process, align on CPU", n=min(args.frames, 200)
                    ),
                )
        except Exception as exc:
            res[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
        finally:
            pool.close()


class Runner:
    """``rec.run`` with one predictor (None: the engine's own), and that predictor's own stage
    times (kept apart from the engine's in the results)."""

    def __init__(self, rec, predictor=None):
        self.rec, self.predictor = rec, predictor
        self.timings: dict = {} if predictor is None else predictor.own_timings

    def run(self, source, sinks):
        return self.rec.run(source, sinks, predictor=self.predictor)


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["pi3", "vggt"], default="pi3")
    ap.add_argument("--size", default="large")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--height", type=int, default=294)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--src-height", type=int, default=360)
    ap.add_argument("--src-width", type=int, default=640)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--overlap", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--no-ladder", action="store_true")
    ap.add_argument("--ladder-windows", type=int, default=8)
    ap.add_argument("--baseline-frames", type=int, default=None, help="default: --frames")
    ap.add_argument("--skip", nargs="*", default=[], help="names of steps to leave out")
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=0.0005,
        help="thread switch interval of the 'fast' variant (seconds)",
    )
    ap.add_argument(
        "--no-process", action="store_true", help="leave out the worker-process variants"
    )
    ap.add_argument(
        "--process-transfers",
        nargs="*",
        default=["ipc", "host"],
        help="prediction hand-back modes of the worker-process variants (ipc, host, or local: "
        "the worker as a thread of this process)",
    )
    ap.add_argument("--no-process-cpu-align", action="store_true")
    ap.add_argument(
        "--images-after-too",
        action="store_true",
        help="process_local again with the worker's image copy after the network, then before",
    )
    ap.add_argument(
        "--prepare",
        default="processes",
        choices=["all", "processes", "none"],
        help="worker-process variants: which workers prepare (sanitise, rank, segment) their "
        "windows; 'processes' leaves an in-process worker's windows to the aligning thread",
    )
    ap.add_argument(
        "--fast-options",
        default="{}",
        help="JSON FastOptions overrides for the worker's model, e.g. '{\"graph_heads\": true}'",
    )
    ap.add_argument(
        "--attention",
        default="auto",
        choices=["auto", "laser", "sdpa"],
        help="attention kernel of the fast variants (auto: ours where it can run, else SDPA)",
    )
    ap.add_argument(
        "--fused-gelu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fast variants: fc1 + GELU as one product with a GELU epilogue",
    )
    ap.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the fast path's blocks (e.g. max-autotune-no-cudagraphs)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    res: dict = {
        "args": vars(args),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        res["card"] = {
            "name": p.name,
            "sms": p.multi_processor_count,
            "memory_gib": p.total_memory / 2**30,
        }
        res["cudnn"] = torch.backends.cudnn.version()
    out_path = args.out

    def save():
        if out_path:
            with open(out_path, "w") as f:
                json.dump(res, f, indent=1, default=str)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def step(name, fn):
        if name in args.skip:
            return
        t = time.perf_counter()
        try:
            res[name] = fn()
            log(f"{name}: {json.dumps(res[name], default=str)[:600]}")
        except Exception as exc:
            res[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
            log(f"{name} FAILED: {exc}")
        res.setdefault("step_seconds", {})[name] = time.perf_counter() - t
        save()

    cfg_cpu = LaserConfig(window_size=args.window, overlap=args.overlap, device="cpu")
    cfg_dev = LaserConfig(window_size=args.window, overlap=args.overlap, device=args.device)
    size = (args.height, args.width)
    canvas = make_canvas(args.src_height, args.src_width, args.frames)
    stream_n = lambda n, rate=None: lambda: Stream(canvas, n, args.src_width, rate)  # noqa: E731

    step("ceiling_tflops", lambda: matmul_ceiling(device))
    if args.model == "pi3":
        from laser_plugin.models.pi3 import make_model
    else:
        from laser_plugin.models.vggt import make_model
    t = time.perf_counter()
    model = make_model(
        device=args.device,
        size=args.size,
        random_init=True,
        dtype="bf16" if device.type == "cuda" else "fp32",
    )
    sync(device)
    res["build_s"] = time.perf_counter() - t
    res["params_m"] = sum(p.numel() for p in model.net.parameters()) / 1e6

    # Two windows of the stream, preprocessed as the engine does; the second overlaps the first.
    rec0 = StreamingReconstructor(model, cfg_cpu, input_size=size)
    wins = list(prepared_windows(rec0, Stream(canvas, args.window * 2, args.src_width), cfg_cpu))[
        :2
    ]
    imgs = [torch.stack([it.tensor for it in w.items]) for w in wins]

    # FLOPs per window (full window) and per frame of the per-frame encoder.
    def flops():
        enc = model.net.encoder if args.model == "pi3" else model.net.aggregator.patch_embed
        one = imgs[0][:1].to(device)
        full = count_flops(model, imgs[0])
        per_frame_enc = count_flops(lambda x: enc(x), one)
        return {
            "window_tflop": full / 1e12,
            "encoder_tflop_per_frame": per_frame_enc / 1e12,
            "window_tflop_cached": (full - args.overlap * per_frame_enc) / 1e12,
        }

    step("flops", flops)

    # fp32 reference of the two windows (same weights, same inputs).
    refs = []

    def reference():
        compute = model.dtype
        model.dtype = torch.float32
        try:
            with no_tf32(), torch.inference_mode():
                for x in imgs:
                    refs.append(model(x.clone()))
        finally:
            model.dtype = compute
        return {"windows": len(refs)}

    step("fp32_reference", reference)

    attention = flash_only if (args.model == "pi3" and device.type == "cuda") else None
    base = Synced(model, device, attention)

    def baseline_accuracy():
        with torch.inference_mode():
            return [errors(base(x.clone()), r) for x, r in zip(imgs, refs, strict=True)]

    step("baseline_accuracy", baseline_accuracy)
    for _ in range(2):  # warm-up (cuDNN plans, allocator)
        base(imgs[0])

    def baseline_e2e():
        def mk():
            rec = StreamingReconstructor(base, cfg_cpu, input_size=size)
            return Runner(rec), rec

        r = end_to_end(mk, stream_n(args.baseline_frames or args.frames), device, "baseline")
        model_s = r["stages_s"].get("engine.model", float("nan"))
        r["network_only_new_fps"] = r["frames"] / model_s
        r["network_s"] = model_s
        return r

    step("baseline", baseline_e2e)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # -- the fast path: cast in place (the reference outputs are already taken) --------------
    t = time.perf_counter()
    fast = accelerate(
        model, dtype=model.dtype, compile=False, cuda_graph=False, cache_encoder=False,
        compile_mode=args.compile_mode, attention="sdpa", fused_gelu=False,
    )  # fmt: skip
    sync(device)
    res["cast_s"] = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res["weights_mb_fast"] = (
        sum(
            p.numel() * p.element_size()
            for p in model.net.parameters()
            if p.device.type == device.type
        )
        / 2**20
    )

    warm_canvas = make_canvas(args.src_height, args.src_width, 3 * args.window, seed=1)

    def warm():
        """Every window shape the stream produces (all new, O cached, the last window's)."""
        rec = StreamingReconstructor(fast, cfg_dev, input_size=size)
        ws = list(
            prepared_windows(rec, Stream(warm_canvas, 3 * args.window, args.src_width), cfg_dev)
        )
        for w in ws:
            torch.stack([it.tensor for it in w.items])
            with torch.inference_mode():
                fast(torch.stack([it.tensor for it in w.items]))
        sync(device)
        fast.reset()

    def stream_windows():  # lazily: holding 600 preprocessed frames would inflate host memory
        return prepared_windows(
            StreamingReconstructor(fast, cfg_dev, input_size=size),
            Stream(canvas, args.frames, args.src_width),
            cfg_dev,
        )

    def ladder_step(name, **enable):
        def run():
            t = time.perf_counter()
            fast.enable(**enable)
            warm()
            warm_s = time.perf_counter() - t
            fast.reset()
            r = network_only(fast, stream_windows(), device, args.ladder_windows)
            fast.reset()
            with torch.inference_mode():
                acc = [errors(fast(x.clone()), ref) for x, ref in zip(imgs, refs, strict=True)]
            fast.reset()
            return {
                **r,
                "warmup_s": warm_s,
                "accuracy_vs_fp32": acc,
                "graph_failed": getattr(fast.trunk_runner, "failed", None),
            }

        step(name, run)

    if not args.no_ladder:
        ladder_step("net_bf16_weights")
        ladder_step("net_plus_token_cache", cache_encoder=True)
    else:
        fast.enable(cache_encoder=True)
    if not args.no_compile:
        ladder_step("net_plus_compile", compile=True)
    if not args.no_graph and device.type == "cuda":
        ladder_step("net_plus_cuda_graph", cuda_graph=True)
    if not args.no_ladder:
        ladder_step("net_plus_graph_heads", graph_heads=True)
        if args.attention != "sdpa":
            ladder_step("net_plus_laser_attention", attention=args.attention)
        if args.fused_gelu:
            ladder_step("net_plus_fused_gelu", fused_gelu=True)
    else:
        fast.enable(graph_heads=True, attention=args.attention, fused_gelu=args.fused_gelu)
        warm()
    res["attention_kernel"] = fast.attention_kernel

    def fast_net():
        fast.reset()
        r = network_only(fast, stream_windows(), device)
        if res.get("flops", {}).get("window_tflop"):
            f = res["flops"]
            total = f["window_tflop"] + (r["windows"] - 1) * f["window_tflop_cached"]
            r["achieved_tflops"] = total * r["new_fps"] / r["new_frames"]
        r["cache_hits"] = fast.cache.hits if fast.cache else 0
        return r

    step("fast_network_only", fast_net)

    def fast_accuracy():
        """The final fast configuration against fp32 (window 1 reuses window 0's overlap tokens)."""
        fast.reset()
        with torch.inference_mode():
            acc = [errors(fast(x.clone()), ref) for x, ref in zip(imgs, refs, strict=True)]
        fast.reset()
        return acc

    step("fast_accuracy", fast_accuracy)

    def e2e(
        pipelined: bool, cfg: LaserConfig, label: str, priority=True, rate=None, n=None, switch=None
    ):
        def mk():
            fast.reset()
            rec = StreamingReconstructor(fast, cfg, input_size=size)
            if not pipelined:
                return Runner(rec), rec
            p = Pipelined(
                device=device, align_priority=priority, switch_interval=switch, timings={}
            )
            return Runner(rec, p), rec

        return lambda: end_to_end(mk, stream_n(n or args.frames, rate), device, label)

    step("fast_e2e_sequential_align_gpu", e2e(False, cfg_dev, "fast, sequential, align on GPU"))
    step("fast_e2e_pipelined_align_cpu", e2e(True, cfg_cpu, "fast, pipelined, align on CPU"))
    step(
        "fast_e2e_pipelined_normal_priority",
        e2e(
            True, cfg_dev, "fast, pipelined, align on GPU, default-priority stream", priority=False
        ),
    )
    step(
        "fast",
        e2e(
            True, cfg_dev, f"fast, pipelined, align on GPU, switch interval {args.switch_interval}s",
            switch=args.switch_interval,
        ),
    )  # fmt: skip
    step(
        "fast_python_switch",
        e2e(True, cfg_dev, "fast, pipelined, Python's default 5 ms switch interval", switch=None),
    )
    if "new_fps" in res.get("fast", {}):
        # Latency at a live camera's pace: frames arrive at 80% of the measured throughput.
        rate = 0.8 * res["fast"]["new_fps"]
        step(
            "fast_live_latency",
            e2e(
                True,
                cfg_dev,
                f"fast, live source at {rate:.0f} fps",
                rate=rate,
                n=min(args.frames, 300),
            ),
        )
    if not args.no_process:
        process_variants(
            args,
            device,
            size,
            cfg_dev,
            cfg_cpu,
            canvas,
            warm_canvas,
            stream_n,
            step,
            res,
            imgs,
            refs,
        )
    step("align_profile", lambda: align_profile(fast, cfg_dev, size, canvas, args, device))

    # Baseline figures for the same-run comparison.
    b, f = res.get("baseline", {}), res.get("fast", {})
    if "new_fps" in b and "new_fps" in f:
        res["speedup_e2e"] = f["new_fps"] / b["new_fps"]
        best = max(
            (
                k
                for k in (
                    "fast",
                    "fast_python_switch",
                    "process_local",
                    "process_ipc",
                    "process_host",
                )
                if "new_fps" in res.get(k, {})
            ),
            key=lambda k: res[k]["new_fps"],
        )
        res["best_e2e"] = {"variant": best, "new_fps": res[best]["new_fps"],
                           "speedup": res[best]["new_fps"] / b["new_fps"]}  # fmt: skip
    if res.get("flops", {}).get("window_tflop") and "network_s" in b:
        nb = b["num_windows"]
        res["baseline_achieved_tflops"] = res["flops"]["window_tflop"] * nb / b["network_s"]
    save()
    summary(res)


def summary(res: dict) -> None:
    card = res.get("card", {}).get("name", "CPU")
    print(f"\n== {res['args']['model']} on {card}, torch {res['torch']} ==")
    print(f"ceiling bf16 matmul: {res.get('ceiling_tflops')}")
    for key in (
        "baseline",
        "fast_e2e_sequential_align_gpu",
        "fast_e2e_pipelined_align_cpu",
        "fast_e2e_pipelined_normal_priority",
        "fast",
        "fast_python_switch",
        "fast_live_latency",
        *[k for k in res if k.startswith("process_") and isinstance(res[k], dict)],
    ):
        r = res.get(key, {})
        if key.endswith("_network_only") and "new_fps" in r:
            print(
                f"{key:32s} {r['new_fps']:7.1f} new fps (worker {r['worker_median_ms_per_window']:.1f} ms/window)"
            )
            continue
        if "new_fps" not in r:
            if r:
                print(f"{key}: {r.get('error')}")
            continue
        gpu = f"gpu peak {r.get('gpu_peak_mb', 0) / 1024:.2f} GiB" if "gpu_peak_mb" in r else ""
        if "gpu_peak_mb_without_benchmark_model" in r:
            gpu += f" ({r['gpu_peak_mb_without_benchmark_model'] / 1024:.2f} without the benchmark's own model)"
        elif r.get("workers") and "gpu_peak_mb" in r["workers"][0]:
            gpu += f" + worker {r['workers'][0]['gpu_peak_mb'] / 1024:.2f} GiB"
        print(
            f"{key:32s} {r['new_fps']:7.1f} new fps e2e | latency p50 {r['latency_ms']['p50']:.0f} ms "
            f"max {r['latency_ms']['max']:.0f} | {gpu} | rss {r['rss_mb']['max']:.0f} MB"
        )
    for key in (
        "net_bf16_weights",
        "net_plus_token_cache",
        "net_plus_compile",
        "net_plus_cuda_graph",
        "net_plus_graph_heads",
        "net_plus_laser_attention",
        "net_plus_fused_gelu",
        "fast_network_only",
    ):
        r = res.get(key)
        if r and "new_fps" in r:
            acc = r.get("accuracy_vs_fp32")
            acc_s = f"| err w1 depth {acc[1]['depth']:.1e} pose {acc[1]['pose']:.1e}" if acc else ""
            print(
                f"{key:32s} {r['median_ms_per_window']:7.1f} ms/window {r['new_fps']:7.1f} new fps {acc_s}"
            )
        elif r:
            print(f"{key}: {r.get('error')}")
    if "baseline" in res and "network_only_new_fps" in res["baseline"]:
        print(
            f"baseline network-only {res['baseline']['network_only_new_fps']:.1f} new fps; "
            f"baseline accuracy {res.get('baseline_accuracy')}"
        )
    print(f"attention kernel of the fast variants: {res.get('attention_kernel')}")
    for key in [k for k in res if k.endswith("_accuracy") and isinstance(res[k], list)]:
        acc = res[key]
        print(
            f"{key:32s} err vs fp32, window 1: depth {acc[-1]['depth']:.1e} pose {acc[-1]['pose']:.1e}"
        )
    ceiling = res.get("ceiling_tflops")
    fast_tf = res.get("fast_network_only", {}).get("achieved_tflops")
    base_tf = res.get("baseline_achieved_tflops")
    if fast_tf and base_tf:
        pct = (lambda x: f" ({100 * x / ceiling:.0f}% of {ceiling:.0f})") if ceiling else str
        print(
            f"achieved TFLOP/s: fast {fast_tf:.0f}{pct(fast_tf)}, baseline {base_tf:.0f}{pct(base_tf)}"
        )
    for key in ("baseline", "fast", "process_ipc", "process_host"):
        r = res.get(key, {})
        if "stages_s" in r:
            per = {
                k: round(1e3 * v / max(1, r["num_windows"]), 1) for k, v in r["stages_s"].items()
            }
            print(f"{key} stages, ms per window: {per}")
            print(f"{key} host peak RSS {r['host_peak_rss_mb_process']:.0f} MB (process)")
    print(f"speedup e2e {res.get('speedup_e2e')}; best {res.get('best_e2e')}")


if __name__ == "__main__":
    main()
