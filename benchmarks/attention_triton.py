"""Attention forward kernels of our own in Triton, swept over tile shapes, against cuDNN.

benchmarks/archive/SPEED_NOTES.md run 8 measured that cuDNN's attention at head dimension 64 takes the products' time
plus the exponentials' time, one after the other. These variants test ways around that:

- "ptr": one program per 64- or 128-row query tile, pointer loads, the softmax in fp32 with
  ``exp2``; smaller tiles keep several programs per SM, whose phases can interleave;
- "ptr" with ``half_exp``: the exponentials two at a time in half precision
  (``ex2.approx.f16x2``: half the special-function ops; the probabilities are rounded to bf16 for
  the product anyway, so half precision loses nothing that bf16 keeps);
- "pipe": the next key block's scores issued before this block's softmax;
- "tma": the package's kernel (:mod:`laser_plugin.models.blocks.attention_kernel`, which the fast
  paths use): tiles moved by tensor descriptors over the (B, N, H, D) layout.

    PYTHONPATH=. python benchmarks/attention_triton.py [--out F] [--quick]   (CUDA)

Results (H100, runs 8e-8g): "tma" 1.07x cuDNN on the global shape and 1.18x on the frame shape;
half-precision exponentials and the pipelined loop were slower (conversions; Triton waits for the
products before the softmax either way).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from speed import rel  # benchmarks/ is on the path when this script runs

from laser_plugin.models.blocks import attention_kernel as ak

LOG2E = 1.4426950408889634


@triton.jit
def _exp2_f16x2(x):
    """2**x for fp32 x (x <= 0), two at a time in half precision; returns fp32."""
    y = tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 packed;
        .reg .b16 lo, hi;
        cvt.rn.f16x2.f32 packed, $3, $2;
        ex2.approx.f16x2 packed, packed;
        mov.b32 {lo, hi}, packed;
        cvt.f32.f16 $0, lo;
        cvt.f32.f16 $1, hi;
        }
        """,
        constraints="=f,=f,f,f",
        args=[x],
        dtype=tl.float32,
        is_pure=True,
        pack=2,
    )
    return y


@triton.jit
def _softmax_step(s, m_i, l_i, acc, v, qk_scale, HALF_EXP: tl.constexpr):
    """Fold one block of raw scores s (BLOCK_M, BLOCK_N) and its values v into the running
    max m_i, row sums l_i and output acc (online softmax)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # scores to log2 units and the running max subtracted in one multiply-add per score
    shifted = s * qk_scale - (m_new * qk_scale)[:, None]
    if HALF_EXP:
        p = _exp2_f16x2(shifted)
    else:
        p = tl.math.exp2(shifted)
    alpha = tl.math.exp2((m_i - m_new) * qk_scale)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.jit
def _attn_fwd(
    Q, K, V, Out,
    qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, N, n_full,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HALF_EXP: tl.constexpr,
    PIPE: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M query rows of one (batch, head); streams all keys (online softmax).
    Tensors are (B, H, N, D) with unit stride along D; ``n_full``: the keys in whole blocks.
    ``PIPE``: the next key block's scores are issued before this block's softmax, so that the
    tensor cores could work while the exponentials run (needs N >= BLOCK_N)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_ptr = Q + b * stride_qb + h * stride_qh
    k_ptr = K + b * stride_kb + h * stride_kh
    v_ptr = V + b * stride_vb + h * stride_vh
    q = tl.load(q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :], mask=offs_m[:, None] < N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # Full key blocks: no masks in the loop. K tiles load as (D, BLOCK_N), V tiles (BLOCK_N, D).
    if PIPE:
        s = tl.dot(q, tl.load(k_ptr + offs_n[None, :] * stride_kn + offs_d[:, None]))
        for start in range(BLOCK_N, n_full, BLOCK_N):
            cols = start + offs_n
            s_next = tl.dot(q, tl.load(k_ptr + cols[None, :] * stride_kn + offs_d[:, None]))
            prev = start - BLOCK_N + offs_n
            v = tl.load(v_ptr + prev[:, None] * stride_vn + offs_d[None, :])
            m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, qk_scale, HALF_EXP)
            s = s_next
        prev = n_full - BLOCK_N + offs_n
        v = tl.load(v_ptr + prev[:, None] * stride_vn + offs_d[None, :])
        m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, qk_scale, HALF_EXP)
    else:
        for start in range(0, n_full, BLOCK_N):
            cols = start + offs_n
            s = tl.dot(q, tl.load(k_ptr + cols[None, :] * stride_kn + offs_d[:, None]))
            v = tl.load(v_ptr + cols[:, None] * stride_vn + offs_d[None, :])
            m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, qk_scale, HALF_EXP)
    # The ragged last block, masked.
    if n_full < N:
        cols = n_full + offs_n
        valid = cols < N
        k = tl.load(k_ptr + cols[None, :] * stride_kn + offs_d[:, None], mask=valid[None, :])
        s = tl.where(valid[None, :], tl.dot(q, k), float("-inf"))
        v = tl.load(v_ptr + cols[:, None] * stride_vn + offs_d[None, :], mask=valid[:, None])
        m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, qk_scale, False)
    out = acc / l_i[:, None]
    o_ptr = Out + b * stride_ob + h * stride_oh
    tl.store(
        o_ptr + offs_m[:, None] * stride_on + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=offs_m[:, None] < N,
    )


def attention(
    q, k, v, *, block_m=64, block_n=64, num_warps=4, num_stages=3, half_exp=False, pipe=False
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for (B, H, N, D) CUDA tensors (unit stride along D)."""
    b, h, n, d = q.shape
    out = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype).transpose(1, 2)
    grid = (triton.cdiv(n, block_m), b * h)
    if pipe and n < block_n:
        raise ValueError("the pipelined kernel needs at least one whole key block")
    _attn_fwd[grid](
        q, k, v, out,
        LOG2E / math.sqrt(d),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, n, (n // block_n) * block_n,
        D=d, BLOCK_M=block_m, BLOCK_N=block_n, HALF_EXP=half_exp, PIPE=pipe,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    args = ap.parse_args()
    from triton.testing import do_bench

    dev = torch.device("cuda")
    res: dict = {"card": torch.cuda.get_device_name(dev), "rows": []}
    shapes = {"global": (1, 16, 15640, 64), "frame": (20, 16, 782, 64)}
    # (kernel, block_m, block_n, warps, stages, flag): flag is half_exp for "ptr" and "pipe",
    # unused for "tma". Run 8e/8f swept the pointer kernels (half_exp, pipe: no gain).
    configs = [("ptr", 128, 64, 8, 3, False), ("ptr", 64, 64, 4, 3, False)]
    # "tma": the package's kernel (laser_plugin.models.blocks.attention_kernel). Run 8g also
    # tried Triton's automatic warp specialisation of its key loop: no change on Hopper.
    configs += [("tma", *c, False) for c in itertools.product((64, 128), (64, 128), (4, 8), (2, 3))]
    if args.quick:
        configs = [*configs[:2], ("tma", 128, 64, 8, 3, False), ("tma", 64, 64, 4, 3, False)]
    triton.set_allocator(
        lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8)
    )
    for name, shape in shapes.items():
        gen = torch.Generator(device=dev).manual_seed(0)
        # The layout the qkv projection writes: (B, N, H, D) storage seen as (B, H, N, D).
        qkv = [
            torch.randn(shape[0], shape[2], shape[1], shape[3], device=dev, generator=gen)
            .to(torch.bfloat16)
            .transpose(1, 2)
            for _ in range(3)
        ]
        ref = F.scaled_dot_product_attention(*(t.float() for t in qkv))
        flop = 4 * shape[0] * shape[1] * shape[2] ** 2 * shape[3]
        ms = do_bench(lambda qkv=qkv: F.scaled_dot_product_attention(*qkv), return_mode="median")
        cudnn = {"shape": name, "kernel": "cudnn", "ms": ms, "tflops": flop / ms / 1e9,
                 "err": rel(F.scaled_dot_product_attention(*qkv), ref)}  # fmt: skip
        res["rows"].append(cudnn)
        print(f"{name} cuDNN: {ms:.3f} ms {cudnn['tflops']:.0f} TFLOP/s err {cudnn['err']:.1e}")
        for kernel, bm, bn, w, st, flag in configs:
            kw = dict(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
            if kernel == "tma":
                cfg = (bm, bn, w, st)
                fn, kw = (lambda q, k, v, cfg=cfg: ak._launch(q, k, v, cfg)), dict(kw)
            else:
                fn, kw["half_exp"], kw["pipe"] = attention, flag, kernel == "pipe"
            try:
                call_kw = {} if kernel == "tma" else kw
                out = fn(*qkv, **call_kw)
                torch.cuda.synchronize()
                ms = do_bench(
                    lambda fn=fn, kw=call_kw, qkv=qkv: fn(*qkv, **kw), return_mode="median"
                )
            except Exception as exc:  # out of shared memory or registers for this tile shape
                res["rows"].append({"shape": name, "kernel": kernel, **kw, "error": str(exc)[:300]})
                continue
            row = {"shape": name, "kernel": kernel, **kw, "ms": ms, "tflops": flop / ms / 1e9,
                   "err": rel(out, ref), "vs_cudnn": cudnn["ms"] / ms}  # fmt: skip
            res["rows"].append(row)
            if args.out:
                args.out.write_text(json.dumps(res, indent=1))
        best = sorted(
            (r for r in res["rows"] if r["shape"] == name and "vs_cudnn" in r),
            key=lambda r: r["ms"],
        )[:8]
        for r in best:
            flags = {k: r[k] for k in ("half_exp", "pipe", "warp_specialize") if k in r}
            print(
                f"{name} triton {r['kernel']} bm{r['block_m']} bn{r['block_n']} w{r['num_warps']} "
                f"s{r['num_stages']} {flags}: {r['ms']:.3f} ms "
                f"{r['tflops']:.0f} TFLOP/s err {r['err']:.1e} ({r['vs_cudnn']:.2f}x cuDNN)"
            )
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
