"""DPT dense-prediction head (Ranftl et al. 2021, "Vision Transformers for Dense Prediction").

Layout and attribute names follow VGGT's ``DPTHead`` (``projects``, ``resize_layers``,
``scratch.layerN_rn``, ``scratch.refinenetN``, ``scratch.output_conv1/2``) so its depth and point
heads load from the released checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_uv_embedding(
    height: int, width: int, channels: int, aspect: float, device: torch.device
) -> Tensor:
    """(channels, height, width) fixed 2-D sin/cos embedding of a centred uv grid.

    The grid spans [-s, s] scaled by (W/H, 1) / diagonal, sampled at cell centres; each axis gets
    channels/2 features ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 100 ** (-k / (channels/4))``.
    Computed in float64 and returned as float32, as upstream.
    """
    diag = math.sqrt(aspect**2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    # Upstream builds the grid in the feature dtype (fp32 in the heads), then promotes to float64.
    u = torch.linspace(
        -span_x * (width - 1) / width, span_x * (width - 1) / width, width, device=device
    )
    v = torch.linspace(
        -span_y * (height - 1) / height, span_y * (height - 1) / height, height, device=device
    )
    quarter = channels // 4
    omega = torch.arange(quarter, dtype=torch.float64, device=device) / quarter
    omega = 1.0 / 100.0**omega

    def embed(p: Tensor) -> Tensor:  # (M,) -> (M, channels/2)
        angles = p.double()[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    uu = u[None, :].expand(height, width).reshape(-1)
    vv = v[:, None].expand(height, width).reshape(-1)
    emb = torch.cat([embed(uu), embed(vv)], dim=-1).float()  # (h*w, channels)
    return emb.reshape(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))).

    Upstream applies an in-place ReLU to its input first, so the skip connection carries relu(x),
    not x; we reproduce that.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """RefineNet-style fusion: (x [+ rcu1(skip)]) -> rcu2 -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None
    ) -> Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Tokens of four layers -> (B*S, output_dim, H, W) before activation."""

    def __init__(
        self,
        dim_in: int,
        output_dim: int,
        patch_size: int = 14,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layer_indices: Sequence[int] = (4, 11, 17, 23),
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.layer_indices = tuple(layer_indices)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, 1) for oc in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        scratch.refinenet1 = FusionBlock(features)
        scratch.refinenet2 = FusionBlock(features)
        scratch.refinenet3 = FusionBlock(features)
        scratch.refinenet4 = FusionBlock(features, has_residual=False)
        scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, output_dim, 1),
        )
        self.scratch = scratch

    def _add_pos(self, x: Tensor, aspect: float) -> Tensor:
        emb = sincos_uv_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect, x.device)
        return x + 0.1 * emb.to(x.dtype)[None]

    def forward(
        self, layers: dict[int, Tensor], image_hw: tuple[int, int], patch_start: int
    ) -> Tensor:
        """layers: {index: (F, P, dim_in)} token maps of F frames -> (F, output_dim, H, W)."""
        height, width = image_hw
        ph, pw = height // self.patch_size, width // self.patch_size
        aspect = width / height
        feats = []
        for i, idx in enumerate(self.layer_indices):
            x = self.norm(layers[idx][:, patch_start:])
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], ph, pw)
            x = self._add_pos(self.projects[i](x), aspect)
            feats.append(self.resize_layers[i](x))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = F.interpolate(
            out,
            size=(ph * self.patch_size, pw * self.patch_size),
            mode="bilinear",
            align_corners=True,
        )
        out = self._add_pos(out, aspect)
        return s.output_conv2(out)
