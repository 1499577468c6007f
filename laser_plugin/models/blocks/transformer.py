"""Pre-norm transformer pieces shared by the π³ and VGGT backends.

Attribute names (``norm1``, ``attn.qkv``, ``attn.q_norm``, ``ls1.gamma``, ``mlp.fc1`` ...) are
the ones the released checkpoints use, so their state dicts load with ``strict=True``.
Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (the backend left to
PyTorch's dispatcher), unless a fast path sets ``Attention.kernel = "laser"``: then through our own
kernel (:mod:`laser_plugin.models.blocks.attention_kernel`), which falls back to SDPA where it
cannot run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT); the parameter is called ``gamma`` upstream."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim, bias=bias)
        self.fused_gelu = False
        """fc1 and GELU as one matrix product with a GELU epilogue (set by the fast paths): on a
        GPU cuBLASLt applies it as the product is written, saving a pass over the 4x-wide hidden
        layer. Its GELU may be the tanh form; the difference (< 5e-4) is below bf16 rounding."""

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_gelu and self.fc1.bias is not None and hasattr(torch, "_addmm_activation"):
            w = self.fc1.weight
            h = torch._addmm_activation(
                self.fc1.bias, x.reshape(-1, w.shape[1]), w.t(), use_gelu=True
            )
            return self.fc2(h.reshape(*x.shape[:-1], w.shape[0]))
        return self.fc2(self.act(self.fc1(x)))


class Rope2D:
    """2-D rotary position embedding (RoFormer, applied per axis as in CroCo/DUSt3R).

    The head dimension is split in two halves, the first rotated by the token's row index, the
    second by its column index, each with frequencies ``freq ** (-2i / (head_dim / 2))``.
    Tables are computed once per forward pass and shared by every block (upstream recomputes
    their length from ``positions.max()`` in each block, a host-device sync).
    """

    def __init__(self, positions: Tensor, freq: float = 100.0) -> None:
        """positions: (B or 1, N, 2) integer (row, col) per token."""
        self.positions = positions
        self.freq = float(freq)
        self._cache: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def tables(
        self, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (B, 1, N, head_dim), in ``dtype``."""
        key = (head_dim, dtype, device)
        if key not in self._cache:
            axis_dim = head_dim // 2
            exponents = torch.arange(0, axis_dim, 2, device=device).float() / axis_dim
            inv_freq = 1.0 / (self.freq**exponents)  # (axis_dim/2,)
            pos = self.positions.to(device).float()  # (B, N, 2)
            cos_parts, sin_parts = [], []
            for axis in (0, 1):  # rows first, then columns (upstream order)
                # Cast the angles to the token dtype before cos/sin, as upstream does.
                angles = (pos[..., axis, None] * inv_freq).to(dtype)
                angles = torch.cat((angles, angles), dim=-1)
                cos_parts.append(angles.cos())
                sin_parts.append(angles.sin())
            cos = torch.cat(cos_parts, dim=-1)[:, None]
            sin = torch.cat(sin_parts, dim=-1)[:, None]
            self._cache[key] = (cos, sin)
        return self._cache[key]

    def apply(self, x: Tensor) -> Tensor:
        """x: (B, heads, N, head_dim) -> same, rotated."""
        return apply_rope(x, *self.tables(x.shape[-1], x.dtype, x.device))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, N, head_dim) rotated by precomputed tables (B or 1, 1, N, head_dim).

    A free function on plain tensors so that ``torch.compile`` can trace a block without guarding
    on a :class:`Rope2D` object's cache.
    """
    quarter = x.shape[-1] // 4
    a, b, c, d = x.split(quarter, dim=-1)
    # rotate_half inside each axis half: (y1, y2) -> (-y2, y1)
    rotated = torch.cat((-b, a, -d, c), dim=-1)
    return x * cos + rotated * sin


RopeArg = Rope2D | tuple[Tensor, Tensor] | None
"""A block's rotary embedding: a :class:`Rope2D`, its (cos, sin) tables, or none."""


def grid_positions(height: int, width: int, num_special: int, device: torch.device | str) -> Tensor:
    """(1, num_special + height*width, 2) long: special tokens at (0, 0), patch (r, c) at (r+1, c+1).

    Both upstream models shift patch positions by one so that position 0 is reserved for the
    special (register/camera) tokens.
    """
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1
    if num_special:
        grid = torch.cat([torch.zeros(num_special, 2, dtype=grid.dtype, device=device), grid])
    return grid[None]


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q and k and 2-D RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        qk_to_v_dtype: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        # Upstream's qk-norm LayerNorm keeps PyTorch's default eps (1e-5).
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        # π³ casts normalised q, k back to v's dtype (matters under autocast); VGGT does not.
        self.qk_to_v_dtype = qk_to_v_dtype
        self.kernel = "sdpa"
        """"sdpa" or "laser" (set by the fast paths; not part of the checkpoint)."""

    def forward(self, x: Tensor, rope: RopeArg = None) -> Tensor:
        """x: (B, N, dim) -> (B, N, dim)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.qk_to_v_dtype:
            q, k = q.to(v.dtype), k.to(v.dtype)
        if isinstance(rope, Rope2D):
            q, k = rope.apply(q), rope.apply(k)
        elif rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kernel == "laser":
            from laser_plugin.models.blocks.attention_kernel import attention

            out = attention(q, k, v)  # (B, heads, N, head_dim) view of (B, N, heads, head_dim)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        layer_scale: float | None = None,
        qk_norm: bool = False,
        qk_to_v_dtype: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, qk_to_v_dtype=qk_to_v_dtype)
        self.ls1: nn.Module = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: Tensor, rope: RopeArg = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
