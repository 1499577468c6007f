"""π³ fast path vs the fp32 reference: per-window depth / pose / intrinsics errors, with random
weights and with a planted, well-conditioned point head (issue 23, item 6).

π³ has no intrinsics head: :func:`~laser_plugin.models.convert.intrinsics_from_points` fits the
focal lengths to the local point map (an L1 slope of pixel offset against x/z). A random network's
x/z has no relation to the pixel offset, so its fitted slope is ~0 and of either sign; a
non-positive slope is replaced by the 60-degree fallback. A perturbation of the size of bf16's
rounding can then move one frame from a slope of a few pixels to the fallback (hundreds of pixels)
and the window's ‖ΔK‖/‖K‖ jumps to tenths, although depth and poses agree to 1e-3.

To tell that from a defect of the fast path, the same comparison runs on a *planted* network
(:class:`PinholeHead`): the point head's x, y channels become the rays (u - cx) / fx,
(v - cy) / fy of a known pinhole camera, each multiplied by exp of the random head's own output
for that channel. Everything else stays random, so the fast path's numerics (bf16 trunk, token
cache, attention kernel, CUDA graph) still move every coordinate of the point map by as much as
they move the depth, but the map is a pinhole's and the focal fit is well conditioned.

Printed per network (random / planted), per fast-path configuration and per window: the errors
against fp32 (‖a−b‖/‖b‖ as in ``benchmarks/speed.py``), the frames whose fit hit the fallback in
one path only, the share of the confident top-half pixel set that differs between the paths, and
the sensitivity of the fit itself: ‖ΔK‖/‖K‖ when the reference points get a relative perturbation
of bf16 size.

    PYTHONPATH=. python benchmarks/fast_intrinsics.py --device cuda --out fast_intrinsics.json
    PYTHONPATH=. python benchmarks/fast_intrinsics.py --device cpu --size tiny   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from speed import make_canvas, rel  # benchmarks/ is on the path when this script runs
from torch import Tensor, nn

from laser_plugin.models import pi3
from laser_plugin.models.convert import focal_fit, intrinsics_from_points
from laser_plugin.models.fast import accelerate, no_tf32

PATCH = pi3.PATCH


# -- inputs (the benchmark video of speed.py: a smooth texture panned by 2 px per frame) ----
def make_windows(
    size: tuple[int, int], window: int, overlap: int, src_hw: tuple[int, int] = (360, 640)
) -> list[Tensor]:
    """The first two windows of speed.py's stream, resized as the engine does (bilinear,
    antialiased): (window, 3, H, W) in [0, 1] each; the second starts ``overlap`` frames before
    the first ends."""
    n = 2 * window - overlap
    canvas = make_canvas(src_hw[0], src_hw[1], 2 * window)
    frames = torch.stack(
        [torch.from_numpy(canvas[:, 2 * i : 2 * i + src_hw[1]].copy()) for i in range(n)]
    )
    frames = frames.permute(0, 3, 1, 2).float().div_(255.0)
    frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    return [frames[:window].clamp(0, 1), frames[window - overlap :].clamp(0, 1)]


# -- the planted head --------------------------------------------------------------------------
class HeadTap:
    """Keeps the output (raw x/z, y/z, log z) of a π³ point head's latest call."""

    def __init__(self, net) -> None:
        self.xyz: Tensor | None = None
        head = net.point_head
        self._hooks = [
            head.register_forward_hook(self._post),
        ]

    def _post(self, module, args, out) -> None:
        self.xyz = out.detach().float().clone()

    def local_points(self) -> Tensor:
        """(F, H, W, 3) camera-frame points as π³ forms them (xy * z, z = exp)."""
        z = torch.exp(self.xyz[..., 2:])
        return torch.cat([self.xyz[..., :2] * z, z], dim=-1)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def pinhole_focal(size: tuple[int, int]) -> tuple[float, float]:
    """The planted camera: 60-degree horizontal field of view, fy 3% longer than fx (so that a
    swap of the axes would show)."""
    fx = (size[1] / 2) / math.tan(math.radians(30))
    return fx, 1.03 * fx


class PinholeHead(nn.Module):
    """A π³ point head whose x, y channels are the rays of a known pinhole camera.

    π³'s point head outputs (x/z, y/z, log z) per pixel. Here x/z = (u - cx) / fx * exp(r_x) and
    y/z = (v - cy) / fy * exp(r_y), where r is the wrapped random head's own output: the rays are
    jittered per pixel by the network the way its depth z = exp(r_z) is, so a perturbation of the
    trunk (bf16, token cache, kernels) moves every coordinate of the point map by the same relative
    amount as the depth, while the map stays a pinhole's up to a multiplicative jitter whose median
    is ~1. The L1 focal fit is then well conditioned and returns fx, fy up to a bias from the
    jitter (its |x/z| weights favour pixels with exp(r) > 1: 5% low for the tiny network, ~15%
    for the full-size one), the same for both paths. The z channel, the confidence and the
    camera head are the random network's."""

    def __init__(self, head: nn.Module, focal: tuple[float, float]) -> None:
        super().__init__()
        self.head = head
        self.focal = focal

    def forward(self, tokens: Tensor, hw: tuple[int, int]) -> Tensor:
        out = self.head(tokens, hw)  # (F, H, W, 3)
        height, width = hw
        dev = out.device
        u = (torch.arange(width, device=dev, dtype=out.dtype) + 0.5 - width / 2) / self.focal[0]
        v = (torch.arange(height, device=dev, dtype=out.dtype) + 0.5 - height / 2) / self.focal[1]
        rays = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None]), -1)  # (H, W, 2)
        return torch.cat([rays * torch.exp(out[..., :2]), out[..., 2:]], -1)


def plant_pinhole(net, focal: tuple[float, float]) -> None:
    """Wrap ``net.point_head`` (once) in a :class:`PinholeHead` of focal lengths ``focal``."""
    if not isinstance(net.point_head, PinholeHead):
        net.point_head = PinholeHead(net.point_head, focal)


# -- measures ----------------------------------------------------------------------------------
def fit_sensitivity(pts: Tensor, conf: Tensor, eps: float, trials: int = 4, seed: int = 0) -> dict:
    """‖ΔK‖/‖K‖ and the largest per-frame |Δfx|/fx of the fit when every coordinate of ``pts`` gets
    an independent relative perturbation of size ``eps`` (the confidence is kept)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    pts, conf = pts.float().cpu(), conf.float().cpu()
    k0 = intrinsics_from_points(pts, conf)
    ks, worst = [], []
    for _ in range(trials):
        noise = torch.randn(pts.shape, generator=g)
        k = intrinsics_from_points(pts * (1 + eps * noise), conf)
        ks.append(rel(k, k0))
        df = k[:, :2, :2].diagonal(dim1=-2, dim2=-1) - k0[:, :2, :2].diagonal(dim1=-2, dim2=-1)
        worst.append(float((df.abs() / k0[:, :2, :2].diagonal(dim1=-2, dim2=-1)).max()))
    return {"eps": eps, "K_rel_median": float(np.median(ks)), "focal_rel_max": max(worst)}


def compare(ref_pred, ref_pts, fast_pred, fast_pts) -> dict:
    """Errors of one window plus what the focal fit did in each path."""
    fxr, fyr, setr = focal_fit(ref_pts.cpu(), ref_pred.conf.cpu())
    fxf, fyf, setf = focal_fit(fast_pts.cpu(), fast_pred.conf.cpu())
    kr, kf = ref_pred.intrinsics.cpu(), fast_pred.intrinsics.cpu()
    # (frame, axis) fits that the guard replaced (fx <= 0: 60-degree fallback; fy <= 0: fx)
    fall_r = ~(torch.isfinite(torch.stack([fxr, fyr])) & (torch.stack([fxr, fyr]) > 0))
    fall_f = ~(torch.isfinite(torch.stack([fxf, fyf])) & (torch.stack([fxf, fyf]) > 0))
    per_frame = (kf - kr).flatten(1).norm(dim=1)
    worst = int(per_frame.argmax())
    return {
        "depth": rel(fast_pred.depth, ref_pred.depth),
        "pose": rel(fast_pred.cam_to_world, ref_pred.cam_to_world),
        "intrinsics": rel(fast_pred.intrinsics, ref_pred.intrinsics),
        "points": rel(fast_pts, ref_pts),
        "fallback_frames_ref": int(fall_r.any(0).sum()),
        "fallback_flips": int((fall_r != fall_f).any(0).sum()),  # frames
        "topk_set_changed": float((setr != setf).float().sum() / setr.float().sum()),
        # pixels kept beyond the top half because they tie with the threshold (ref, fast)
        "topk_ties": [
            int((s.flatten(1).sum(1) - round(0.5 * s[0].numel())).max()) for s in (setr, setf)
        ],
        "worst_frame": worst,
        "worst_frame_fit_ref": [float(fxr[worst]), float(fyr[worst])],
        "worst_frame_fit_fast": [float(fxf[worst]), float(fyf[worst])],
        "worst_frame_K_ref": [float(kr[worst, 0, 0]), float(kr[worst, 1, 1])],
        "worst_frame_K_fast": [float(kf[worst, 0, 0]), float(kf[worst, 1, 1])],
        "median_abs_fit_ref": float(fxr.abs().nanmedian()),
    }


def run_ref(model, windows, device) -> list[tuple]:
    """fp32 reference (TF32 off): (prediction, local points) per window."""
    tap = HeadTap(model.net)
    compute, model.dtype = model.dtype, torch.float32
    out = []
    try:
        with no_tf32(), torch.inference_mode():
            for x in windows:
                pred = model(x.clone())
                out.append((pred, tap.local_points()))
    finally:
        model.dtype = compute
        tap.remove()
    return out


def run_fast(fast, windows) -> list[tuple]:
    tap = HeadTap(fast.net)
    out = []
    try:
        fast.reset()
        with torch.inference_mode():
            for x in windows:  # window 1 reuses window 0's overlap tokens when the cache is on
                pred = fast(x.clone())
                out.append((pred, tap.local_points()))
        fast.reset()
    finally:
        tap.remove()
    return out


def configs(device: torch.device, compile_: bool) -> dict[str, dict]:
    """Fast-path configurations: speed.py's ladder steps that showed the window-0 jump, and the
    GPU default without compile (the CUDA graph covers the trunk; the heads run eagerly so the
    point map can be read)."""
    cuda = device.type == "cuda"
    out = {
        "fp32_cache": {"dtype": torch.float32, "attention": "sdpa", "fused_gelu": False},
        "bf16": {"dtype": torch.bfloat16, "cache_encoder": False, "attention": "sdpa",
                 "fused_gelu": False},
        "bf16_cache": {"dtype": torch.bfloat16, "attention": "sdpa", "fused_gelu": False},
        "bf16_default": {"dtype": torch.bfloat16, "attention": "auto", "fused_gelu": True,
                         "cuda_graph": cuda},
    }  # fmt: skip
    if compile_:
        out["bf16_default_compiled"] = {**out["bf16_default"], "compile": True}
    return out


CONFIG_NAMES = ("fp32_cache", "bf16", "bf16_cache", "bf16_default", "bf16_default_compiled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="large", choices=["large", "tiny"])
    ap.add_argument("--height", type=int, default=294)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--overlap", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="random weights (speed.py uses 0)")
    ap.add_argument("--eps", type=float, default=4e-3, help="relative perturbation (bf16 ~ 4e-3)")
    ap.add_argument("--compile", action="store_true", help="also the compiled default (slow)")
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    if args.size == "tiny" and args.device == "cpu" and (args.height, args.width) == (294, 518):
        args.height, args.width, args.window, args.overlap = 112, 196, 8, 3
    device = torch.device(args.device)
    size = (args.height, args.width)
    t0 = time.perf_counter()
    windows = make_windows(size, args.window, args.overlap)
    ref = pi3.make_model(device=args.device, size=args.size, random_init=True, seed=args.seed)
    res: dict = {"args": vars(args), "device": str(device)}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    cfgs = configs(device, args.compile)
    if args.only:
        cfgs = {k: v for k, v in cfgs.items() if k in args.only}

    def baseline(refs) -> list[dict]:
        """The upstream-style path (fp32 weights under bf16 autocast) against fp32."""
        tap = HeadTap(ref.net)
        compute, ref.dtype = ref.dtype, torch.bfloat16
        try:
            with torch.inference_mode():
                return [
                    compare(r[0], r[1], ref(x.clone()), tap.local_points())
                    for x, r in zip(windows, refs, strict=True)
                ]
        finally:
            ref.dtype = compute
            tap.remove()

    focal = pinhole_focal(size)
    res["planted_focal"] = list(focal)
    for network in ("random", "planted"):
        refs = run_ref(ref, windows, device)
        rows: dict = {}
        rows["sensitivity"] = [fit_sensitivity(r[1], r[0].conf, args.eps) for r in refs]
        rows["ref_fit_median_abs_focal"] = [
            float(focal_fit(r[1].cpu(), r[0].conf.cpu())[0].abs().nanmedian()) for r in refs
        ]
        if network == "planted":
            rows["ref_focal_error"] = [
                rel(
                    r[0].intrinsics[:, [0, 1], [0, 1]].cpu(),
                    torch.tensor(res["planted_focal"]).expand(r[0].intrinsics.shape[0], 2),
                )
                for r in refs
            ]
        if device.type == "cuda" or args.size == "tiny":
            rows["baseline_autocast_bf16"] = baseline(refs)
        for name, opts in cfgs.items():
            model = pi3.Pi3Model(copy.deepcopy(ref.net), ref.device, torch.float32)
            t = time.perf_counter()
            fast = accelerate(model, **opts)
            outs = run_fast(fast, windows)
            rows[name] = [compare(r[0], r[1], o[0], o[1]) for r, o in zip(refs, outs, strict=True)]
            rows[name + "_seconds"] = time.perf_counter() - t
            del fast, model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res[network] = rows
        if network == "random":
            plant_pinhole(ref.net, focal)
    res["seconds"] = time.perf_counter() - t0
    summary(res)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)


def summary(res: dict) -> None:
    a = res["args"]
    print(
        f"π³ {a['size']} on {res.get('gpu', res['device'])}, {a['window']} x {a['height']}x"
        f"{a['width']}, overlap {a['overlap']}; planted fx, fy = "
        f"{res['planted_focal'][0]:.1f}, {res['planted_focal'][1]:.1f}"
    )
    for network in ("random", "planted"):
        rows = res[network]
        print(f"\n== {network} point head ==")
        sens = rows["sensitivity"]
        print(
            "fit sensitivity to a {:.0e} relative perturbation of the fp32 points, ‖ΔK‖/‖K‖ per "
            "window: {}  (worst per-frame |Δf|/f: {})".format(
                sens[0]["eps"],
                " ".join(f"{s['K_rel_median']:.1e}" for s in sens),
                " ".join(f"{s['focal_rel_max']:.1e}" for s in sens),
            )
        )
        print(
            "median |fitted focal| of the fp32 points, per window: "
            + " ".join(f"{v:.3g}" for v in rows["ref_fit_median_abs_focal"])
        )
        if "ref_focal_error" in rows:
            print(
                "fp32 reference's focal lengths vs the planted ones (rel): "
                + " ".join(f"{v:.1e}" for v in rows["ref_focal_error"])
            )
        print(
            f"{'path':24s} {'win':>3s} {'depth':>8s} {'pose':>8s} {'intrinsics':>10s} "
            f"{'points':>8s} {'fallback':>8s} {'flips':>5s} {'top-k Δ':>8s}  worst frame fx,fy ref -> fast"
        )
        for name, val in rows.items():
            if not isinstance(val, list) or not val or not isinstance(val[0], dict):
                continue
            if "depth" not in val[0]:
                continue
            for k, e in enumerate(val):
                print(
                    f"{name:24s} {k:3d} {e['depth']:8.1e} {e['pose']:8.1e} {e['intrinsics']:10.1e} "
                    f"{e['points']:8.1e} {e['fallback_frames_ref']:8d} {e['fallback_flips']:5d} "
                    f"{e['topk_set_changed']:8.1e}  #{e['worst_frame']} "
                    f"{e['worst_frame_K_ref'][0]:.4g},{e['worst_frame_K_ref'][1]:.4g} -> "
                    f"{e['worst_frame_K_fast'][0]:.4g},{e['worst_frame_K_fast'][1]:.4g} (fit "
                    f"{e['worst_frame_fit_ref'][0]:.3g},{e['worst_frame_fit_ref'][1]:.3g} -> "
                    f"{e['worst_frame_fit_fast'][0]:.3g},{e['worst_frame_fit_fast'][1]:.3g})"
                )
        errs = [
            e for name, v in rows.items() if isinstance(v, list) and name in CONFIG_NAMES for e in v
        ]
        if errs:
            worst = max(errs, key=lambda e: e["intrinsics"] / max(e["depth"], 1e-12))
            print(
                f"fast paths: worst intrinsics/depth error ratio "
                f"{worst['intrinsics'] / max(worst['depth'], 1e-12):.2f}; windows with a frame whose "
                f"focal fit crossed zero (fallback in one path only): "
                f"{sum(e['fallback_flips'] > 0 for e in errs)} of {len(errs)}"
            )
    print(f"\ntotal {res['seconds']:.1f} s")


if __name__ == "__main__":
    main()
