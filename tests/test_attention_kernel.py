"""Our attention kernel (laser_plugin.models.blocks.attention_kernel) and how the fast paths use it.

The kernel itself needs a Hopper GPU; here it runs in Triton's CPU interpreter (tests marked
``triton``, in the CI environment that has Triton), on shapes with ragged last key blocks, several
batches and heads, and q/k/v as strided views of one packed qkv tensor, against fp32 SDPA. On the
GPU, ``benchmarks/attention_triton.py`` and ``benchmarks/speed.py`` compare it with cuDNN and fp32.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laser_plugin.models import pi3
from laser_plugin.models.blocks import attention_kernel as ak
from laser_plugin.models.fast import accelerate

ROOT = Path(__file__).resolve().parents[1]


def test_custom_op_on_the_cpu_is_sdpa_with_the_output_in_token_major_layout():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g) for _ in range(3))
    out = ak.attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert out.transpose(1, 2).is_contiguous()  # (B, N, H, D) storage: no copy before proj
    assert not ak.available(torch.device("cpu")) and not ak.supports(q, k, v)


def test_fast_path_with_our_attention_compiled_equals_reference():
    """The custom op inside compiled blocks (fake implementation, strides included) computes the
    reference function; on the CPU the op runs SDPA, so fp32 results match closely."""
    ref = pi3.make_model(size="tiny", random_init=True, seed=3)
    fast = accelerate(
        pi3.make_model(size="tiny", random_init=True, seed=3),
        dtype=torch.float32,
        compile=True,
        attention="laser",
    )
    assert fast.attention_kernel == "laser"
    assert all(blk.attn.kernel == "laser" for blk in fast._blocks())
    w = torch.rand(6, 3, 42, 70, generator=torch.Generator().manual_seed(5))
    a, b = ref(w.clone()), fast(w.clone())
    for key in ("depth", "conf", "cam_to_world", "intrinsics"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-4, atol=1e-5)


def test_auto_choice_and_bad_names():
    fast = accelerate(pi3.make_model(size="tiny", random_init=True, seed=3), attention="auto")
    assert fast.attention_kernel == "sdpa"  # no Hopper GPU here
    assert all(blk.attn.kernel == "sdpa" for blk in fast._blocks())
    fast.enable(attention="laser")
    assert all(blk.attn.kernel == "laser" for blk in fast._blocks())
    with pytest.raises(ValueError, match="unknown attention kernel"):
        accelerate(pi3.make_model(size="tiny", random_init=True, seed=3), attention="flash")


INTERPRETED = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from laser_plugin.models.blocks import attention_kernel as ak

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    g = torch.Generator().manual_seed(0)
    # (B, N, H, D): ragged last key blocks (150 = 2 x 64 + 22), several batches (descriptor
    # bounds per batch), the long-sequence tile configuration (4100 tokens: 128-row tiles).
    for b, n, h, d in [(2, 150, 3, 64), (1, 4100, 1, 64), (1, 70, 2, 128)]:
        qkv = torch.randn(b, n, 3, h, d, generator=g)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # strided views, as the qkv projection gives
        ref = F.scaled_dot_product_attention(q, k, v)
        out = ak._launch(q, k, v)
        assert out.shape == ref.shape and out.transpose(1, 2).is_contiguous()
        err = rel(out, ref)
        assert err < 1e-5, (b, n, h, d, err)
        # half-precision storage: within its rounding of the fp32 result (fp16: numpy, which the
        # interpreter computes with, has no bf16; bf16 is checked on the GPU by the benchmarks)
        lo = ak._launch(*(t.to(torch.float16) for t in (q, k, v)))
        err_lo = rel(lo.float(), ref)
        assert 0 < err_lo < 1e-2, (b, n, h, d, err_lo)
        print("ok", b, n, h, d, err, err_lo)
    """
)


@pytest.mark.triton
def test_kernel_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 3, proc.stdout


def test_a_failing_kernel_falls_back_to_sdpa_once_with_a_warning(monkeypatch):
    """If our kernel cannot run on some GPU/Triton combination, the stream goes on with SDPA."""
    calls = []

    def broken(q, k, v, **kw):
        calls.append(1)
        raise RuntimeError("PassManager::run failed\nmore detail")

    monkeypatch.setattr(ak, "supports", lambda q, k, v: True)
    monkeypatch.setattr(ak, "_launch", broken)
    monkeypatch.setattr(ak, "disabled", None)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="PassManager::run failed"):
        out = ak.attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    ak.attention(q, k, v)  # no second try, no second warning
    assert calls == [1] and ak.disabled.startswith("RuntimeError")


def _run_ptx(program: str, x: np.ndarray) -> np.ndarray:
    """Execute the straight-line PTX of ``_mixed_exp2_asm`` on fp32 lanes with numpy (the few
    instructions it uses, with their PTX semantics: fp32 rounding, bit moves, 32-bit integer
    wrap-around), so the program text itself is checked, not a re-statement of it."""
    regs: dict[str, np.ndarray] = {f"${i + 4}": x[:, i].astype(np.float32) for i in range(4)}

    def val(tok: str) -> np.ndarray:
        if tok.startswith("0f"):
            return np.full(len(x), np.uint32(int(tok[2:], 16))).view(np.float32)
        return regs[tok] if tok in regs else np.full(len(x), np.int64(tok))

    f32, u32 = (lambda a: np.asarray(a).view(np.float32)), (lambda a: np.asarray(a).view(np.uint32))
    for line in program.replace(";", "\n").splitlines():
        line = line.strip()
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dst, *src = [t.strip() for t in rest.split(",")]
        a = [val(t) for t in src]
        with np.errstate(over="ignore"):
            if op.startswith("ex2"):
                out = np.exp2(a[0].astype(np.float32))
            elif op.startswith("max"):
                out = np.maximum(a[0], a[1]).astype(np.float32)
            elif op.startswith("add.rn") or op.startswith("sub.rn"):
                sign = 1 if op.startswith("add") else -1
                out = a[0].astype(np.float32) + np.float32(sign) * a[1].astype(np.float32)
            elif op.startswith("fma"):
                prod = a[0].astype(np.float64) * a[1].astype(np.float64) + a[2].astype(np.float64)
                out = prod.astype(np.float32)  # exact product, one rounding
            elif op == "mov.b32":
                out = a[0].astype(np.float32) if a[0].dtype != np.uint32 else f32(a[0])
                out = u32(out) if dst in ("e", "b") else f32(u32(out))
            elif op == "shl.b32":
                out = (a[0].astype(np.uint64) << np.uint64(int(src[1]))) & 0xFFFFFFFF
                out = out.astype(np.uint32)
            elif op == "add.s32":
                out = (u32(a[0]).astype(np.uint64) + u32(a[1]).astype(np.uint64)) & 0xFFFFFFFF
                out = out.astype(np.uint32)
            else:
                raise AssertionError(f"unexpected PTX instruction {op}")
        regs[dst] = out
    return np.stack([f32(regs[f"${i}"]) for i in range(4)], 1)


@pytest.mark.parametrize("emulated", [1, 2])
def test_polynomial_exponentials_match_exp2_within_bf16(emulated):
    """The FMA-unit exponentials of the kernel (its PTX, executed with fp32 semantics): 2**x to a
    relative 3e-4 over the softmax's range (x <= 0 down to the clamp), far under bf16's 3.9e-3,
    and 2**x = 0 territory (x = -inf, masked scores) gives at most 2**-126."""
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.exponential(8.0, 400_000), -rng.uniform(0, 125, 40_000), [0.0]])
    x = x[: len(x) // 4 * 4].astype(np.float32).reshape(-1, 4)
    y = _run_ptx(ak._mixed_exp2_asm(emulated), x)
    ref = np.exp2(x.astype(np.float64))
    rel_err = np.abs(y / ref - 1)
    poly = slice(4 - emulated, 4)
    assert rel_err[:, poly].max() < 3e-4
    assert rel_err[:, : 4 - emulated].max() < 1e-6  # the ex2 lanes (numpy's exp2 here)
    tiny = _run_ptx(ak._mixed_exp2_asm(emulated), np.full((1, 4), -np.inf, np.float32))
    assert np.all(tiny[:, poly] <= 2.0**-126) and np.all(tiny[:, poly] >= 0)


HOPPER = torch.cuda.is_available() and ak.available(torch.device("cuda"))


@pytest.mark.skipif(not HOPPER, reason="the compiled kernel needs a Hopper GPU (run on the device)")
@pytest.mark.parametrize("emulated", [0, 1, 2])
def test_compiled_kernel_on_hopper_against_fp32(emulated):
    """bf16 q/k/v in the qkv projection's layout, the global and frame shape classes, ragged
    last key blocks: within bf16 rounding of fp32 attention with any share of FMA-unit
    exponentials."""
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, n, h, d in [(1, 4100, 4, 64), (6, 782, 16, 64), (2, 300, 2, 128)]:
        qkv = torch.randn(b, n, 3, h, d, device="cuda", generator=g).to(torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        ref = F.scaled_dot_product_attention(*(t.float() for t in (q, k, v)))
        out = ak._launch(q, k, v, emulated=emulated)
        err = float((out.float() - ref).norm() / ref.norm())
        assert err < 1e-2, (b, n, h, d, emulated, err)
