"""Place descriptors from a network's own encoder tokens (for loop closure), at no extra pass.

π³ and VGGT both encode every frame with a DINOv2 ViT before their multi-view trunk. Those patch
tokens already describe what the frame shows and where, so a frame's global descriptor is pooled
from them inside the window call:

1. the (h, w) token grid is average-pooled into ``grid`` x ``grid`` cells (coarse layout: a revisit
   from a similar viewpoint keeps it, an unrelated view does not);
2. each cell's C-dim mean is mapped by one fixed random Gaussian projection to ``dim / grid²``
   values (Johnson-Lindenstrauss: cosine similarities are kept, the descriptor stays small:
   256 values, 512 bytes per keyframe in the loop index);
3. the frame's mean over its cells is subtracted: LayerNorm'd tokens share a large common
   component, which would make every pair of frames look alike; what remains is how the cells
   differ from each other, which no training-free statistic of other frames is needed for;
4. the result is L2-normalised (cosine similarity = dot product).

Pure and batched; float32 whatever the tokens' dtype.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

GRID = 4
DIM = 256
SEED = 0


@functools.lru_cache(maxsize=8)
def _projection(channels: int, out: int, device: str) -> Tensor:
    """(channels, out) fixed Gaussian projection, the same on every device and run."""
    gen = torch.Generator().manual_seed(SEED)
    proj = torch.randn(channels, out, generator=gen) / out**0.5
    return proj.to(device)


def place_descriptors(
    tokens: Tensor, hw: tuple[int, int], grid: int = GRID, dim: int = DIM
) -> Tensor:
    """Encoder patch tokens (N, h*w, C) of an (h, w) token grid -> (N, D) unit descriptors,
    D = grid² * (dim // grid²). See the module doc."""
    n, p, c = tokens.shape
    h, w = hw
    if p != h * w:
        raise ValueError(f"{p} tokens do not form a {h}x{w} grid")
    per_cell = max(1, dim // (grid * grid))
    x = tokens.float().reshape(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, h, w)
    cells = F.adaptive_avg_pool2d(x, (min(grid, h), min(grid, w))).flatten(2).transpose(1, 2)
    z = cells @ _projection(c, per_cell, str(tokens.device))  # (N, cells, per_cell)
    z = z - z.mean(dim=1, keepdim=True)
    return F.normalize(z.flatten(1), dim=1)
