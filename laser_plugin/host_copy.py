"""Device-to-host copies of a window's finished arrays, with one wait for all of them.

Why: ``tensor.cpu()`` into ordinary (pageable) memory is a synchronous copy through the driver's
staging buffer. Next to a busy network (SPEED_NOTES run 8m, VGGT) the ~12 MB depth and confidence
arrays took 5-9 ms each that way and every copy waited for the GPU on its own. Here the copies are
queued into page-locked staging buffers, one event is waited for, and the arrays are copied out
into ordinary numpy memory on the host. The staging buffers are reused from window to window, so
the page-locked memory stays bounded (a few windows' worth) whatever the caller keeps: frames never
point into page-locked memory.

On the CPU the arrays are returned as they are (views, no copies), as ``.cpu().numpy()`` did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class HostCopier:
    """Copies groups of device tensors to numpy arrays with one synchronisation per group.

    Not thread-safe: one aligning thread uses one copier (the engine owns one)."""

    def __init__(self, pinned: bool = True) -> None:
        self.pinned = pinned
        """False: one synchronous ``.cpu()`` per tensor (the behaviour before; benchmarks)."""
        self._staging: dict[tuple[int, torch.dtype], Tensor] = {}

    def _buffer(self, slot: int, t: Tensor) -> Tensor:
        """The page-locked (numel,) buffer of argument ``slot``, grown as needed, then reused."""
        key = (slot, t.dtype)
        buf = self._staging.get(key)
        if buf is None or buf.numel() < t.numel():
            buf = torch.empty(max(t.numel(), 1), dtype=t.dtype, pin_memory=True)
            self._staging[key] = buf
        return buf[: t.numel()]

    def __call__(self, tensors: Sequence[Tensor | None]) -> list[np.ndarray | None]:
        """numpy copies (CUDA) or views (CPU) of ``tensors``, in order; ``None`` stays ``None``."""
        if not self.pinned or not any(t is not None and t.is_cuda for t in tensors):
            return [None if t is None else t.detach().cpu().numpy() for t in tensors]
        staged = []
        for slot, t in enumerate(tensors):
            if t is None:
                staged.append(None)
                continue
            buf = self._buffer(slot, t)
            buf.copy_(t.detach().reshape(-1), non_blocking=True)
            staged.append((buf, t.shape))
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
        # Copy out of the staging buffers (numpy's copy releases the interpreter's lock).
        return [None if s is None else s[0].numpy().reshape(s[1]).copy() for s in staged]

    def clear(self) -> None:
        """Release the page-locked buffers (to the allocator's cache)."""
        self._staging.clear()
