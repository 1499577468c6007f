"""Device-to-host copies of several tensors at once."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_host(*tensors: Tensor | None, pack: bool | None = None) -> list[np.ndarray | None]:
    """Tensors (any shapes and dtypes, all on one device) -> numpy arrays; None stays None.

    On the CPU the arrays are views (no copy). On a GPU the tensors travel as the bytes of one
    buffer: one copy and one host synchronisation instead of one each, which matters where the
    synchronisation waits behind another stream's work (a network sharing the GPU). Widest
    dtypes go first, so every array starts aligned to its itemsize. ``pack`` forces the packed
    path (default: on a GPU).
    """
    present = [t for t in tensors if t is not None]
    if not present or not (present[0].is_cuda if pack is None else pack):
        return [None if t is None else t.numpy() for t in tensors]
    order = sorted(
        (i for i, t in enumerate(tensors) if t is not None),
        key=lambda i: -tensors[i].element_size(),
    )
    parts = [tensors[i].contiguous().reshape(-1).view(torch.uint8) for i in order]
    host = torch.cat(parts).cpu().numpy()
    out: list[np.ndarray | None] = [None] * len(tensors)
    offset = 0
    for i, part in zip(order, parts, strict=True):
        t = tensors[i]
        size = part.numel()
        dtype = torch.empty(0, dtype=t.dtype).numpy().dtype
        out[i] = host[offset : offset + size].view(dtype).reshape(tuple(t.shape))
        offset += size
    return out
