"""What the π³ and VGGT wrappers share at run time: device/precision choice and input checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from laser_plugin.errors import ConfigError, InputError

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU; use --device cpu"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute precision: bf16 autocast on CUDA, fp32 on the CPU, unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of bf16, fp32")
        dtype = _DTYPES[dtype]
    if dtype not in (torch.bfloat16, torch.float32):
        raise ConfigError(f"unsupported dtype {dtype}; use bf16 or fp32")
    return dtype


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """bf16 autocast of the transformer trunk (the heads opt out inside the networks)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def check_images(images: Tensor, patch_size: int = 14) -> Tensor:
    """(L, 3, H, W) float in [0, 1] with H, W multiples of ``patch_size``; returns float32."""
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise InputError(f"images must be (L, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise InputError(
            f"image size {h}x{w} is not a multiple of {patch_size}; resize with input_size()"
        )
    return images.float()


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast for the output heads (both upstream models run them in fp32)."""
    return torch.autocast(device_type=device_type, enabled=False)


def pil_resize(image: np.ndarray, size_hw: tuple[int, int], resample: str) -> Tensor:
    """(H0, W0, 3) uint8 -> (3, H, W) float32 in [0, 1], resized with PIL as upstream does
    (``resample``: "lanczos" for π³, "bicubic" for VGGT)."""
    from PIL import Image

    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
    ):
        raise InputError("image must be an (H, W, 3) uint8 array")
    h, w = size_hw
    pil = Image.fromarray(image)
    if (pil.height, pil.width) != (h, w):
        method = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[
            resample
        ]
        pil = pil.resize((w, h), method)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().div_(255.0)
