"""Where the aligning thread's time goes next to the network: a torch.profiler run of the
one-GPU worker pipeline (the `Workers` predictor, the network in a thread of this process).

benchmarks/archive/SPEED_NOTES.md run 8: with VGGT, the aligning thread spends 65-85 ms per window in ``finalise``
(π³: 3 ms), whose work is a handful of device-to-host copies. This profiles a few windows after a
warm-up and prints the CPU-side operations under each engine stage (marked with
``record_function``) and the device-to-host copies' own durations on the GPU.

    PYTHONPATH=. python benchmarks/profile_stream.py --model vggt [--frames 200] [--out F]
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from laser_plugin import LaserConfig
from laser_plugin.engine import StreamingReconstructor


def _mark(cls, name: str) -> None:
    """Wrap ``cls.name`` in a profiler range ``laser.<name>``."""
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        with torch.profiler.record_function(f"laser.{name.strip('_')}"):
            return fn(*a, **kw)

    setattr(cls, name, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["pi3", "vggt"], default="vggt")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="large")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import speed  # the benchmark's synthetic source and model factory

    from laser_plugin.predictors import Workers
    from laser_plugin.worker import WorkerPool

    args.fast_options, args.attention, args.fused_gelu, args.compile_mode = "{}", "auto", True, None
    for name in ("_finalise", "_register", "align"):
        _mark(StreamingReconstructor, name)
    cfg = LaserConfig(window_size=20, overlap=5, device=args.device)
    canvas = speed.make_canvas(360, 640, args.frames)
    pool = WorkerPool(
        speed.worker_factory(args), [args.device], transfer="auto", in_process_first=True
    )
    pool.start()
    try:
        rec = StreamingReconstructor(pool, cfg, input_size=(294, 518), predictor=Workers(pool))
        for _ in rec.run(speed.Stream(canvas, 60, 640)):
            pass  # compiles and captures every window shape
        rec.timings = {}
        rec.num_windows = rec.num_frames = 0
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            n = sum(1 for _ in rec.run(speed.Stream(canvas, args.frames, 640)))
    finally:
        pool.close()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
    print(table)
    copies = [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and "DtoH" in e.name
    ]
    dtoh = sorted((e.device_time for e in copies), reverse=True)
    res = {
        "frames": n,
        "stages_ms_per_window": {
            k: 1e3 * v / max(1, rec.num_windows) for k, v in rec.timings.items()
        },
        "dtoh_copies": len(dtoh),
        "dtoh_us_top": dtoh[:20],
        "dtoh_us_total": sum(dtoh),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n" + table)


if __name__ == "__main__":
    main()
