"""DINOv2 ViT encoder with register tokens (Oquab et al. 2023; Darcet et al. 2024).

Both π³ (``encoder.*``) and VGGT (``aggregator.patch_embed.*``) embed each frame with a
DINOv2 ViT-L/14 with 4 registers; only the normalised patch tokens are used downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laser_plugin.models.blocks.transformer import Block


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p * W/p, dim)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """ViT with a class token, register tokens and a learned (interpolated) position table."""

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_size: int = 14,
        img_size: int = 518,
        num_registers: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale: float = 1.0,
        mask_token: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_registers = num_registers
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_registers, dim)) if num_registers else None
        )
        self.blocks = nn.ModuleList(
            [
                Block(dim, num_heads, mlp_ratio, eps=1e-6, layer_scale=layer_scale)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # Only used for masked pre-training; VGGT's checkpoint still carries it, π³ deleted it.
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if mask_token else None

    def position_table(self, height: int, width: int, dtype: torch.dtype) -> Tensor:
        """(1, 1 + h*w, dim) for a (height, width) pixel input."""
        n_stored = self.pos_embed.shape[1] - 1
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == n_stored and h == w:
            return self.pos_embed.to(dtype)
        side = round(n_stored**0.5)
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINOv2-reg settings: explicit output size (offset 0) and antialiased bicubic, which
        # for upsampling uses the a=-0.5 cubic kernel, not the a=-0.75 of plain bicubic.
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W), normalised -> (B, H/p * W/p, dim) normalised patch tokens."""
        _, _, height, width = images.shape
        x = self.patch_embed(images)
        # torch.cat promotes to the (fp32) token dtype under autocast, so the residual stream
        # stays fp32 as upstream's does.
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_table(height, width, x.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1 + self.num_registers :]
