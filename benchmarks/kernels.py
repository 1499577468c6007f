"""Kernel-level measurements behind run 8 of benchmarks/archive/SPEED_NOTES.md: where the network's time could still go.

Three questions, each answered on the same card in one process, with errors against fp32 on the
same weights and inputs (‖a−b‖/‖b‖):

1. ``attention``: SDPA at π³'s global (1, 16, 15640, 64) and frame (20, 16, 782, 64) shapes
   through each backend PyTorch offers, in TFLOP/s, against two floors: the matrix products at
   the measured bf16 matmul rate, and the softmax's exponentials at the special-function units'
   rate (16 per SM per clock on Hopper: at head dimension 64 these are almost as slow as the
   products, which is why attention kernels stop far below the matmul ceiling).
2. ``block``: one π³ decoder block (global and frame attention shapes) eager, with the regional
   ``torch.compile`` the fast path uses, and with Inductor's ``max-autotune`` (Triton matrix
   products whose epilogues take the bias, GELU and residual adds that otherwise make extra
   passes over memory).
3. ``dpt``: VGGT's DPT depth head on one window (20 frames): the fast path's bf16 NCHW chunks,
   channels-last memory format, larger chunks, compiled.

4. ``gelu``: fc1 + GELU, Inductor against cuBLASLt's GELU epilogue.

    python benchmarks/kernels.py [--only attention block dpt gelu] [--tiny --device cpu] [--out F]

``--tiny`` shrinks every shape for a CPU smoke test (figures meaningless).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from speed import rel  # benchmarks/ is on the path when this script runs

from laser_plugin.models.blocks import Block, DPTHead
from laser_plugin.models.blocks.transformer import Rope2D, grid_positions
from laser_plugin.models.fast import compile_blocks, no_tf32


def bench(fn: Callable[[int], object], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn(i)`` (i rotates the caller's input sets)."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def matmul_rate(device: torch.device, n: int) -> float:
    """Measured bf16 matrix-product rate in TFLOP/s (the ceiling the floors use)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = bench(lambda i: a @ b, device, 10)
    return 2 * n**3 / ms / 1e9


def sfu_rate(device: torch.device) -> float | None:
    """Exponentials per second of the special-function units: SMs x clock x 16 (sm_80/sm_90)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "clock_rate", None)
    if not clock_khz:
        return None
    return props.multi_processor_count * clock_khz * 1e3 * 16


def attention(args, device, res: dict) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = (16, 64) if not args.tiny else (2, 16)
    tokens = 782 if not args.tiny else 40
    frames = 20 if not args.tiny else 3
    # (batch, tokens, heads, head dim). The control: the global shape with half the heads at twice
    # the head dimension does the same products with half the exponentials; if the exponentials
    # bound the kernel, it runs much faster than the real shape.
    shapes = {
        "global": (1, frames * tokens, heads, dim),
        "frame": (frames, tokens, heads, dim),
        "global_control_d2x": (1, frames * tokens, heads // 2, dim * 2),
        "frame_control_d2x": (frames, tokens, heads // 2, dim * 2),
    }
    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash2": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    out = {}
    sfu = sfu_rate(device)
    for shape_name, (b, n, heads, dim) in shapes.items():
        gen = torch.Generator(device=device).manual_seed(0)
        sets = [
            [torch.randn(b, heads, n, dim, device=device, generator=gen) for _ in range(3)]
            for _ in range(3)
        ]
        with no_tf32():
            ref = F.scaled_dot_product_attention(*sets[0])
        low = [[t.to(torch.bfloat16) for t in s] for s in sets]
        flop = 4 * b * heads * n * n * dim
        row = {
            "shape": [b, heads, n, dim],
            "gflop": flop / 1e9,
            "matmul_floor_ms": flop / (res["matmul_tflops"] * 1e9),
            "exp_floor_ms": None if sfu is None else b * heads * n * n / sfu * 1e3,
        }
        for name, backend in backends.items():
            if name == "math" and not args.tiny:
                continue  # materialises the 15640^2 score matrix per head: not a contender
            try:
                with sdpa_kernel([backend]):
                    ms = bench(
                        lambda i, low=low: F.scaled_dot_product_attention(*low[i % 3]),
                        device,
                        args.iters,
                    )
                    err = rel(F.scaled_dot_product_attention(*low[0]), ref)
                row[name] = {"ms": ms, "tflops": flop / ms / 1e9, "err_vs_fp32": err}
            except RuntimeError as exc:  # backend not built or not applicable here
                row[name] = {"unavailable": str(exc).splitlines()[0][:160]}
        if device.type == "cuda":
            row["flex"] = _flex(low, ref, flop, device, args.iters)
            row["cudnn_bnhd"] = _bnhd(low, ref, flop, device, args.iters)
        out[shape_name] = row
    res["attention"] = out


def _bnhd(low, ref, flop, device, iters) -> dict:
    """cuDNN on (B, H, N, D) views of (B, N, H, D) tensors, the layout a qkv projection writes:
    is it as fast, and does the output come back in that layout (then the attention output needs
    no transpose copy before the output projection)?"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    views = [[t.transpose(1, 2).contiguous().transpose(1, 2) for t in s] for s in low]
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms = bench(lambda i: F.scaled_dot_product_attention(*views[i % 3]), device, iters)
            out = F.scaled_dot_product_attention(*views[0])
        return {
            "ms": ms,
            "tflops": flop / ms / 1e9,
            "err_vs_fp32": rel(out, ref),
            "output_bnhd_contiguous": out.transpose(1, 2).is_contiguous(),
        }
    except RuntimeError as exc:
        return {"unavailable": str(exc).splitlines()[0][:160]}


def _flex(low, ref, flop, device, iters) -> dict:
    """FlexAttention: a Triton kernel generated by Inductor (no mask, no score modification)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention

        fn = torch.compile(flex_attention)
        ms = bench(lambda i: fn(*low[i % 3]), device, iters)
        err = rel(fn(*low[0]), ref)
        return {"ms": ms, "tflops": flop / ms / 1e9, "err_vs_fp32": err}
    except Exception as exc:  # Triton missing or the shape unsupported: say so, keep going
        return {"unavailable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def _block_inputs(args, device, b, n, dim, heads):
    """Three input sets (B, N, dim) fp32 and the rotary tables of π³'s token grid."""
    h, w = (21, 37) if not args.tiny else (4, 9)
    pos = grid_positions(h, w, 5, device)
    per_frame = pos.shape[1]
    frames = n // per_frame
    rope_pos = pos.repeat(1, frames, 1) if b == 1 else pos
    cos, sin = Rope2D(rope_pos).tables(dim // heads, torch.float32, device)
    gen = torch.Generator(device=device).manual_seed(1)
    xs = [torch.randn(b, n, dim, device=device, generator=gen) for _ in range(3)]
    return xs, (cos, sin)


def block(args, device, res: dict) -> None:
    dim, heads = (1024, 16) if not args.tiny else (64, 4)
    per_frame = (21 * 37 + 5) if not args.tiny else (4 * 9 + 5)
    frames = 20 if not args.tiny else 3
    torch.manual_seed(0)
    ref_block = Block(dim, heads, eps=1e-6, layer_scale=0.01, qk_norm=True, qk_to_v_dtype=True)
    # Random weights of the scale a trained block has: layer scale 0.01 as π³'s init would make
    # the residual branch negligible; use 0.5 so the error figures measure the branch.
    with torch.no_grad():
        ref_block.ls1.gamma.fill_(0.5)
        ref_block.ls2.gamma.fill_(0.5)
    ref_block = ref_block.to(device).eval()
    modes = ["eager", "compile", "compile_fused_gelu"]
    modes += [] if args.no_autotune else ["max-autotune"]
    out = {}
    for shape_name, (b, n) in {
        "global": (1, frames * per_frame),
        "frame": (frames, per_frame),
    }.items():
        xs, (cos, sin) = _block_inputs(args, device, b, n, dim, heads)
        with torch.inference_mode(), no_tf32():
            ref = ref_block(xs[0], (cos, sin))
        xl = [x.to(torch.bfloat16) for x in xs]
        tl = (cos.to(torch.bfloat16), sin.to(torch.bfloat16))
        row = {"tokens": [b, n, dim]}
        for mode in modes:
            blk = copy.deepcopy(ref_block).to(torch.bfloat16)
            blk.mlp.fused_gelu = mode == "compile_fused_gelu"
            if mode != "eager":  # compiled as the fast path compiles its blocks
                compile_blocks(
                    [blk], "max-autotune-no-cudagraphs" if mode == "max-autotune" else None
                )
            fn = blk
            t = time.perf_counter()
            with torch.inference_mode():
                fn(xl[0], tl)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_s = time.perf_counter() - t
                ms = bench(lambda i, fn=fn, xl=xl, tl=tl: fn(xl[i % 3], tl), device, args.iters)
                err = rel(fn(xl[0], tl).float(), ref)
            row[mode] = {"ms": ms, "first_call_s": first_s, "err_vs_fp32": err}
        out[shape_name] = row
    res["block"] = out


def gelu(args, device, res: dict) -> None:
    """fc1 + exact GELU of one block's MLP: Inductor (a product, then a GELU pass over the
    4096-wide hidden layer) against ``torch._addmm_activation`` (cuBLASLt's GELU epilogue: no
    extra pass). Which GELU the epilogue computes (erf or tanh) is read off the errors."""
    m, k, n = (15640, 1024, 4096) if not args.tiny else (200, 64, 256)
    gen = torch.Generator(device=device).manual_seed(3)
    xs = [torch.randn(m, k, device=device, generator=gen) for _ in range(3)]
    w = torch.randn(n, k, device=device, generator=gen) / k**0.5
    b = torch.randn(n, device=device, generator=gen) * 0.1
    with no_tf32():
        pre = F.linear(xs[0], w, b)
    exact, tanh = F.gelu(pre), F.gelu(pre, approximate="tanh")
    xl, wl, bl = [x.to(torch.bfloat16) for x in xs], w.to(torch.bfloat16), b.to(torch.bfloat16)
    compiled = torch.compile(lambda x: F.gelu(F.linear(x, wl, bl)))
    fused = lambda x: torch._addmm_activation(bl, x, wl.t(), use_gelu=True)  # noqa: E731
    out = {"shape": [m, k, n]}
    for name, fn in (("inductor_linear_then_gelu", compiled), ("addmm_gelu_epilogue", fused)):
        with torch.inference_mode():
            y = fn(xl[0]).float()
            ms = bench(lambda i, fn=fn: fn(xl[i % 3]), device, args.iters)
        out[name] = {
            "ms": ms,
            "err_vs_exact_gelu": rel(y, exact),
            "err_vs_tanh_gelu": rel(y, tanh),
        }
    res["gelu"] = out


def dpt(args, device, res: dict) -> None:
    dim = 2048 if not args.tiny else 64
    layers_idx = (4, 11, 17, 23) if not args.tiny else (0, 1, 2, 3)
    features, channels = (256, (256, 512, 1024, 1024)) if not args.tiny else (16, (8, 16, 32, 32))
    frames = 20 if not args.tiny else 4
    hw = (294, 518) if not args.tiny else (56, 126)
    ph, pw = hw[0] // 14, hw[1] // 14
    start = 5
    torch.manual_seed(0)
    head = DPTHead(dim, 2, features=features, out_channels=channels, layer_indices=layers_idx)
    head = head.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(2)
    layers = {
        i: torch.randn(frames, start + ph * pw, dim, device=device, generator=gen)
        for i in layers_idx
    }

    def run(h, lay, chunk):
        outs = []
        for f0 in range(0, frames, chunk):
            outs.append(h({i: t[f0 : f0 + chunk] for i, t in lay.items()}, hw, start))
        return torch.cat(outs)

    with torch.inference_mode(), no_tf32():
        ref = run(head, layers, 4)
    low = {i: t.to(torch.bfloat16) for i, t in layers.items()}
    # (name, frames per chunk, channels-last, compiled, compile mode)
    variants = [
        ("bf16_chunk4", 4, False, False, None),
        ("bf16_chunk4_channels_last", 4, True, False, None),
        ("bf16_chunk4_compiled", 4, False, True, None),
        ("bf16_chunk10_channels_last", 10, True, False, None),
        ("bf16_chunk4_channels_last_compiled", 4, True, True, None),
        ("bf16_chunk10_channels_last_compiled", 10, True, True, None),
        # run 9h: the whole window at once, and Inductor's autotuned convolutions
        ("bf16_chunk20_channels_last_compiled", 20, True, True, None),
        ("bf16_chunk10_channels_last_autotune", 10, True, True, "max-autotune-no-cudagraphs"),
    ]
    if args.tiny:
        variants = [v for v in variants if v[4] is None]
    out = {"frames": frames, "hw": list(hw)}
    for name, chunk, cl, comp, mode in variants:
        h = copy.deepcopy(head).to(torch.bfloat16)
        if cl:
            h = h.to(memory_format=torch.channels_last)
        fn = torch.compile(h, mode=mode) if comp else h
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t = time.perf_counter()
        with torch.inference_mode():
            y = run(fn, low, chunk)
            first_s = time.perf_counter() - t
            ms = bench(lambda i, fn=fn, chunk=chunk: run(fn, low, chunk), device, 8)
            err = rel(y.float(), ref)
        row = {"ms": ms, "first_call_s": first_s, "err_vs_fp32": err}
        if device.type == "cuda":
            row["peak_extra_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        out[name] = row
    res["dpt"] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", nargs="*", default=["attention", "block", "dpt"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-autotune", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    res: dict = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        res["card"] = torch.cuda.get_device_name(device)
    res["matmul_tflops"] = matmul_rate(device, 8192 if not args.tiny else 256)
    for part in args.only:
        t = time.perf_counter()
        parts = {"attention": attention, "block": block, "dpt": dpt, "gelu": gelu}
        parts[part](args, device, res)
        res[f"{part}_s"] = time.perf_counter() - t
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
    summary(res)


def summary(res: dict) -> None:
    """One line per measured variant (the JSON under --out has everything)."""
    print(f"card: {res.get('card', res['device'])}  bf16 matmul {res['matmul_tflops']:.0f} TFLOP/s")
    for shape, row in res.get("attention", {}).items():
        floor = f"matmul floor {row['matmul_floor_ms']:.2f} ms"
        if row["exp_floor_ms"] is not None:
            floor += f", exp floor {row['exp_floor_ms']:.2f} ms"
        print(f"attention {shape} {row['shape']}: {floor}")
        for name, r in row.items():
            if isinstance(r, dict) and "ms" in r:
                print(
                    f"  {name:10s} {r['ms']:8.3f} ms {r['tflops']:6.0f} TFLOP/s err {r['err_vs_fp32']:.1e}"
                )
            elif isinstance(r, dict):
                print(f"  {name:10s} unavailable: {r['unavailable']}")
    for name, r in res.get("gelu", {}).items():
        if isinstance(r, dict):
            print(
                f"gelu {name}: {r['ms']:.3f} ms, err vs exact {r['err_vs_exact_gelu']:.1e}, "
                f"vs tanh {r['err_vs_tanh_gelu']:.1e}"
            )
    for part in ("block", "dpt"):
        for shape, row in res.get(part, {}).items():
            if not isinstance(row, dict):
                continue
            for name, r in row.items():
                if isinstance(r, dict) and "ms" in r:
                    extra = f" peak +{r['peak_extra_mib']:.0f} MiB" if "peak_extra_mib" in r else ""
                    print(
                        f"{part} {shape} {name}: {r['ms']:.3f} ms, first call "
                        f"{r['first_call_s']:.1f} s, err {r['err_vs_fp32']:.1e}{extra}"
                    )
            if part == "dpt" and "ms" in row:
                extra = f" peak +{row['peak_extra_mib']:.0f} MiB" if "peak_extra_mib" in row else ""
                print(
                    f"dpt {shape}: {row['ms']:.3f} ms, first call {row['first_call_s']:.1f} s, "
                    f"err {row['err_vs_fp32']:.1e}{extra}"
                )


if __name__ == "__main__":
    main()
