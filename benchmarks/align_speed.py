"""Per-frame cost of the alignment stages at 518x294, L=20, O=5, on one CPU core (or a GPU).

Stages, as the engine runs them per window, divided by the L-O new frames of a window:
registration (confidence ranks + Sim(3)), segmentation (depth layers), layer graph (edges, edge
scales, propagation) and scaling (per-pixel scale along camera rays). Reports wall
time and the thread's CPU time (the latter is robust to other load on a shared machine).

    python benchmarks/align_speed.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from laser_plugin import LaserConfig
from laser_plugin.geometry.layers import mul_upsampled_, segment_depth_layers
from laser_plugin.geometry.lsa import align_layers
from laser_plugin.geometry.sanitize import sanitize_prediction
from laser_plugin.geometry.sim3 import register_overlap
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.prepare import rank_normalise


def iter_source(scene):
    """The scene's frames as a source of the engine (index, timestamp, image)."""
    from laser_plugin.sources import SourceFrame

    for i, img in enumerate(scene.frames()):
        yield SourceFrame(i, i / 30.0, img)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--height", type=int, default=294)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/align_speed.json"))
    ap.add_argument(
        "--segment-noise-k",
        type=float,
        default=None,
        help="LaserConfig.segment_noise_k (0: the fixed-threshold segmentation, for comparison)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = LaserConfig()
    if args.segment_noise_k is not None:
        cfg.segment_noise_k = args.segment_noise_k
    L, O = cfg.window_size, cfg.overlap  # noqa: E741 - the paper's names
    scene = make_scene("demo", L + (L - O), args.height, args.width)
    model = make_model(scene=scene)
    prev_pred = model.predict(list(range(L))).to(dev)
    new_pred = model.predict(list(range(L - O, 2 * L - O))).to(dev)
    stride = cfg.stride_for(args.height, args.width)

    # The previous window, aligned once (its overlap frames are what the new one registers to).
    d_prev, c_prev, p_prev, k_prev, _ = sanitize_prediction(prev_pred)
    conf_prev = rank_normalise(c_prev, d_prev > 0) >= 1 - cfg.top_conf_fraction
    seg_kw = dict(noise_k=cfg.segment_noise_k)
    lay_prev = segment_depth_layers(
        d_prev,
        stride,
        cfg.crease,
        cfg.depth_jump,
        cfg.max_layers,
        cfg.min_layer_fraction,
        conf=rank_normalise(c_prev, d_prev > 0),
        **seg_kw,
    )

    stages = {"registration": [], "segmentation": [], "layer_graph": [], "scaling": []}
    cpu = {k: [] for k in stages}
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.thread_time()

        def lap(name):
            nonlocal t, c
            sync(dev)
            t2, c2 = time.perf_counter(), time.thread_time()
            stages[name].append(t2 - t)
            cpu[name].append(c2 - c)
            t, c = t2, c2

        depth, conf, poses, intr, _ = sanitize_prediction(new_pred)
        conf_n = rank_normalise(conf, depth > 0)  # once, as prepare_window does
        confident = conf_n >= 1 - cfg.top_conf_fraction
        reg = register_overlap(
            d_prev[-O:],
            p_prev[-O:],
            k_prev[-O:],
            conf_prev[-O:],
            depth[:O],
            poses[:O],
            intr[:O],
            confident[:O],
        )
        depth = depth * reg.sim3.scale
        poses = reg.sim3.apply_poses(poses)
        lap("registration")
        # As prepare_window: the confidence ranks tell the segmentation where to measure noise.
        lay = segment_depth_layers(
            depth,
            stride,
            cfg.crease,
            cfg.depth_jump,
            cfg.max_layers,
            cfg.min_layer_fraction,
            conf=conf_n,
            **seg_kw,
        )
        lap("segmentation")
        k_s = intr.clone()
        k_s[:, :2] /= stride
        la = align_layers(
            lay.labels,
            lay.depth,
            lay_prev.labels[-O:],
            lay_prev.depth[-O:],
            poses,
            k_s,
            cfg.iou_threshold,
            cfg.intra_edges,
            cfg.intra_warp,
            cfg.huber_delta,
            cfg.irls_iterations,
            cfg.min_layer_pixels,
            intra_hops=cfg.intra_hops,
            fill_radius=cfg.scale_fill_radius,
        )
        lap("layer_graph")
        # along camera rays, in place, as the engine does; world points derive from it on demand
        mul_upsampled_(depth, la.pixel_scale, stride)
        lap("scaling")

    # The whole of StreamingReconstructor.align() as a stream runs it: the four stages plus what
    # surrounds them (full-resolution labels, building the output frames, the overlap cache).
    from laser_plugin import StreamingReconstructor
    from laser_plugin.windows import schedule_windows

    n_win = 2 + max(2, args.repeats // 2)
    long_scene = make_scene("demo", L + (n_win - 1) * (L - O), args.height, args.width)
    rec = StreamingReconstructor(
        make_model(scene=long_scene),
        LaserConfig(device=args.device, segment_noise_k=cfg.segment_noise_k),
    )
    rec.start_stream()
    windows = list(schedule_windows(rec._prepared(iter_source(long_scene)), L, O))
    preds = [rec.predict(w) for w in windows]
    engine_wall, engine_cpu = [], []
    for w, p in zip(windows, preds, strict=True):
        sync(dev)
        t, c = time.perf_counter(), time.thread_time()
        rec.align(w, p)
        sync(dev)
        if w.index > 0:  # window 0 has nothing to register to
            engine_wall.append(time.perf_counter() - t)
            engine_cpu.append(time.thread_time() - c)

    new_frames = L - O
    per_frame = {k: 1000 * statistics.median(v) / new_frames for k, v in stages.items()}
    per_frame_cpu = {k: 1000 * statistics.median(v) / new_frames for k, v in cpu.items()}
    total, total_cpu = sum(per_frame.values()), sum(per_frame_cpu.values())
    name = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {args.threads} thread(s)"
    )
    print(
        f"alignment at {args.width}x{args.height}, L={L}, O={O}, segmentation stride {stride}, on {name}"
    )
    print(f"{'stage':<14}{'wall ms/frame':>15}{'cpu ms/frame':>15}")
    for k in stages:
        print(f"{k:<14}{per_frame[k]:>15.2f}{per_frame_cpu[k]:>15.2f}")
    print(f"{'total':<14}{total:>15.2f}{total_cpu:>15.2f}   (target: < 10 ms per frame)")
    e_wall = 1000 * statistics.median(engine_wall) / new_frames
    e_cpu = 1000 * statistics.median(engine_cpu) / new_frames
    print(
        f"{'engine.align':<14}{e_wall:>15.2f}{e_cpu:>15.2f}   (everything align() does per window)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "device": name,
                "size": [args.height, args.width],
                "stride": stride,
                "wall_ms_per_frame": per_frame,
                "cpu_ms_per_frame": per_frame_cpu,
                "engine_align_ms_per_frame": {"wall": e_wall, "cpu": e_cpu},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
