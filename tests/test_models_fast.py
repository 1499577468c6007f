"""Fast inference path (laser_plugin.models.fast): same function as the reference path.

Tiny random networks on the CPU. In fp32 the fast path (restructured trunk, rotary tables passed as
tensors, overlap-frame encoder tokens reused) must give the reference outputs; in bf16 it must stay
within bf16 rounding of them.
"""

import pytest
import torch

from laser_plugin.models import pi3, vggt
from laser_plugin.models.fast import FrameTokenCache, accelerate

MODULES = {"pi3": pi3, "vggt": vggt}


def _pair(name, **kw):
    mod = MODULES[name]
    ref = mod.make_model(size="tiny", random_init=True, seed=3)
    fast = accelerate(mod.make_model(size="tiny", random_init=True, seed=3), **kw)
    return ref, fast


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("graph_heads", [False, True])
@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_fp32_fast_path_with_token_cache_equals_reference(name, graph_heads):
    ref, fast = _pair(name, dtype=torch.float32, graph_heads=graph_heads)
    frames = torch.rand(14, 3, 42, 70, generator=torch.Generator().manual_seed(0))
    for start in (0, 4, 8):  # windows of 6 frames overlapping by 2
        w = frames[start : start + 6]
        a, b = ref(w.clone()), fast(w.clone())
        # Place descriptors too: pooled from the cached overlap tokens in the fast path.
        for key in ("depth", "conf", "cam_to_world", "intrinsics", "descriptors"):
            torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-5, atol=1e-6)
    assert fast.cache.hits == 4 and fast.cache.misses == 14


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_bf16_fast_path_is_close_to_fp32(name):
    ref, fast = _pair(name, dtype=torch.bfloat16, dpt_dtype=torch.bfloat16)
    w = torch.rand(5, 3, 42, 70, generator=torch.Generator().manual_seed(1))
    a, b = ref(w.clone()), fast(w.clone())
    assert next(fast.net.parameters()).dtype in (torch.bfloat16, torch.float32)
    assert _rel(b.depth, a.depth) < 3e-2
    assert _rel(b.cam_to_world, a.cam_to_world) < 3e-2
    assert _rel(b.depth, a.depth) > 0  # it really ran in bf16


def test_changed_frame_is_not_served_from_the_cache():
    ref, fast = _pair("pi3", dtype=torch.float32)
    frames = torch.rand(6, 3, 42, 70, generator=torch.Generator().manual_seed(2))
    fast(frames.clone())
    edited = frames.clone()
    edited[1, :, 20, 30] += 0.25  # one pixel that the strided key may not sample
    b = fast(edited)
    assert fast.cache.hits == 5  # frame 1 was recomputed
    torch.testing.assert_close(b.depth, ref(edited).depth, rtol=1e-5, atol=1e-6)


def test_cache_holds_only_the_latest_window():
    cache = FrameTokenCache()
    a = torch.rand(4, 3, 8, 8)
    cache.store(a, cache.keys(a), torch.rand(4, 2, 3))
    b = torch.rand(4, 3, 8, 8)
    cache.store(b, cache.keys(b), torch.rand(4, 2, 3))
    assert all(t is None for t in cache.lookup(a, cache.keys(a)))
    assert all(t is not None for t in cache.lookup(b, cache.keys(b)))


def test_make_model_fast_flag_returns_the_fast_path():
    m = pi3.make_model(size="tiny", random_init=True, fast=True, dtype="fp32")
    assert m.name == "pi3" and m.cache is not None and m.input_size(100, 100)[0] % 14 == 0
    with pytest.raises(TypeError):
        accelerate(object())


def test_frame_keys_reuse_tokens_like_the_content_cache():
    """A worker passes (stream, index) keys: overlap tokens are reused without content checks and
    the outputs equal the reference."""
    ref, fast = _pair("pi3", dtype=torch.float32)
    frames = torch.rand(10, 3, 42, 70, generator=torch.Generator().manual_seed(4))
    for start in (0, 4):
        w = frames[start : start + 6]
        b = fast(w.clone(), frame_keys=[(1, i) for i in range(start, start + 6)])
        torch.testing.assert_close(b.depth, ref(w.clone()).depth, rtol=1e-5, atol=1e-6)
    assert fast.cache.hits == 2 and fast.cache.misses == 10
    with pytest.raises(ValueError):
        fast(frames[:6], frame_keys=[(1, 0)])


def test_compiled_vggt_fast_path_equals_reference():
    """Compiled blocks and the compiled channels-last depth head, run in 10-frame chunks (the
    GPU default when compiled), compute the reference function (fp32, Inductor on the CPU)."""
    ref, fast = _pair("vggt", dtype=torch.float32, compile=True)
    assert fast.dpt_chunk == 10
    head = fast.net.depth_head
    assert head.scratch.output_conv1.weight.is_contiguous(memory_format=torch.channels_last)
    w = torch.rand(12, 3, 42, 70, generator=torch.Generator().manual_seed(4))  # chunks 10 + 2
    a, b = ref(w.clone()), fast(w.clone())
    for key in ("depth", "conf", "cam_to_world", "intrinsics"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_fused_gelu_fast_path_equals_reference(name):
    """fc1 + GELU as one product with a GELU epilogue (exact GELU on the CPU): same function."""
    ref, fast = _pair(name, dtype=torch.float32, fused_gelu=True)
    assert all(blk.mlp.fused_gelu for blk in fast._blocks())
    w = torch.rand(5, 3, 42, 70, generator=torch.Generator().manual_seed(6))
    a, b = ref(w.clone()), fast(w.clone())
    for key in ("depth", "conf", "cam_to_world", "intrinsics"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_encode_batch_runs_one_encoder_shape_and_changes_no_output(name):
    """With compiled blocks a runner fixes the encoder's batch (issue 23: a window with a new
    count of new frames compiled again mid-run). Chunking and padding must give the tokens of
    one unchunked call: windows of 6 overlapping by 2 bring 6, 4, 4 and (a tail) 1 new frames."""
    ref, fast = _pair(name, dtype=torch.float32)
    # compile=True switches the chunking on; the blocks were built eager (no compile on the CPU
    # here), so what this checks is the chunking, not Inductor.
    fast.options.compile, fast.options.encode_batch = True, 4
    encoder = fast.net.encoder if name == "pi3" else fast.net.aggregator.patch_embed
    sizes = []
    hook = encoder.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    frames = torch.rand(13, 3, 42, 70, generator=torch.Generator().manual_seed(5))
    try:
        for start in (0, 4, 7):  # the last window re-uses 5 frames, as the scheduler's tail does
            w = frames[start : start + 6]
            a, b = ref(w.clone()), fast(w.clone())
            for key in ("depth", "conf", "cam_to_world", "intrinsics"):
                torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-5, atol=1e-6)
    finally:
        hook.remove()
    assert sizes and set(sizes) == {4}, sizes  # 6 -> 4 + (2 padded to 4), 4, 1 padded to 4
