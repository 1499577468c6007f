"""Speed of the real command: ``laser run VIDEO`` as a subprocess, run directory included.

``benchmarks/speed.py`` times the engine on frames it already holds and writes nothing; a user
runs ``laser run`` on a video and gets a run directory. This benchmark generates H.264 videos
(720p and 1080p by default; a textured canvas panning 2 px per frame with a bright square moving
across it), saves a π³ with random weights as a safetensors file (speed does not depend on the
weights), then runs ``laser run VIDEO --model pi3 --weights W`` with the default outputs, once per
video. Reported per run:

- frames/s from the first finalised window to the last one (steady), the warm-up (writer start
  to the first finalised window: the compile and graph capture on a GPU), the start-up before it
  (imports, weights) and the whole wall time;
- ms/frame per stage (the engine's timings, one entry per sink, e.g. ``sink_RunWriter``, and the
  run writer's own threads);
- bytes written per frame (the run directory, by top-level entry);
- peak host RSS of the ``laser`` process and its peak GPU memory (allocated and reserved).

On CUDA it then runs ``speed.py`` (the in-process worker variant ``process_local``, with the same
source resolution, network input size and frame count) and prints ``laser run``'s steady frames/s as a fraction of
speed.py's end-to-end figure (the convention of benchmarks/archive/SPEED_NOTES.md: same card, same call).

The ``laser`` process is started through a small driver (:data:`DRIVER`) that calls the CLI's own
``main`` and, at exit, writes the process's peak memory; ``--size tiny`` also makes ``pi3`` build
its tiny configuration (a CPU smoke test: ``tests/test_cli_speed_smoke.py``).

    python benchmarks/cli_speed.py                                  # on a GPU: 720p and 1080p
    python benchmarks/cli_speed.py --out benchmarks/results/cli_speed_h200.json
    python benchmarks/cli_speed.py --device cpu --size tiny --frames 8 --no-speed   # smoke test

A/B runs of the same video, before the main run: ``--variants first: noenc:LASER_BENCH_NOENCODE=1
t2:LASER_BENCH_WRITER_THREADS=2`` (an empty variant is a plain run: the first run on a fresh
machine, cold compile cache). ``--sample-ms 10`` samples every thread's stack in the ``laser``
process (where each thread spends its wall time, by thread name).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a bare checkout (no pip install)
    sys.path.insert(0, str(ROOT))
RESOLUTIONS = {"360p": (360, 640), "720p": (720, 1280), "1080p": (1080, 1920)}

DRIVER = r"""
import atexit, json, os, resource, sys
size = os.environ.get("LASER_BENCH_PI3_SIZE", "large")
if size != "large":
    import functools
    import laser_plugin.models.pi3 as pi3
    pi3.make_model = functools.partial(pi3.make_model, size=size)

def report():
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        n = torch.cuda.device_count()
        out["gpu_max_allocated_mb"] = max(torch.cuda.max_memory_allocated(d) for d in range(n)) / 2**20
        out["gpu_max_reserved_mb"] = max(torch.cuda.max_memory_reserved(d) for d in range(n)) / 2**20
    with open(os.environ["LASER_BENCH_STATS"], "w") as fh:
        json.dump(out, fh)

atexit.register(report)
if os.environ.get("LASER_BENCH_SWITCH"):  # GIL switch interval, s (an A/B knob of this benchmark)
    sys.setswitchinterval(float(os.environ["LASER_BENCH_SWITCH"]))
if os.environ.get("LASER_BENCH_WRITER_THREADS"):  # A/B knob: the run writer's encoder threads
    from laser_plugin.io import run_dir as _rd

    _rd.default_threads = lambda: int(os.environ["LASER_BENCH_WRITER_THREADS"])
if os.environ.get("LASER_BENCH_NOENCODE"):
    # A/B only: the writer commits records but encodes and writes no frame files, to tell the
    # cost of encoding from the rest of the run (the run directory is not loadable).
    import numpy as np
    from laser_plugin.io import run_dir as _rd

    def _encode(self, frame):
        name = f"{frame.index:06d}"
        paths = {k: f"{k}/{name}.x" for k in ("image", "depth", "conf")}
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
        return {"paths": paths, "fields": {}, "bytes": 0, "seconds": 0.0, "points": empty}

    _rd.RunWriter._encode = _encode
if os.environ.get("LASER_BENCH_SAMPLE"):
    # Where each thread spends its wall time: the innermost frame every N ms, by thread name.
    import collections, threading, time, traceback
    counts = collections.defaultdict(collections.Counter)
    period = float(os.environ["LASER_BENCH_SAMPLE"]) / 1000

    stop = threading.Event()

    def sample():
        names = {}
        while not stop.wait(period):
            for t in threading.enumerate():
                names[t.ident] = t.name
            me = threading.get_ident()
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                st = traceback.extract_stack(frame, limit=None)[-3:]
                key = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(st))
                counts[names.get(ident, str(ident))][key] += 1

    sampler = threading.Thread(target=sample, daemon=True, name="bench-sampler")
    sampler.start()

    def dump_samples():
        stop.set()  # joined before the interpreter tears down (a live daemon thread aborts it)
        sampler.join()
        out = {k: dict(v.most_common(12)) | {"_total": sum(v.values())} for k, v in counts.items()}
        with open(os.environ["LASER_BENCH_STATS"] + ".samples.json", "w") as fh:
            json.dump(out, fh, indent=1)

    atexit.register(dump_samples)
from laser_plugin.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def log(msg: str) -> None:
    print(f"[cli_speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------
def make_video(path: Path, height: int, width: int, frames: int, fps: int = 30) -> Path:
    """H.264 (libx264, yuv420p) of a textured canvas panning right, 2 px per frame, with a
    bright square crossing it: texture everywhere (JPEG and deflate see realistic detail) and
    motion the encoder cannot predict away entirely."""
    import av

    rng = np.random.default_rng(0)
    w = width + 2 * frames + 8
    coarse = rng.random((height // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:height, :w]
    fine = rng.random((height, w, 3)).astype(np.float32)
    canvas = ((0.75 * up + 0.25 * fine) * 255).astype(np.uint8)
    side = height // 6
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "veryfast", "crf": "20"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.ascontiguousarray(canvas[:, 2 * i : 2 * i + width])
            x = (7 * i) % max(1, width - side)
            y = (height - side) // 2 + int(0.3 * height * np.sin(i / 15))
            img[y : y + side, x : x + side] = (250, 240, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_random_weights(path: Path, size: str, device: str) -> Path:
    """A π³ with random weights, built on ``device``, saved where ``--weights`` reads it."""
    import torch

    from laser_plugin.models import pi3
    from laser_plugin.models.weights import save_weights

    model = pi3.make_model(size=size, random_init=True, device=device)
    save_weights(model.net, path)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


# -- one run -----------------------------------------------------------------------------------
def _gpu_sampler(pid: int, stop: threading.Event, out: dict) -> None:
    """Peak memory nvidia-smi reports for the process (context and allocator cache included)."""
    peak = 0
    while not stop.wait(0.25):
        try:
            r = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return
        for line in r.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
                peak = max(peak, int(parts[1]))
        out["nvidia_smi_peak_mb"] = peak


def dir_bytes(path: Path) -> dict[str, int]:
    """Bytes under each top-level entry of a run directory (files only)."""
    out: dict[str, int] = {}
    for entry in path.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out[entry.name] = sum(p.stat().st_size for p in files)
    return out


def run_cli(
    video: Path, out_dir: Path, args, weights: Path, workdir: Path, extra_env: dict | None = None
) -> dict:
    import dataclasses

    from laser_plugin.cli.run import Run

    fields = {f.name for f in dataclasses.fields(Run)}
    cmd = [
        sys.executable, "-c", DRIVER, "run", str(video),
        "--output-dir", str(out_dir), "--model", "pi3", "--weights", str(weights),
        "--device", args.device, "--quiet",
    ]  # fmt: skip
    if args.device.startswith("cuda") and "fast" in fields and not args.no_fast:
        cmd.append("--fast")  # where the fast path is not the default yet
    if args.outputs is not None:
        cmd += ["--outputs", args.outputs]
    cmd += args.cli_args
    stats_path = workdir / f"stats_{out_dir.name}.json"
    env = dict(os.environ, LASER_BENCH_STATS=str(stats_path), LASER_BENCH_PI3_SIZE=args.size)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log("running: laser " + " ".join(cmd[3:]))
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gpu: dict = {}
    stop = threading.Event()
    sampler = None
    if args.device.startswith("cuda"):
        sampler = threading.Thread(target=_gpu_sampler, args=(proc.pid, stop, gpu), daemon=True)
        sampler.start()
    _, stderr = proc.communicate()
    wall = time.time() - t0
    stop.set()
    if sampler is not None:
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"laser run failed ({proc.returncode}): {stderr[-2000:]}")
    summary = json.loads((out_dir / "summary.json").read_text())
    mem = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    frames = int(summary["frames"])
    started = float(summary.get("started_unix", t0))
    windows = [w for w in summary.get("window_stats", []) if "t_s" in w]
    res: dict = {
        "frames": frames,
        "status": summary["status"],
        "outputs": summary.get("outputs"),
        "wall_s": wall,
        "startup_s": started - t0,  # interpreter, imports, weights, first decode
        "frames_per_s_whole_run": frames / wall,
    }
    samples = Path(str(stats_path) + ".samples.json")
    if samples.exists():
        res["thread_samples"] = json.loads(samples.read_text())
    if windows:
        first, last = windows[0], windows[-1]
        res["warmup_s"] = first["t_s"]  # writer start -> first window finalised
        steady_frames = sum(w["new_frames"] for w in windows[1:])
        span = last["t_s"] - first["t_s"]
        res["frames_per_s"] = steady_frames / span if span > 0 else None
        res["tail_s"] = summary["elapsed_s"] - last["t_s"]  # last window -> run directory closed
        # The slowest steps between finalised windows (a compile of a new shape shows here).
        gaps = sorted(
            ((b["t_s"] - a["t_s"], i + 1) for i, (a, b) in enumerate(itertools.pairwise(windows))),
            reverse=True,
        )
        res["slowest_windows"] = [{"window": i, "s": round(g, 3)} for g, i in gaps[:3]]
        res["median_window_s"] = round(float(np.median([g for g, _ in gaps])), 4) if gaps else None
    engine = summary.get("engine_timings_s", {})
    res["ms_per_frame"] = {
        k: round(1000 * v / max(frames, 1), 3) for k, v in sorted(engine.items())
    }
    writer = summary.get("writer", {})
    res["writer_threads"] = writer.get("threads")
    res["writer_ms_per_frame"] = {
        k: round(1000 * v / max(frames, 1), 3) for k, v in writer.get("seconds", {}).items()
    }
    sizes = dir_bytes(out_dir)
    res["bytes_per_frame"] = round(sum(sizes.values()) / max(frames, 1))
    res["bytes_per_frame_by_entry"] = {
        k: round(v / max(frames, 1)) for k, v in sorted(sizes.items())
    }
    res["peak_rss_mb"] = mem.get("ru_maxrss_mb")
    for k in ("gpu_max_allocated_mb", "gpu_max_reserved_mb"):
        if k in mem:
            res[k] = mem[k]
    res.update(gpu)
    return res


def run_speed_py(height: int, width: int, args, workdir: Path) -> dict:
    """speed.py's end-to-end figure for the same source size and frame count (process_local:
    the network in a thread of the process, as ``laser run --fast`` runs it on one GPU)."""
    from laser_plugin.models.pi3 import input_size

    # The network at the size `laser run` gives it (upstream's 255,000-pixel rule: 378x672 for
    # 16:9), not speed.py's own default of 294x518: a comparison at another size would credit
    # or blame the CLI for the network's cost, not for what the CLI adds.
    mh, mw = input_size(height, width)
    out = workdir / f"speed_{height}p.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--model", "pi3",
        "--size", args.size, "--device", args.device, "--frames", str(args.frames),
        "--src-height", str(height), "--src-width", str(width),
        "--height", str(mh), "--width", str(mw),
        *args.speed_args.split(), "--out", str(out),
    ]  # fmt: skip
    log("running: " + " ".join(cmd[1:]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not out.exists():
        return {"error": f"speed.py failed ({r.returncode}): {r.stderr[-2000:]}"}
    data = json.loads(out.read_text())
    local = data.get("process_local", {})
    return {
        "new_fps": local.get("new_fps"),
        "new_fps_steady": local.get("new_fps_steady"),
        "error": local.get("error"),
        "command": " ".join(cmd[1:]),
        "model_size": [mh, mw],
    }


def _fresh(path: Path) -> Path:
    """An empty run directory (this benchmark's own, from an earlier call)."""
    if path.exists():
        import shutil

        shutil.rmtree(path)
    return path


def _save(res: dict, out: str | None) -> None:
    """The results so far (after every run: a call cut off by a time limit keeps them)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="large", choices=["large", "tiny"])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--resolutions", default="720p,1080p", help=f"from {', '.join(RESOLUTIONS)}")
    ap.add_argument("--outputs", default=None, help="laser run --outputs (default: the CLI's)")
    ap.add_argument("--no-fast", action="store_true", help="do not pass --fast on CUDA")
    ap.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[],
                    help="further laser run arguments (last on the line)")  # fmt: skip
    ap.add_argument("--no-speed", action="store_true", help="leave out speed.py's figure")
    ap.add_argument(
        "--speed-args",
        default="--no-ladder --process-transfers local --no-process-cpu-align --skip "
        "baseline baseline_accuracy fast fast_e2e_sequential_align_gpu "
        "fast_e2e_pipelined_align_cpu align_profile",
        help="speed.py arguments beyond model/size/device/frames/source size",
    )
    ap.add_argument(
        "--variants", nargs="*", default=[],
        help="further runs of each video with environment settings, NAME:KEY=VAL[,KEY=VAL] "
        "(e.g. gil:LASER_BENCH_SWITCH=0.0005); the first run of a video also warms the compile cache",
    )  # fmt: skip
    ap.add_argument("--sample-ms", type=float, default=0,
                    help="sample every thread's stack this often (ms) in the laser process")  # fmt: skip
    ap.add_argument("--workdir", default=None, help="keep videos, weights and runs here")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    for r in args.resolutions.split(","):
        if r not in RESOLUTIONS:
            ap.error(f"unknown resolution {r!r}; choose from {', '.join(RESOLUTIONS)}")

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(
            "--device cuda but no CUDA device: use --device cpu --size tiny for the smoke test"
        )
    res: dict = {
        "args": vars(args),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "card": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "runs": {},
    }
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="laser_cli_speed_")
        workdir = Path(tmp.name)
    try:
        t = time.perf_counter()
        weights = workdir / f"pi3_{args.size}_random.safetensors"
        if not weights.exists():  # kept in --workdir: a second call (other resolution) reuses it
            save_random_weights(weights, args.size, args.device)
        res["weights_s"] = time.perf_counter() - t
        for name in args.resolutions.split(","):
            h, w = RESOLUTIONS[name]
            video = workdir / f"{name}_{args.frames}.mp4"
            if not video.exists():
                t = time.perf_counter()
                make_video(video, h, w, args.frames)
                log(f"made {video.name} in {time.perf_counter() - t:.1f} s")
            # The weights (1.2 GB for π³) and the video were just written: flushed here, so that
            # the run's own syncfs (one per window) does not pay for this benchmark's set-up (on a
            # fresh machine the first window-to-window step took 2.6 s instead of 0.4 s).
            os.sync()
            base_env = {"LASER_BENCH_SAMPLE": str(args.sample_ms)} if args.sample_ms else {}
            for spec in args.variants:
                vname, _, kv = spec.partition(":")
                env = dict(base_env, **dict(p.split("=", 1) for p in kv.split(",") if p))
                vdir = _fresh(workdir / f"run_{name}_{vname}")
                res["runs"][f"{name}_{vname}"] = run_cli(video, vdir, args, weights, workdir, env)
                log(f"{name}_{vname}: {json.dumps(res['runs'][f'{name}_{vname}'])}")
                _save(res, args.out)
            out_dir = _fresh(workdir / f"run_{name}")
            run = run_cli(video, out_dir, args, weights, workdir, base_env)
            run["video_mb"] = video.stat().st_size / 2**20
            if args.device.startswith("cuda") and not args.no_speed:
                run["speed_py"] = run_speed_py(h, w, args, workdir)
                ref = run["speed_py"].get("new_fps")
                if ref and run.get("frames_per_s"):
                    run["ratio_to_speed_py"] = run["frames_per_s"] / ref
                steady = run["speed_py"].get("new_fps_steady")
                if steady and run.get("frames_per_s"):
                    run["ratio_to_speed_py_steady"] = run["frames_per_s"] / steady
            res["runs"][name] = run
            log(f"{name}: {json.dumps(run)}")
            _save(res, args.out)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(report(res))
    return res


def report(res: dict) -> str:
    lines = []
    for name, r in res["runs"].items():
        fps = r.get("frames_per_s")
        lines.append(
            f"{name}: {r['frames']} frames, steady {fps:.2f} frames/s"
            if fps
            else f"{name}: {r['frames']} frames"
        )
        lines.append(
            f"  warm-up {r.get('warmup_s', float('nan')):.1f} s, start-up {r['startup_s']:.1f} s, "
            f"whole run {r['wall_s']:.1f} s ({r['frames_per_s_whole_run']:.2f} frames/s)"
        )
        lines.append(
            "  ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in r["ms_per_frame"].items())
        )
        lines.append(
            f"  writer threads ({r['writer_threads']}), ms/frame: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["writer_ms_per_frame"].items())
        )
        lines.append(
            f"  {r['bytes_per_frame'] / 1e6:.3f} MB/frame ("
            + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in r["bytes_per_frame_by_entry"].items())
            + ")"
        )
        mem = f"  peak RSS {r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") else "  peak RSS ?"
        if "gpu_max_reserved_mb" in r:
            mem += f", GPU {r['gpu_max_allocated_mb']:.0f} MB allocated / {r['gpu_max_reserved_mb']:.0f} MB reserved"
        if "nvidia_smi_peak_mb" in r:
            mem += f" (nvidia-smi {r['nvidia_smi_peak_mb']} MB)"
        lines.append(mem)
        if "speed_py" in r:
            s = r["speed_py"]
            if s.get("new_fps"):
                lines.append(
                    f"  speed.py process_local {s['new_fps']:.2f} new frames/s "
                    f"(steady {s.get('new_fps_steady') or float('nan'):.2f}); laser run / speed.py = "
                    f"{r.get('ratio_to_speed_py', float('nan')):.3f} "
                    f"(steady/steady {r.get('ratio_to_speed_py_steady', float('nan')):.3f})"
                )
            else:
                lines.append(f"  speed.py: {s.get('error')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
