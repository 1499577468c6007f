"""Our attention forward kernel (Triton, Hopper's bulk tensor copies), for the fast paths.

Plain softmax(q kᵀ / √D) v, non-causal, no mask, one pass over the keys with an online softmax
(running row maximum and row sum in fp32; probabilities rounded to the value dtype for the second
product). Tiles move by tensor descriptors over (B, N, H, D) storage, which is the layout the qkv
projection writes and the output projection reads, so neither q/k/v nor the output needs a
transposing copy.

Why: at π³/VGGT's shapes (head dimension 64) it is faster than cuDNN's attention on both the
global-attention and the frame shape, and both networks are faster with it (measured by
``benchmarks/attention_triton.py``; ``benchmarks/DECISIONS.md``, "our Triton attention kernel").
It is used by the fast paths only where it can run (CUDA, compute capability ≥ 9.0, Triton
importable, bf16/fp16, head dimension 64 or 128); everything else goes through
``torch.nn.functional.scaled_dot_product_attention``.

Registered as the custom op ``laser_plugin::attention`` so that ``torch.compile`` treats it as one
opaque call (with a shape-and-stride-exact fake implementation) and CUDA graphs capture its launch.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor

LOG2E = 1.4426950408889634

try:  # Triton ships with PyTorch's CUDA builds; the CPU wheel has none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch build
    triton = None


@functools.cache
def available(device: torch.device) -> bool:
    """The kernel can run on ``device``: CUDA, Hopper or newer, Triton and descriptors present."""
    if triton is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Shapes and dtypes the kernel serves (the caller falls back to SDPA otherwise)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or not (q.dtype == k.dtype == v.dtype):
        return False
    return q.shape[-1] in (64, 128) and q.shape[2] >= 64 and available(q.device)


if triton is not None:

    @triton.jit
    def _softmax_step(s, m_i, l_i, acc, v, qk_scale):
        """Fold one key block's raw scores s (BLOCK_M, BLOCK_N) and values v (BLOCK_N, D) into
        the running row maximum m_i, row sums l_i and output acc (online softmax)."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # scores to base-2 units minus the running maximum: one multiply-add per score
        p = tl.math.exp2(s * qk_scale - (m_new * qk_scale)[:, None])
        alpha = tl.math.exp2((m_i - m_new) * qk_scale)
        l_i = l_i * alpha + tl.sum(p, 1)
        return m_new, l_i, tl.dot(p.to(v.dtype), v, acc * alpha[:, None])

    @triton.jit
    def _attn_fwd(
        q_desc, k_desc, v_desc, o_desc,
        qk_scale,
        H, N, n_full,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_M query rows of one (batch, head), all keys streamed.

        Descriptors are 4-D over (B, N, H, D): loads past N fill zeros and stores past N are
        clipped, so only the ragged last key block needs a mask (its scores set to -inf).
        ``n_full``: the keys in whole blocks."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        row0 = pid_m * BLOCK_M
        q = q_desc.load([b, row0, h, 0]).reshape(BLOCK_M, D)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, n_full, BLOCK_N):
            k = k_desc.load([b, start, h, 0]).reshape(BLOCK_N, D)
            v = v_desc.load([b, start, h, 0]).reshape(BLOCK_N, D)
            m_i, l_i, acc = _softmax_step(tl.dot(q, k.T), m_i, l_i, acc, v, qk_scale)
        if n_full < N:
            cols = n_full + tl.arange(0, BLOCK_N)
            k = k_desc.load([b, n_full, h, 0]).reshape(BLOCK_N, D)
            v = v_desc.load([b, n_full, h, 0]).reshape(BLOCK_N, D)
            s = tl.where((cols < N)[None, :], tl.dot(q, k.T), float("-inf"))
            m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, qk_scale)
        out = (acc / l_i[:, None]).to(o_desc.dtype)
        o_desc.store([b, row0, h, 0], out.reshape(1, BLOCK_M, 1, D))


def tile_config(n: int) -> tuple[int, int, int, int]:
    """(block_m, block_n, warps, stages): the fastest of the tile sweep for each shape class
    (long global sequences: 128-row query tiles on 8 warps; per-frame ~800 tokens: 64-row tiles
    on 4 warps, several programs per SM)."""
    return (128, 64, 8, 3) if n >= 4096 else (64, 64, 4, 3)


def _bnhd(t: Tensor) -> Tensor:
    """(B, H, N, D) -> its (B, N, H, D) view, copied only if a descriptor cannot address it."""
    x = t.transpose(1, 2)
    aligned = x.stride(-1) == 1 and all(s * x.element_size() % 16 == 0 for s in x.stride()[:-1])
    return x if aligned and x.data_ptr() % 16 == 0 else x.contiguous()


def _launch(
    q: Tensor, k: Tensor, v: Tensor, config: tuple[int, int, int, int] | None = None
) -> Tensor:
    """Run the kernel; ``config`` overrides :func:`tile_config` (the benchmark sweeps it)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    b, h, n, d = q.shape
    block_m, block_n, warps, stages = config or tile_config(n)
    out = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype)

    def desc(x: Tensor, rows: int) -> TensorDescriptor:
        return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, 1, d])

    grid = (triton.cdiv(n, block_m), b * h)
    _attn_fwd[grid](
        desc(_bnhd(q), block_m), desc(_bnhd(k), block_n), desc(_bnhd(v), block_n),
        desc(out, block_m),
        LOG2E / math.sqrt(d), h, n, (n // block_n) * block_n,
        D=d, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out.transpose(1, 2)


disabled: str | None = None
"""Why the kernel was switched off in this process (it failed once), or None."""


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    global disabled
    if disabled is None and supports(q, k, v):
        try:
            return _launch(q, k, v)
        except Exception as exc:  # e.g. a Triton build that cannot compile it for this GPU
            disabled = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(
                f"laser attention kernel failed ({disabled}); using PyTorch's attention",
                RuntimeWarning,
                stacklevel=2,
            )
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4

    @torch.library.custom_op("laser_plugin::attention", mutates_args=())
    def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """softmax(q kᵀ / √D) v for (B, H, N, D) tensors; the result is a (B, H, N, D) view of
        (B, N, H, D) storage. Our kernel where :func:`supports` says so, SDPA otherwise."""
        return _attention(q, k, v)

    @attention.register_fake
    def _(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, h, n, d = q.shape
        return q.new_empty(b, n, h, d).transpose(1, 2)

else:  # pragma: no cover - older torch: no custom ops, so no kernel inside compiled code
    triton = None

    def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _attention(q, k, v)
