"""VGGT backend (Wang et al. 2025, "VGGT: Visual Geometry Grounded Transformer").

Our own PyTorch implementation of the network of ``facebookresearch/vggt``; parameter names and
shapes equal upstream's so the released ``facebook/VGGT-1B`` ``model.pt`` (non-commercial; use
``facebook/VGGT-1B-Commercial`` for commercial work) loads with strict name/shape checking.
The tracking head is never run by LASER: its checkpoint entries (``track_head.*``) are skipped.

Architecture: a DINOv2 ViT-L/14 (4 registers) patch embedding; 24 frame-attention blocks
interleaved with 24 global-attention blocks (2-D RoPE, qk-norm, LayerScale); one camera token and
4 register tokens per frame, with separate learned values for the first frame (the reference
view); each frame/global pair's outputs concatenated (2048 wide) feed a camera head (4 trunk
blocks, 4 adaLN refinement steps -> translation, quaternion, field of view) and DPT depth and
point heads (confidence 1 + exp).

Checked against the upstream modules with identical random weights (2026-11-25): fp32 outputs
agree to <= 1.2e-7 max relative error (full size on an H100 at 20 x 294 x 518; bit-identical on
the CPU) and bf16-autocast outputs are bit-identical to upstream's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from laser_plugin.models.blocks import Block, DinoViT, DPTHead, Mlp, Rope2D, grid_positions
from laser_plugin.models.blocks.place import place_descriptors
from laser_plugin.models.blocks.runtime import (
    autocast,
    autocast_off,
    check_images,
    pil_resize,
    resolve_device,
    resolve_dtype,
)
from laser_plugin.models.convert import vggt_to_prediction
from laser_plugin.models.weights import CheckpointInfo, from_pretrained
from laser_plugin.types import WindowPrediction

CHECKPOINT = CheckpointInfo(
    model="vggt",
    hub_repo="facebook/VGGT-1B",
    filename="model.pt",
    license="VGGT-1B weights: non-commercial (facebook/VGGT-1B-Commercial for commercial use)",
    ignore_prefixes=("track_head.",),
)
PATCH = 14
TARGET_WIDTH = 518
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VGGTConfig:
    """Network sizes; the defaults are the released model."""

    dim: int = 1024
    """Token width (DINOv2 and aggregator)."""
    enc_depth: int = 24
    """DINOv2 blocks."""
    enc_heads: int = 16
    """DINOv2 heads."""
    enc_img_size: int = 518
    """Image side of the DINOv2 position table."""
    depth: int = 24
    """Frame blocks (and as many global blocks)."""
    heads: int = 16
    """Aggregator heads."""
    num_registers: int = 4
    """Register tokens per frame (after the camera token)."""
    cam_trunk_depth: int = 4
    """Camera-head trunk blocks."""
    cam_heads: int = 16
    """Camera-head heads."""
    dpt_features: int = 256
    """DPT fusion width."""
    dpt_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    """DPT per-level projection widths."""
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    """Aggregator layers the DPT heads read."""
    rope_freq: float = 100.0
    """RoPE base frequency."""


TINY = VGGTConfig(
    dim=64, enc_depth=2, enc_heads=4, enc_img_size=56, depth=4, heads=4, cam_trunk_depth=1,
    cam_heads=4, dpt_features=16, dpt_channels=(8, 16, 32, 32), dpt_layers=(0, 1, 2, 3),
)  # fmt: skip
SIZES = {"large": VGGTConfig(), "tiny": TINY}


def _first_and_rest(token: Tensor, b: int, s: int) -> Tensor:
    """(1, 2, X, C) learned tokens -> (B*S, X, C): index 0 for each sequence's first frame,
    index 1 for the others (this is what makes frame 0 the reference view)."""
    first = token[:, :1].expand(b, 1, *token.shape[2:])
    rest = token[:, 1:].expand(b, s - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(b * s, *token.shape[2:])


class Aggregator(nn.Module):
    def __init__(self, cfg: VGGTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = DinoViT(
            cfg.dim, cfg.enc_depth, cfg.enc_heads, PATCH, cfg.enc_img_size, num_registers=4,
            layer_scale=1.0, mask_token=True,
        )  # fmt: skip

        def block() -> Block:
            # VGGT's blocks keep nn.LayerNorm's default eps (1e-5).
            return Block(cfg.dim, cfg.heads, eps=1e-5, layer_scale=0.01, qk_norm=True)

        self.frame_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_registers, cfg.dim))

    @property
    def patch_start(self) -> int:
        return 1 + self.cfg.num_registers

    def forward(self, images: Tensor, keep: set[int]) -> dict[int, Tensor]:
        """images (B, S, 3, H, W) in [0, 1] -> {layer: (B, S, P, 2*dim)} for the layers in ``keep``.

        Upstream returns all 24 layers; we keep only those a head reads, to save memory.
        """
        b, s, _, height, width = images.shape
        return self.from_patches(self.embed(images), b, s, (height, width), keep)

    def from_patches(
        self, patches: Tensor, b: int, s: int, hw: tuple[int, int], keep: set[int]
    ) -> dict[int, Tensor]:
        """:meth:`forward` from the patch tokens :meth:`embed` made (B*S, h*w, dim)."""
        pos = grid_positions(hw[0] // PATCH, hw[1] // PATCH, self.patch_start, patches.device)
        rope_frame = Rope2D(pos, self.cfg.rope_freq)
        rope_global = Rope2D(pos.repeat(1, s, 1), self.cfg.rope_freq)
        return self.trunk(patches, b, s, keep, rope_frame, rope_global)

    def embed(self, images: Tensor) -> Tensor:
        """(B, S, 3, H, W) in [0, 1] -> (B*S, h*w, dim) DINOv2 patch tokens (per frame)."""
        b, s, _, height, width = images.shape
        mean = torch.tensor(_MEAN, device=images.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(_STD, device=images.device).view(1, 1, 3, 1, 1)
        x = ((images - mean) / std).reshape(b * s, 3, height, width)
        return self.patch_embed(x)

    def trunk(
        self, patches: Tensor, b: int, s: int, keep: set[int], rope_frame, rope_global
    ) -> dict[int, Tensor]:
        """Patch tokens (B*S, h*w, dim) -> {layer: (B, S, P, 2*dim)}; ``rope_*`` are
        :class:`Rope2D` objects or their (cos, sin) tables."""
        tokens = torch.cat(
            [
                _first_and_rest(self.camera_token, b, s).to(patches.dtype),
                _first_and_rest(self.register_token, b, s).to(patches.dtype),
                patches,
            ],
            dim=1,
        )
        p, c = tokens.shape[1], tokens.shape[2]
        out = {}
        for i in range(self.cfg.depth):
            tokens = self.frame_blocks[i](tokens.reshape(b * s, p, c), rope_frame)
            frame_out = tokens.reshape(b, s, p, c)
            tokens = self.global_blocks[i](tokens.reshape(b, s * p, c), rope_global)
            if i in keep:
                out[i] = torch.cat([frame_out, tokens.reshape(b, s, p, c)], dim=-1)
        return out


class CameraHead(nn.Module):
    """Camera tokens of the last layer -> (B, S, 9) pose encoding, refined 4 times (adaLN)."""

    def __init__(self, dim: int, trunk_depth: int, heads: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            *[Block(dim, heads, eps=1e-5, layer_scale=0.01) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, 9))
        self.embed_pose = nn.Linear(9, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, 9)

    def forward(self, cam_tokens: Tensor, iterations: int = 4) -> Tensor:
        """cam_tokens (B, S, dim) -> (B, S, 9): translation, quaternion xyzw, fov_h, fov_w."""
        tokens = self.token_norm(cam_tokens)
        enc = None
        for _ in range(iterations):
            cond = self.embed_pose(
                self.empty_pose_tokens.expand(*tokens.shape[:2], -1) if enc is None else enc
            )
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            enc = delta if enc is None else enc + delta
        # Activations: translation and quaternion linear, field of view ReLU.
        return torch.cat([enc[..., :7], torch.relu(enc[..., 7:])], dim=-1)


def _inv_log(y: Tensor) -> Tensor:
    return torch.sign(y) * torch.expm1(y.abs())


class VGGTNet(nn.Module):
    """The VGGT network without its tracking head."""

    def __init__(self, cfg: VGGTConfig = VGGTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        two = 2 * cfg.dim
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(two, cfg.cam_trunk_depth, cfg.cam_heads)
        dpt = {
            "features": cfg.dpt_features,
            "out_channels": cfg.dpt_channels,
            "layer_indices": cfg.dpt_layers,
        }
        self.point_head = DPTHead(two, output_dim=4, **dpt)
        self.depth_head = DPTHead(two, output_dim=2, **dpt)

    def forward(
        self, images: Tensor, heads: tuple[str, ...] = ("camera", "depth", "point"), chunk: int = 8
    ) -> dict[str, Tensor]:
        """images (B, S, 3, H, W) in [0, 1] -> pose_enc (B, S, 9), depth (B, S, H, W, 1),
        depth_conf (B, S, H, W), world_points (B, S, H, W, 3), world_points_conf (B, S, H, W);
        with "place" in ``heads``, descriptors (B, S, D) pooled from the encoder's patch tokens
        (:mod:`laser_plugin.models.blocks.place`; not an upstream output).

        The DPT heads run ``chunk`` frames at a time (upstream's default: 8) to bound memory.
        """
        b, s, _, height, width = images.shape
        patches = self.aggregator.embed(images)
        layers = self.aggregator.from_patches(patches, b, s, (height, width), self.kept_layers)
        out = self.run_heads(layers, b, s, (height, width), heads, chunk)
        if "place" in heads:
            hw = (height // PATCH, width // PATCH)
            out["descriptors"] = place_descriptors(patches, hw).reshape(b, s, -1)
        return out

    @property
    def kept_layers(self) -> set[int]:
        """Aggregator layers the heads read."""
        return {self.cfg.depth - 1} | set(self.cfg.dpt_layers)

    def run_heads(
        self,
        layers: dict[int, Tensor],
        b: int,
        s: int,
        hw: tuple[int, int],
        heads: tuple[str, ...],
        chunk: int = 8,
        dpt_dtype: torch.dtype = torch.float32,
    ) -> dict[str, Tensor]:
        """Aggregator layers -> output dict. The camera head runs in fp32; the DPT heads get
        their tokens in ``dpt_dtype`` (fp32 as upstream, or bf16 with bf16 head weights)."""
        height, width = hw
        start = self.aggregator.patch_start
        out: dict[str, Tensor] = {}
        with autocast_off(layers[self.cfg.depth - 1].device.type):
            if "camera" in heads:
                out["pose_enc"] = self.camera_head(layers[self.cfg.depth - 1][:, :, 0].float())
            for name, head in (("depth", self.depth_head), ("point", self.point_head)):
                if name not in heads:
                    continue
                raw = []
                for f0 in range(0, s, chunk):
                    sub = {
                        i: t[:, f0 : f0 + chunk].flatten(0, 1).to(dpt_dtype)
                        for i, t in layers.items()
                    }
                    raw.append(head(sub, (height, width), start).unflatten(0, (b, -1)).float())
                fmap = torch.cat(raw, dim=1).permute(0, 1, 3, 4, 2)  # (B, S, H, W, C)
                conf = 1 + fmap[..., -1].exp()
                if name == "depth":
                    out["depth"], out["depth_conf"] = fmap[..., :-1].exp(), conf
                else:
                    out["world_points"], out["world_points_conf"] = _inv_log(fmap[..., :-1]), conf
        return out


def input_size(height: int, width: int) -> tuple[int, int]:
    """Upstream's "crop" preprocessing (``vggt/utils/load_fn.py``): width 518, height scaled to
    keep the aspect ratio and rounded to a multiple of 14; upstream then centre-crops heights
    above 518, which a plain resize cannot do, so the height is capped at 518 here."""
    if height < 1 or width < 1:
        raise ValueError(f"invalid image size {height}x{width}")
    new_h = round(height * (TARGET_WIDTH / width) / PATCH) * PATCH
    return min(max(new_h, PATCH), TARGET_WIDTH), TARGET_WIDTH


class VGGTModel:
    """VGGT as a :class:`~laser_plugin.types.ReconstructionModel` (camera and depth heads only)."""

    name = "vggt"
    license = CHECKPOINT.license

    def __init__(self, net: VGGTNet, device: torch.device, dtype: torch.dtype) -> None:
        self.net = net.eval().requires_grad_(False)
        self.device = device
        self.dtype = dtype

    @staticmethod
    def input_size(height: int, width: int) -> tuple[int, int]:
        return input_size(height, width)

    @staticmethod
    def preprocess(image: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
        """(H0, W0, 3) uint8 -> (3, H, W) in [0, 1] as upstream's "crop" mode: PIL bicubic resize
        to width 518, then a centre crop of heights above 518. An explicit ``size`` other than
        :func:`input_size` of this image is a plain resize."""
        h0, w0 = image.shape[:2]
        if size is not None and tuple(size) != input_size(h0, w0):
            return pil_resize(image, size, "bicubic")
        new_h = max(round(h0 * (TARGET_WIDTH / w0) / PATCH) * PATCH, PATCH)
        out = pil_resize(image, (new_h, TARGET_WIDTH), "bicubic")
        if new_h > TARGET_WIDTH:
            top = (new_h - TARGET_WIDTH) // 2
            out = out[:, top : top + TARGET_WIDTH]
        return out

    def forward_raw(
        self, images: Tensor, heads: tuple[str, ...] = ("camera", "depth", "point")
    ) -> dict[str, Tensor]:
        """(L, 3, H, W) in [0, 1] -> upstream's output dict with a batch dimension of 1."""
        images = check_images(images, PATCH).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.net(images[None], heads)

    def __call__(self, images: Tensor) -> WindowPrediction:
        # LASER needs depth and cameras only; the point head would cost ~10% more time.
        out = self.forward_raw(images, ("camera", "depth", "place"))
        pred = vggt_to_prediction(out["pose_enc"][0], out["depth"][0], out["depth_conf"][0])
        pred.descriptors = out["descriptors"][0]
        return pred


def build_net(size: str | VGGTConfig = "large", device: str | torch.device = "cpu") -> VGGTNet:
    cfg = size if isinstance(size, VGGTConfig) else SIZES.get(size)
    if cfg is None:
        raise ValueError(f"unknown VGGT size {size!r}; choose from {sorted(SIZES)}")
    with torch.device(device):
        return VGGTNet(cfg)


def make_model(
    weights: str | None = None,
    device: str = "cpu",
    size: Literal["large", "tiny"] | VGGTConfig = "large",
    dtype: str | torch.dtype | None = None,
    random_init: bool = False,
    seed: int = 0,
    fast: bool = False,
    fast_options: dict | None = None,
    **overrides: int,
):
    """Build VGGT and load its weights (a path, a hub id such as ``facebook/VGGT-1B``, or the
    default location); ``random_init=True`` skips loading (tests and speed benchmarks only);
    ``fast=True`` returns the fast streaming path (:mod:`laser_plugin.models.fast`);
    ``fast_options`` overrides its :class:`~laser_plugin.models.fast.FastOptions` fields."""
    dev = resolve_device(device)
    compute = resolve_dtype(dtype, dev)
    cfg = size if isinstance(size, VGGTConfig) else SIZES.get(size)
    if cfg is None:
        raise ValueError(f"unknown VGGT size {size!r}; choose from {sorted(SIZES)}")
    cfg = replace(cfg, **overrides) if overrides else cfg
    if random_init:
        # Built on the target device: initialising a billion parameters on the CPU is slow.
        gpus = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(seed)
            net = build_net(cfg, dev)
            nn.init.trunc_normal_(net.aggregator.patch_embed.pos_embed, std=0.02)
            for p in (net.aggregator.camera_token, net.aggregator.register_token):
                nn.init.normal_(p, std=1e-6)
    else:
        net = build_net(cfg, "meta")
        from_pretrained(net, weights, CHECKPOINT)
    model = VGGTModel(net.to(device=dev, dtype=torch.float32), dev, compute)
    if fast:
        # bf16 trunk, cached overlap tokens; compiled blocks and one CUDA graph of the trunk on
        # the GPU (each step measured in benchmarks/DECISIONS.md, "The network (fast path)"; the
        # heads stay out of the graph: "VGGT heads in the graph (`graph_heads`)", an option).
        from laser_plugin.models.fast import accelerate

        gpu = dev.type == "cuda"
        opts = {"dtype": compute, "compile": gpu, "cuda_graph": gpu}
        return accelerate(model, **{**opts, **(fast_options or {})})
    return model
