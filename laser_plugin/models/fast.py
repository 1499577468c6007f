"""Fast inference paths for the π³ and VGGT backends (GPU streaming; same networks, same weights).

What changes against the reference path (``Pi3Model.__call__`` / ``VGGTModel.__call__``: fp32
weights under bf16 autocast, eager):

- trunk weights stored in bf16 and run without autocast; the output heads that upstream runs in
  fp32 keep fp32 weights and fp32 inputs (π³: point/conf/camera heads; VGGT: camera head; the VGGT
  depth head optionally bf16). The DINOv2 position table stays fp32 (interpolated as upstream).
- per-frame encoder tokens are cached by frame content, so the overlap frames of a window reuse
  the tokens computed for them in the previous window (both encoders see one frame at a time, so
  this is exact up to the batch size the matrix products run at);
- rotary tables are computed once per input size and passed as tensors (no host-device syncs);
- optional regional ``torch.compile`` (one compiled transformer block reused by every block; VGGT's
  depth head compiled too, channels-last) and one CUDA graph for the whole alternating-attention
  trunk and decoders;
- on Hopper GPUs, our attention kernel (:mod:`laser_plugin.models.blocks.attention_kernel`) in
  place of SDPA, and every MLP's first product with cuBLASLt's GELU epilogue.

Every fast path is checked against fp32 on the same weights and inputs by ``benchmarks/speed.py``
(‖a−b‖/‖b‖ of depth and poses); the tiny-size CPU tests check the cache and the restructuring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from laser_plugin.models.blocks.place import place_descriptors
from laser_plugin.models.blocks.runtime import check_images
from laser_plugin.models.blocks.transformer import Rope2D, grid_positions
from laser_plugin.models.convert import (
    intrinsics_from_points,
    pi3_to_prediction,
    vggt_to_prediction,
)
from laser_plugin.types import WindowPrediction


@dataclass
class FastOptions:
    """Switches of the fast path (each is measured separately by ``benchmarks/speed.py``)."""

    dtype: torch.dtype = torch.bfloat16
    """Storage and compute dtype of the transformer weights (fp32 keeps the reference math)."""
    cache_encoder: bool = True
    """Reuse the overlap frames' encoder tokens from the previous window."""
    compile: bool = False
    """Regional ``torch.compile`` of the transformer blocks (cold compile: tens of seconds), and
    of VGGT's depth head (channels-last)."""
    compile_mode: str | None = None
    """``torch.compile`` mode of the blocks: None (Inductor's default) or e.g.
    ``"max-autotune-no-cudagraphs"`` (Triton matrix products with fused epilogues; minutes of
    autotuning on the first run, cached on disk by Inductor afterwards)."""
    encode_batch: int | None = None
    """Frames per encoder call with ``compile`` (None: as many as a window brings). Every
    new batch size is a compile (seconds, tens cold) in the middle of the run: a stream's first
    window brings L new frames, the others L - O, the last fewer. A runner sets this to the
    window stride L - O, so the encoder compiles one shape; frames are encoded in chunks of
    that many, the last padded with copies of its last frame (frames are encoded independently:
    the padding changes no real frame's tokens)."""
    cuda_graph: bool = False
    """Capture the trunk and decoders in one CUDA graph per input shape (CUDA only)."""
    graph_heads: bool = False
    """Put the output heads and the conversion to depth/conf/intrinsics (and VGGT's cameras) in
    the graph too, so a window costs the host almost no Python (π³'s 3x3 SVD stays outside: it
    synchronises). Outputs are copied out of the graph's buffers before they are returned."""
    attention: str = "auto"
    """Attention kernel of the blocks: "auto" (our Triton kernel where it can run: CUDA, Hopper or
    newer, head dimension 64/128; SDPA elsewhere), "laser" (same, stated), or "sdpa"."""
    fused_gelu: bool = True
    """MLPs: fc1 and its GELU as one product with cuBLASLt's GELU epilogue (no pass over the 4x
    hidden layer: faster π³ and VGGT windows, errors against fp32 unchanged;
    ``benchmarks/DECISIONS.md``, "fc1 with GELU in the product's epilogue")."""
    dpt_dtype: torch.dtype | None = None
    """VGGT depth-head dtype (None: the trunk dtype on CUDA, fp32 on the CPU)."""
    dpt_chunk: int | None = None
    """VGGT depth head: frames per chunk (smaller bounds peak memory). None: 10 when the head is
    compiled (its fused kernels keep 10 frames within the eager head's 4-frame memory), else 4."""


class FrameTokenCache:
    """Encoder tokens of the latest window's frames, keyed by frame content.

    A key is the bytes of a strided sample of the frame; a hit is confirmed by comparing the whole
    frame, so a changed frame never reuses stale tokens. Only host (CPU) frames are cached: the
    comparison of device frames would force a host-device sync.
    """

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[Tensor, Tensor]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def keys(images: Tensor) -> list[bytes]:
        flat = images.reshape(images.shape[0], -1)
        step = max(1, flat.shape[1] // 509)
        sample = flat[:, ::step].contiguous().numpy()
        return [row.tobytes() for row in sample]

    def lookup(self, images: Tensor, keys: Sequence[bytes]) -> list[Tensor | None]:
        """images (L, 3, H, W) on the CPU -> cached (h*w, C) tokens per frame, or None."""
        found: list[Tensor | None] = []
        for j, key in enumerate(keys):
            entry = self._entries.get(key)
            if entry is not None and torch.equal(entry[0], images[j]):
                found.append(entry[1])
            else:
                found.append(None)
        hits = sum(t is not None for t in found)
        self.hits += hits
        self.misses += len(found) - hits
        return found

    def store(self, images: Tensor, keys: Sequence[bytes], tokens: Tensor) -> None:
        """Keep this window's frames only (bounded memory): tokens (L, h*w, C)."""
        self._entries = {key: (images[j], tokens[j]) for j, key in enumerate(keys)}

    def lookup_keys(self, keys: Sequence[object]) -> list[Tensor | None]:
        """Cached tokens by caller-given frame keys (e.g. (stream, frame index)), no content check:
        for frames already on the device, where comparing contents would synchronise."""
        found: list[Tensor | None] = []
        for key in keys:
            entry = self._entries.get(("key", key))
            found.append(None if entry is None else entry[1])
        hits = sum(t is not None for t in found)
        self.hits += hits
        self.misses += len(found) - hits
        return found

    def store_keys(self, keys: Sequence[object], tokens: Tensor) -> None:
        """Keep this window's tokens under caller-given keys (bounded like :meth:`store`)."""
        self._entries = {("key", key): (None, tokens[j]) for j, key in enumerate(keys)}

    def clear(self) -> None:
        self._entries = {}


def compile_blocks(blocks: Sequence[nn.Module], mode: str | None = None) -> None:
    """Regional compilation: every block shares one compiled forward (per shape and config)."""
    import torch._dynamo

    # One code object (Block.forward) serves many blocks and shapes: allow enough cache entries,
    # and keep every shape static (frame and global attention differ in both token dims, which
    # would otherwise turn the shared graph dynamic after the second shape).
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 512
        )
    for blk in blocks:
        blk.compile(mode=mode)


class GraphedTrunk:
    """Runs ``fn(x)`` through one CUDA graph per input shape (captured on first use).

    The outputs are static buffers overwritten by the next replay: consume them (on the same
    stream) before the next call. Falls back to plain calls if capture fails.
    """

    def __init__(self, fn: Callable[[Tensor], object]) -> None:
        self.fn = fn
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, object]] = {}
        self.failed: str | None = None

    def __call__(self, x: Tensor):
        if self.failed is not None:
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(x)
            except Exception as exc:  # keep running (and say why) rather than fail the stream
                self.failed = f"{type(exc).__name__}: {exc}"
                return self.fn(x)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, x: Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles, autotunes and allocates outside the capture
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (alignment) may use the GPU while this thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        return graph, static_in, static_out


def _rope_tables(h: int, w: int, special: int, n: int, freq: float, head_dim: int, dtype, device):
    pos = grid_positions(h, w, special, device)
    frame = Rope2D(pos, freq).tables(head_dim, dtype, device)
    glob = Rope2D(pos.repeat(1, n, 1), freq).tables(head_dim, dtype, device)
    return frame, glob


class _FastBase:
    """Shared plumbing: weight casting, encoder-token cache, compile and graph switches."""

    name = "fast"
    patch = 14
    accepts_frame_keys = True
    """A worker process may pass ``frame_keys`` (see :meth:`_encode_frames`)."""

    def __init__(self, model, options: FastOptions) -> None:
        self.model = model
        self.net = model.net
        self.device = model.device
        self.options = options
        self.cache = FrameTokenCache() if options.cache_encoder else None
        self._tables: dict[tuple, tuple] = {}
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        self._hw: tuple[int, int] = (0, 0)
        self.trunk_runner: Callable = self._make_runner()
        self.attention_kernel = self._configure_blocks()

    def _configure_blocks(self) -> str:
        """Set every block's attention kernel from ``options.attention`` (and its MLP's fused
        GELU from ``options.fused_gelu``); returns the attention choice."""
        from laser_plugin.models.blocks.attention_kernel import available

        choice = self.options.attention
        if choice not in ("auto", "laser", "sdpa"):
            raise ValueError(f"unknown attention kernel {choice!r} (auto, laser or sdpa)")
        if choice == "auto":
            choice = "laser" if available(self.device) else "sdpa"
        for blk in self._blocks():
            blk.attn.kernel = choice
            blk.mlp.fused_gelu = self.options.fused_gelu
        return choice

    def _make_runner(self) -> Callable:
        """The part of a window that runs as one unit: trunk (+ heads), graphed on CUDA."""
        fn = self._trunk_and_heads if self.options.graph_heads else self._trunk
        if self.options.cuda_graph and self.device.type == "cuda":
            return GraphedTrunk(fn)
        return fn

    def _trunk_and_heads(self, tokens: Tensor):
        raise NotImplementedError

    def enable(
        self,
        *,
        compile: bool | None = None,
        cuda_graph: bool | None = None,
        cache_encoder: bool | None = None,
        graph_heads: bool | None = None,
        attention: str | None = None,
        fused_gelu: bool | None = None,
    ) -> None:
        """Switch features on (or the cache off) after construction, e.g. to measure each step."""
        changed = (attention is not None and attention != self.options.attention) or (
            fused_gelu is not None and fused_gelu != self.options.fused_gelu
        )
        if changed:
            self.options.attention = attention or self.options.attention
            if fused_gelu is not None:
                self.options.fused_gelu = fused_gelu
            self.attention_kernel = self._configure_blocks()
            # Captured graphs hold the old kernel's launches; the compiled blocks recompile
            # by themselves (their guards read the attribute).
            self.trunk_runner = self._make_runner()
        if cache_encoder is not None:
            self.options.cache_encoder = cache_encoder
            self.cache = FrameTokenCache() if cache_encoder else None
        if compile and not self.options.compile:
            self.options.compile = True
            self._compile()
        if graph_heads is not None and graph_heads != self.options.graph_heads:
            self.options.graph_heads = graph_heads
            self.trunk_runner = self._make_runner()
        if cuda_graph and not self.options.cuda_graph:
            self.options.cuda_graph = True
            self.trunk_runner = self._make_runner()

    def _blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _compile(self) -> None:
        compile_blocks(self._blocks(), self.options.compile_mode)

    # The wrapped model's optional protocol attributes.
    @property
    def license(self) -> str:
        return self.model.license

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.model.input_size(height, width)

    def preprocess(self, image: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
        return self.model.preprocess(image, size)

    def reset(self) -> None:
        """Forget cached tokens (e.g. between streams; content keys make this optional)."""
        if self.cache is not None:
            self.cache.clear()

    def _encode_frames(
        self,
        images: Tensor,
        encode: Callable[[Tensor], Tensor],
        frame_keys: Sequence[object] | None = None,
    ) -> Tensor:
        """images (L, 3, H, W) float in [0, 1] -> (L, h*w, C) tokens, reusing cached frames.

        ``frame_keys``: one hashable per frame that identifies its content for the caller (a
        worker process passes (stream, frame index)); frames on the device are then cached
        too. Without keys only host frames are cached, keyed and checked by content."""
        by_key = self.cache is not None and frame_keys is not None
        if by_key and len(frame_keys) != images.shape[0]:
            raise ValueError(f"{len(frame_keys)} frame keys for {images.shape[0]} frames")
        use_cache = self.cache is not None and not by_key and images.device.type == "cpu"
        keys = FrameTokenCache.keys(images) if use_cache else []
        if by_key:
            found = self.cache.lookup_keys(frame_keys)
        elif use_cache:
            found = self.cache.lookup(images, keys)
        else:
            found = [None] * images.shape[0]
        new = [j for j, t in enumerate(found) if t is None]
        if new:
            sub = images if len(new) == images.shape[0] else images[new]
            x = sub.to(self.device, non_blocking=True)
            x = ((x - self.mean) / self.std).to(self.options.dtype)
            enc = self._encode_in_batches(encode, x)
            for k, j in enumerate(new):
                found[j] = enc[k]
        tokens = torch.stack(found) if len(new) != len(found) else enc
        if use_cache:
            self.cache.store(images, keys, tokens)
        elif by_key:
            self.cache.store_keys(frame_keys, tokens)
        return tokens

    def _encode_in_batches(self, encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """x (n, 3, H, W) -> (n, h*w, C): in chunks of ``options.encode_batch`` frames."""
        b = self.options.encode_batch
        n = x.shape[0]
        if not b or n == b or not self.options.compile:  # eager: any batch size costs nothing
            return encode(x)
        pad = (-n) % b
        if pad:
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        return torch.cat([encode(chunk) for chunk in x.split(b)])[:n]

    def _trunk(self, tokens: Tensor):
        raise NotImplementedError

    def _cast(self, modules: Sequence[nn.Module], keep_fp32: Sequence[nn.Parameter] = ()) -> None:
        keep = {id(p): p.data.clone() for p in keep_fp32}
        for m in modules:
            m.to(self.options.dtype)
        for p in keep_fp32:
            p.data = keep[id(p)]


class FastPi3(_FastBase):
    """π³ fast path; call with (L, 3, H, W) float in [0, 1] -> :class:`WindowPrediction`."""

    name = "pi3"

    def __init__(self, model, options: FastOptions) -> None:
        super().__init__(model, options)
        net = self.net
        # Trunk in the fast dtype; the position table and the three heads stay fp32.
        self._cast(
            [net.encoder, net.point_decoder, net.conf_decoder, net.camera_decoder, *net.decoder],
            keep_fp32=[net.encoder.pos_embed],
        )
        net.register_token.data = net.register_token.data.to(options.dtype)
        if options.compile:
            self._compile()

    def _blocks(self) -> list[nn.Module]:
        net = self.net
        return [
            *net.encoder.blocks,
            *net.decoder,
            *net.point_decoder.blocks,
            *net.conf_decoder.blocks,
            *net.camera_decoder.blocks,
        ]

    def _trunk(self, tokens: Tensor):
        n = tokens.shape[0]
        frame, glob = self._tables[(n, tokens.shape[1])]
        return self.net.decode(tokens, 1, n, frame, glob)

    def __call__(
        self, images: Tensor, frame_keys: Sequence[object] | None = None
    ) -> WindowPrediction:
        images = check_images(images, self.patch)
        n, _, height, width = images.shape
        h, w = height // self.patch, width // self.patch
        cfg = self.net.cfg
        key = (n, h * w)
        if key not in self._tables:
            self._tables[key] = _rope_tables(
                h, w, cfg.num_registers, n, cfg.rope_freq, cfg.dec_dim // cfg.dec_heads,
                self.options.dtype, self.device,
            )  # fmt: skip
        self._hw = (height, width)
        with torch.inference_mode():
            tokens = self._encode_frames(images, self.net.encoder, frame_keys)
            if self.options.graph_heads:
                depth, conf, intr, rot, trans = (t.clone() for t in self.trunk_runner(tokens))
                poses = self.net.camera_head.assemble(rot, trans)
                pred = WindowPrediction(depth=depth, conf=conf, cam_to_world=poses, intrinsics=intr)
                pred.validate()
            else:
                hidden = self.trunk_runner(tokens)
                out = self.net.heads(hidden, 1, n, (height, width))
                pred = pi3_to_prediction(
                    out["local_points"][0], out["conf"][0], out["camera_poses"][0]
                )
            # From the tokens the window used anyway (cached overlap frames included).
            pred.descriptors = place_descriptors(tokens, (h, w))
            return pred

    def _trunk_and_heads(self, tokens: Tensor):
        """tokens (L, h*w, C) -> depth (L, H, W), conf (L, H, W), intrinsics (L, 3, 3), rotation
        logits (L, 9), translation (L, 3): :meth:`Pi3Net.heads` and :func:`pi3_to_prediction`
        without the SVD."""
        net = self.net
        point_hidden, conf_hidden, camera_hidden = self._trunk(tokens)
        r = net.cfg.num_registers
        hw = self._hw
        xyz = net.point_head(point_hidden[:, r:].float(), hw)
        z = torch.exp(xyz[..., 2:])
        local_points = torch.cat([xyz[..., :2] * z, z], dim=-1)
        conf = torch.sigmoid(net.conf_head(conf_hidden[:, r:].float(), hw)[..., 0])
        rot, trans = net.camera_head.raw(camera_hidden[:, r:].float())
        intr = intrinsics_from_points(local_points, conf)
        return local_points[..., 2].contiguous(), conf, intr, rot, trans


class FastVGGT(_FastBase):
    """VGGT fast path (camera and depth heads); (L, 3, H, W) in [0, 1] -> WindowPrediction."""

    name = "vggt"

    def __init__(self, model, options: FastOptions) -> None:
        super().__init__(model, options)
        net = self.net
        agg = net.aggregator
        self._cast(
            [agg.patch_embed, *agg.frame_blocks, *agg.global_blocks],
            keep_fp32=[agg.patch_embed.pos_embed],
        )
        agg.camera_token.data = agg.camera_token.data.to(options.dtype)
        agg.register_token.data = agg.register_token.data.to(options.dtype)
        dpt = options.dpt_dtype
        if dpt is None:
            dpt = options.dtype if self.device.type == "cuda" else torch.float32
        self.dpt_dtype = dpt
        net.depth_head.to(dpt)
        # LASER never runs the point head: keep it off the accelerator.
        net.point_head.to("cpu")
        if options.compile:
            self._compile()

    def _blocks(self) -> list[nn.Module]:
        agg = self.net.aggregator
        return [*agg.patch_embed.blocks, *agg.frame_blocks, *agg.global_blocks]

    def _compile(self) -> None:
        super()._compile()
        # The eager DPT head (4-frame chunks) is about a sixth of a VGGT window: Inductor fuses
        # its ReLUs, residual adds, position embeddings and bilinear resizes around the
        # convolutions, and channels-last weights keep cuDNN's tensor-core convolutions free of
        # layout transposes (benchmarks/kernels.py; benchmarks/DECISIONS.md, "VGGT's DPT head
        # compiled, channels-last, 10-frame chunks").
        head = self.net.depth_head.to(memory_format=torch.channels_last)
        head.compile()

    @property
    def dpt_chunk(self) -> int:
        if self.options.dpt_chunk is not None:
            return self.options.dpt_chunk
        return 10 if self.options.compile else 4

    def _trunk(self, tokens: Tensor):
        n = tokens.shape[0]
        frame, glob = self._tables[(n, tokens.shape[1])]
        layers = self.net.aggregator.trunk(tokens, 1, n, self.net.kept_layers, frame, glob)
        return layers

    def __call__(
        self, images: Tensor, frame_keys: Sequence[object] | None = None
    ) -> WindowPrediction:
        images = check_images(images, self.patch)
        n, _, height, width = images.shape
        h, w = height // self.patch, width // self.patch
        cfg = self.net.cfg
        key = (n, h * w)
        if key not in self._tables:
            self._tables[key] = _rope_tables(
                h, w, 1 + cfg.num_registers, n, cfg.rope_freq, cfg.dim // cfg.heads,
                self.options.dtype, self.device,
            )  # fmt: skip
        self._hw = (height, width)
        with torch.inference_mode():
            tokens = self._encode_frames(images, self.net.aggregator.patch_embed, frame_keys)
            if self.options.graph_heads:
                pose_enc, depth, depth_conf = (t.clone() for t in self.trunk_runner(tokens))
                pred = vggt_to_prediction(pose_enc, depth, depth_conf)
            else:
                pred = vggt_to_prediction(*self._heads(self.trunk_runner(tokens)))
            pred.descriptors = place_descriptors(tokens, (h, w))
            return pred

    def _heads(self, layers) -> tuple[Tensor, Tensor, Tensor]:
        n = layers[self.net.cfg.depth - 1].shape[1]
        out = self.net.run_heads(
            layers, 1, n, self._hw, ("camera", "depth"), self.dpt_chunk, self.dpt_dtype
        )
        return out["pose_enc"][0], out["depth"][0], out["depth_conf"][0]

    def _trunk_and_heads(self, tokens: Tensor):
        """tokens -> pose encoding (L, 9), depth (L, H, W, 1), depth confidence (L, H, W)."""
        return self._heads(self._trunk(tokens))


def accelerate(model, options: FastOptions | None = None, **kw):
    """Wrap a :class:`Pi3Model` or :class:`VGGTModel` in its fast path.

    The wrapped network's weights are cast in place (the original model object must not be used
    for reference outputs afterwards). ``kw`` overrides :class:`FastOptions` fields.
    """
    from laser_plugin.models.pi3 import Pi3Model
    from laser_plugin.models.vggt import VGGTModel

    opts = options or FastOptions()
    for k, v in kw.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown fast-path option {k!r}")
        setattr(opts, k, v)
    if isinstance(model, Pi3Model):
        return FastPi3(model, opts)
    if isinstance(model, VGGTModel):
        return FastVGGT(model, opts)
    raise TypeError(f"no fast path for {type(model).__name__}")


@contextlib.contextmanager
def no_tf32() -> object:
    """fp32 references: switch TF32 off for matrix products and convolutions."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
