"""A CUDA stream confined to some of a GPU's SMs (a CUDA green context), for the network.

Why: with the network and the alignment in one process on one GPU (``WorkerPool(...,
in_process_first=True)``), the alignment's ~2000 small kernels per window run between the
network's. Each waits until a network thread block leaves an SM (attention blocks run ~0.3 ms,
and a kernel's blocks start and end together), so a window's alignment took ~135 ms next to VGGT's
network against ~23 ms alone (SPEED_NOTES runs 8m, 9a). Confining the network to most of the SMs
leaves a few always free: the alignment's kernels start at once there. The network loses little
where its grids are a whole number of waves either way.

The driver API is called through ctypes (``libcuda``): PyTorch's own green-context wrapper changed
between releases and, in some, only offers the legacy default stream, which CUDA graphs cannot be
captured on. A kernel launched into the returned stream, or a CUDA graph replayed into it, runs on
the partition's SMs only.
"""

from __future__ import annotations

import ctypes
import functools

import torch

_RESOURCE_BYTES = (
    1024  # CUdevResource is 144-160 bytes depending on the CUDA version: room to spare
)
_SM_COUNT_OFFSET = 96  # CUdevResource: int type, 92 bytes of padding, then CUdevSmResource.smCount
_CU_DEV_RESOURCE_TYPE_SM = 1
_CU_GREEN_CTX_DEFAULT_STREAM = 1
_CU_STREAM_NON_BLOCKING = 1


@functools.cache
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(result: int, call: str) -> None:
    if result != 0:
        msg = ctypes.c_char_p()
        _driver().cuGetErrorString(result, ctypes.byref(msg))
        text = msg.value.decode() if msg.value else f"CUresult {result}"
        raise RuntimeError(f"{call} failed: {text}")


class PartitionedStream:
    """``stream`` (a ``torch.cuda.ExternalStream``) runs its kernels on ``num_sms`` SMs of
    ``device``; the other ``free_sms`` SMs never receive them. Keep this object alive as long
    as the stream is used (it owns the green context)."""

    def __init__(self, device: torch.device | str, num_sms: int, priority: int = 0) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"SM partitions exist on CUDA devices only, not {device}")
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).multi_processor_count
        if not 0 < num_sms <= total:
            raise ValueError(f"num_sms must be in 1..{total}, not {num_sms}")
        torch.cuda.init()  # the primary context exists before the green one (driver advice)
        torch.zeros(1, device=f"cuda:{index}")
        cu = _driver()
        dev = ctypes.c_int()
        _check(cu.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        whole = ctypes.create_string_buffer(_RESOURCE_BYTES)
        part = ctypes.create_string_buffer(_RESOURCE_BYTES)
        rest = ctypes.create_string_buffer(_RESOURCE_BYTES)
        _check(
            cu.cuDeviceGetDevResource(dev, whole, _CU_DEV_RESOURCE_TYPE_SM),
            "cuDeviceGetDevResource",
        )
        groups = ctypes.c_uint(1)
        # One group of at least num_sms SMs (the driver rounds up to its granularity, 8 on Hopper).
        _check(
            cu.cuDevSmResourceSplitByCount(
                part, ctypes.byref(groups), whole, rest, ctypes.c_uint(0), ctypes.c_uint(num_sms)
            ),
            "cuDevSmResourceSplitByCount",
        )
        if groups.value != 1:
            raise RuntimeError(f"could not set aside {num_sms} of {total} SMs")
        desc = ctypes.c_void_p()
        _check(
            cu.cuDevResourceGenerateDesc(ctypes.byref(desc), part, 1), "cuDevResourceGenerateDesc"
        )
        self._green = ctypes.c_void_p()
        _check(
            cu.cuGreenCtxCreate(
                ctypes.byref(self._green), desc, dev, ctypes.c_uint(_CU_GREEN_CTX_DEFAULT_STREAM)
            ),
            "cuGreenCtxCreate",
        )
        raw = ctypes.c_void_p()
        _check(
            cu.cuGreenCtxStreamCreate(
                ctypes.byref(raw),
                self._green,
                ctypes.c_uint(_CU_STREAM_NON_BLOCKING),
                ctypes.c_int(priority),
            ),
            "cuGreenCtxStreamCreate",
        )
        self.num_sms = int.from_bytes(part.raw[_SM_COUNT_OFFSET : _SM_COUNT_OFFSET + 4], "little")
        self.free_sms = total - self.num_sms
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.ExternalStream(raw.value, device=self.device)

    def __repr__(self) -> str:
        return f"PartitionedStream({self.device}, {self.num_sms} SMs, {self.free_sms} left free)"
