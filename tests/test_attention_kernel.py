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

    def broken(q, k, v):
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
