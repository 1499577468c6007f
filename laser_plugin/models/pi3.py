"""π³ backend (Wang et al. 2025, "π³: Scalable Permutation-Equivariant Visual Geometry Learning").

Our own PyTorch implementation of the network of ``yyfz/Pi3`` (code BSD-3-Clause); parameter
names and shapes equal upstream's so the released ``yyfz233/Pi3`` ``model.safetensors``
(CC BY-NC 4.0, non-commercial) loads with ``strict=True``.

Architecture: DINOv2 ViT-L/14 + 4 registers encodes each frame; 36 blocks (dim 1024) alternate
frame attention (even blocks) and global attention over all frames (odd blocks), with 5 learned
register tokens per frame, 2-D RoPE and qk-norm; the concatenated outputs of the last two blocks
feed three 5-block transformer decoders: local points (xy * z, z = exp), confidence logits and
camera-to-world poses (SVD-orthogonalised 3x3 + translation).

Checked against the upstream modules with identical random weights (2026-11-25): fp32 outputs
agree to <= 2.7e-6 max relative error (full size on an H100 at 20 x 294 x 518, and on the CPU);
under bf16 autocast both deviate ~1e-2 from fp32 and ~8e-3 from each other (attention backend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser_plugin.models.blocks import Block, DinoViT, Rope2D, grid_positions
from laser_plugin.models.blocks.place import place_descriptors
from laser_plugin.models.blocks.runtime import (
    autocast,
    autocast_off,
    check_images,
    pil_resize,
    resolve_device,
    resolve_dtype,
)
from laser_plugin.models.convert import pi3_to_prediction
from laser_plugin.models.weights import CheckpointInfo, from_pretrained
from laser_plugin.types import WindowPrediction

CHECKPOINT = CheckpointInfo(
    model="pi3",
    hub_repo="yyfz233/Pi3",
    filename="model.safetensors",
    license="CC BY-NC 4.0 (non-commercial); code BSD-3-Clause",
)
PATCH = 14
PIXEL_LIMIT = 255_000


@dataclass(frozen=True)
class Pi3Config:
    """Network sizes; the defaults are the released model."""

    enc_dim: int = 1024
    """DINOv2 encoder width."""
    enc_depth: int = 24
    """DINOv2 encoder blocks."""
    enc_heads: int = 16
    """DINOv2 encoder heads."""
    enc_img_size: int = 518
    """Image side the encoder's position table was trained for (37 x 37 patches)."""
    dec_dim: int = 1024
    """Alternating-attention decoder width."""
    dec_depth: int = 36
    """Alternating-attention decoder blocks (even = frame, odd = global)."""
    dec_heads: int = 16
    """Alternating-attention decoder heads."""
    num_registers: int = 5
    """Register tokens prepended to each frame in the decoder."""
    head_dim: int = 1024
    """Width of the three output decoders."""
    head_depth: int = 5
    """Blocks of each output decoder."""
    head_heads: int = 16
    """Heads of each output decoder."""
    cam_dim: int = 512
    """Output width of the camera decoder, input of the camera MLP."""
    rope_freq: float = 100.0
    """RoPE base frequency."""


TINY = Pi3Config(
    enc_dim=64, enc_depth=2, enc_heads=4, enc_img_size=56, dec_dim=64, dec_depth=4,
    dec_heads=4, head_dim=64, head_depth=1, head_heads=4, cam_dim=32,
)  # fmt: skip
SIZES = {"large": Pi3Config(), "tiny": TINY}


class OutputDecoder(nn.Module):
    """Linear projection, a few frame-attention blocks, linear output."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.projects = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, eps=1e-6) for _ in range(depth)])
        self.linear_out = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, rope: Rope2D) -> Tensor:
        x = self.projects(x)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.linear_out(x)


class PixelShuffleHead(nn.Module):
    """One linear map per patch token to ``channels`` values for each of its p x p pixels."""

    def __init__(self, dim: int, channels: int, patch: int = PATCH) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(dim, channels * patch * patch)

    def forward(self, tokens: Tensor, hw: tuple[int, int]) -> Tensor:
        """tokens (F, h*w, dim) -> (F, H, W, channels)."""
        n = tokens.shape[0]
        h, w = hw[0] // self.patch, hw[1] // self.patch
        feat = self.proj(tokens).transpose(1, 2).reshape(n, -1, h, w)
        return F.pixel_shuffle(feat, self.patch).permute(0, 2, 3, 1)


class ResLinearBlock(nn.Module):
    """x + relu(l3(relu(l2(relu(l1(x)))))) (upstream's 1x1-conv residual block, as linears)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv1 = nn.Linear(dim, dim)
        self.res_conv2 = nn.Linear(dim, dim)
        self.res_conv3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.res_conv1(x))
        y = F.relu(self.res_conv2(y))
        return x + F.relu(self.res_conv3(y))


def svd_orthogonalize(m: Tensor) -> Tensor:
    """(..., 9) -> (..., 3, 3) nearest rotation to the row-normalised 3x3 matrix (det +1)."""
    m = F.normalize(m.reshape(*m.shape[:-1], 3, 3), dim=-1).transpose(-1, -2)
    u, _, vh = torch.linalg.svd(m)
    v = vh.transpose(-1, -2)
    det = torch.det(v @ u.transpose(-1, -2))
    v = torch.cat([v[..., :-1], v[..., -1:] * det[..., None, None]], dim=-1)
    return v @ u.transpose(-1, -2)


class CameraHead(nn.Module):
    """Patch features of one frame -> camera-to-world 4x4."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv = nn.ModuleList([ResLinearBlock(dim) for _ in range(2)])
        self.more_mlps = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU()
        )
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, feat: Tensor) -> Tensor:
        """feat (F, h*w, dim) -> (F, 4, 4)."""
        return self.assemble(*self.raw(feat))

    def raw(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """feat (F, h*w, dim) -> rotation logits (F, 9), translation (F, 3) (no host syncs)."""
        for blk in self.res_conv:
            feat = blk(feat)
        feat = self.more_mlps(feat.mean(dim=1))
        return self.fc_rot(feat), self.fc_t(feat)

    @staticmethod
    def assemble(rot: Tensor, trans: Tensor) -> Tensor:
        """(F, 9), (F, 3) -> (F, 4, 4); the SVD here synchronises a CUDA device with the host."""
        pose = torch.zeros(rot.shape[0], 4, 4, device=rot.device, dtype=rot.dtype)
        pose[:, :3, :3] = svd_orthogonalize(rot)
        pose[:, :3, 3] = trans
        pose[:, 3, 3] = 1.0
        return pose


class Pi3Net(nn.Module):
    """The π³ network: (B, N, 3, H, W) in [0, 1] -> dict of points, local_points, conf, camera_poses."""

    def __init__(self, cfg: Pi3Config = Pi3Config()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = DinoViT(
            cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, PATCH, cfg.enc_img_size, num_registers=4,
            layer_scale=1.0, mask_token=False,
        )  # fmt: skip
        self.decoder = nn.ModuleList(
            [
                Block(
                    cfg.dec_dim,
                    cfg.dec_heads,
                    eps=1e-6,
                    layer_scale=0.01,
                    qk_norm=True,
                    qk_to_v_dtype=True,
                )
                for _ in range(cfg.dec_depth)
            ]
        )
        self.register_token = nn.Parameter(torch.zeros(1, 1, cfg.num_registers, cfg.dec_dim))
        two = 2 * cfg.dec_dim
        self.point_decoder = OutputDecoder(
            two, cfg.head_dim, cfg.head_depth, cfg.head_heads, cfg.head_dim
        )
        self.point_head = PixelShuffleHead(cfg.head_dim, 3)
        self.conf_decoder = OutputDecoder(
            two, cfg.head_dim, cfg.head_depth, cfg.head_heads, cfg.head_dim
        )
        self.conf_head = PixelShuffleHead(cfg.head_dim, 1)
        self.camera_decoder = OutputDecoder(
            two, cfg.head_dim, cfg.head_depth, cfg.head_heads, cfg.cam_dim
        )
        self.camera_head = CameraHead(cfg.cam_dim)
        # ImageNet statistics; persistent buffers, as they are in the released checkpoint.
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor, descriptors: bool = False) -> dict[str, Tensor]:
        """``descriptors``: also return (B, N, D) place descriptors pooled from the encoder's
        tokens (:mod:`laser_plugin.models.blocks.place`; not an upstream output)."""
        b, n, _, height, width = images.shape
        h, w = height // PATCH, width // PATCH
        tokens = self.encoder(self.normalise(images))  # (B*N, h*w, C)
        pos = grid_positions(h, w, self.cfg.num_registers, images.device)  # (1, P, 2)
        rope_frame = Rope2D(pos, self.cfg.rope_freq)
        rope_global = Rope2D(pos.repeat(1, n, 1), self.cfg.rope_freq)
        hidden = self.decode(tokens, b, n, rope_frame, rope_global)
        out = self.heads(hidden, b, n, (height, width))
        if descriptors:
            out["descriptors"] = place_descriptors(tokens, (h, w)).reshape(b, n, -1)
        return out

    def normalise(self, images: Tensor) -> Tensor:
        """(B, N, 3, H, W) in [0, 1] -> (B*N, 3, H, W) ImageNet-normalised."""
        b, n, _, height, width = images.shape
        return ((images - self.image_mean) / self.image_std).reshape(b * n, 3, height, width)

    def decode(self, tokens: Tensor, b: int, n: int, rope_frame, rope_global) -> tuple:
        """Encoder tokens (B*N, h*w, C) -> (point, conf, camera) decoder outputs, each (B*N, P, .).

        ``rope_*`` are :class:`Rope2D` objects or their (cos, sin) tables.
        """
        regs = self.register_token.expand(b * n, -1, -1, -1).reshape(
            b * n, self.cfg.num_registers, -1
        )
        tokens = torch.cat([regs.to(tokens.dtype), tokens], dim=1)
        p = tokens.shape[1]
        last = []
        for i, blk in enumerate(self.decoder):
            if i % 2 == 0:
                tokens = blk(tokens.reshape(b * n, p, -1), rope_frame)
            else:
                tokens = blk(tokens.reshape(b, n * p, -1), rope_global)
            if i >= len(self.decoder) - 2:
                last.append(tokens.reshape(b * n, p, -1))
        hidden = torch.cat(last, dim=-1)  # (B*N, P, 2C)
        return (
            self.point_decoder(hidden, rope_frame),
            self.conf_decoder(hidden, rope_frame),
            self.camera_decoder(hidden, rope_frame),
        )

    def heads(self, hidden: tuple, b: int, n: int, hw: tuple[int, int]) -> dict[str, Tensor]:
        """Decoder outputs -> upstream's output dict; always fp32 (autocast off)."""
        point_hidden, conf_hidden, camera_hidden = hidden
        height, width = hw
        r = self.cfg.num_registers
        with autocast_off(point_hidden.device.type):
            xyz = self.point_head(point_hidden[:, r:].float(), (height, width)).reshape(
                b, n, height, width, 3
            )
            z = torch.exp(xyz[..., 2:])
            local_points = torch.cat([xyz[..., :2] * z, z], dim=-1)
            conf = self.conf_head(conf_hidden[:, r:].float(), (height, width)).reshape(
                b, n, height, width, 1
            )
            poses = self.camera_head(camera_hidden[:, r:].float()).reshape(b, n, 4, 4)
            points = (
                torch.einsum("bnij,bnhwj->bnhwi", poses[..., :3, :3], local_points)
                + poses[..., None, None, :3, 3]
            )
        return {"points": points, "local_points": local_points, "conf": conf, "camera_poses": poses}


def input_size(height: int, width: int) -> tuple[int, int]:
    """Upstream's resize target for an (height, width) frame: sides multiples of 14, at most
    255,000 pixels, aspect ratio kept as closely as possible (``pi3/utils/basic.py``)."""
    if height < 1 or width < 1:
        raise ValueError(f"invalid image size {height}x{width}")
    scale = math.sqrt(PIXEL_LIMIT / (width * height))
    tw, th = width * scale, height * scale
    k, m = round(tw / PATCH), round(th / PATCH)
    while (k * PATCH) * (m * PATCH) > PIXEL_LIMIT:
        if k / m > tw / th:
            k -= 1
        else:
            m -= 1
    return max(1, m) * PATCH, max(1, k) * PATCH


class Pi3Model:
    """π³ as a :class:`~laser_plugin.types.ReconstructionModel`."""

    name = "pi3"
    license = CHECKPOINT.license

    def __init__(self, net: Pi3Net, device: torch.device, dtype: torch.dtype) -> None:
        self.net = net.eval().requires_grad_(False)
        self.device = device
        self.dtype = dtype

    @staticmethod
    def input_size(height: int, width: int) -> tuple[int, int]:
        return input_size(height, width)

    @staticmethod
    def preprocess(image: np.ndarray, size: tuple[int, int] | None = None) -> Tensor:
        """(H0, W0, 3) uint8 -> (3, H, W) in [0, 1]: PIL Lanczos resize to ``size`` (default
        :func:`input_size` of this image; upstream uses the first frame's for all frames)."""
        return pil_resize(image, size or input_size(*image.shape[:2]), "lanczos")

    def forward_raw(self, images: Tensor, descriptors: bool = False) -> dict[str, Tensor]:
        """(L, 3, H, W) in [0, 1] -> upstream's output dict with a batch dimension of 1
        (and ``descriptors``, see :meth:`Pi3Net.forward`)."""
        images = check_images(images, PATCH).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.net(images[None], descriptors)

    def __call__(self, images: Tensor) -> WindowPrediction:
        out = self.forward_raw(images, descriptors=True)
        pred = pi3_to_prediction(out["local_points"][0], out["conf"][0], out["camera_poses"][0])
        pred.descriptors = out["descriptors"][0]
        return pred


def build_net(size: str | Pi3Config = "large", device: str | torch.device = "cpu") -> Pi3Net:
    cfg = size if isinstance(size, Pi3Config) else SIZES.get(size)
    if cfg is None:
        raise ValueError(f"unknown π³ size {size!r}; choose from {sorted(SIZES)}")
    with torch.device(device):
        return Pi3Net(cfg)


def make_model(
    weights: str | None = None,
    device: str = "cpu",
    size: Literal["large", "tiny"] | Pi3Config = "large",
    dtype: str | torch.dtype | None = None,
    random_init: bool = False,
    seed: int = 0,
    fast: bool = False,
    fast_options: dict | None = None,
    **overrides: int,
):
    """Build π³ and load its weights (a path, a hub id such as ``yyfz233/Pi3``, or the default
    location); ``random_init=True`` skips loading (tests and speed benchmarks only);
    ``fast=True`` returns the fast streaming path (:mod:`laser_plugin.models.fast`);
    ``fast_options`` overrides its :class:`~laser_plugin.models.fast.FastOptions` fields."""
    dev = resolve_device(device)
    compute = resolve_dtype(dtype, dev)
    cfg = size if isinstance(size, Pi3Config) else SIZES.get(size)
    if cfg is None:
        raise ValueError(f"unknown π³ size {size!r}; choose from {sorted(SIZES)}")
    cfg = replace(cfg, **overrides) if overrides else cfg
    if random_init:
        # Built on the target device: initialising a billion parameters on the CPU is slow.
        gpus = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(seed)
            net = build_net(cfg, dev)
            _init_tokens(net)
    else:
        net = build_net(cfg, "meta")
        from_pretrained(net, weights, CHECKPOINT)
    model = Pi3Model(net.to(device=dev, dtype=torch.float32), dev, compute)
    if fast:
        # bf16 trunk, cached overlap tokens; compiled blocks and one CUDA graph (trunk and heads)
        # on the GPU. Each step measured in benchmarks/DECISIONS.md, "The network (fast path)".
        from laser_plugin.models.fast import accelerate

        gpu = dev.type == "cuda"
        opts = {"dtype": compute, "compile": gpu, "cuda_graph": gpu, "graph_heads": gpu}
        return accelerate(model, **{**opts, **(fast_options or {})})
    return model


def _init_tokens(net: Pi3Net) -> None:
    # Upstream's initialisation of the learned tokens (the rest keeps PyTorch's defaults).
    nn.init.trunc_normal_(net.encoder.pos_embed, std=0.02)
    nn.init.normal_(net.encoder.cls_token, std=1e-6)
    nn.init.normal_(net.encoder.register_tokens, std=1e-6)
    nn.init.normal_(net.register_token, std=1e-6)
