"""Several devices for one stream: device names (``--devices``) and model replicas.

The run loop spreads windows over the replicas with :class:`laser_plugin.predictors.Replicas`
(threads) or over worker processes with :class:`laser_plugin.predictors.Workers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from laser_plugin.errors import ConfigError


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """``"cuda:0,cuda:1"`` (or a list), ``"all"`` (every visible GPU) -> validated device names.

    Repeating a device is allowed (``"cpu,cpu"``: two replicas on one device, used by tests).
    """

    if isinstance(spec, str):
        if spec.strip() == "all":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                raise ConfigError("--devices all: no CUDA device is visible")
            return [f"cuda:{i}" for i in range(n)]
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in spec]
    if not names:
        raise ConfigError("--devices is empty; give e.g. cuda:0,cuda:1 or all")
    out = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(
                f"--devices: {name!r} is not a device name (e.g. cuda:0, cpu)"
            ) from None
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = 0 if dev.index is None else dev.index
            if index >= count:
                raise ConfigError(
                    f"--devices: {name} is not available ({count} CUDA device(s) visible)"
                )
            out.append(f"cuda:{index}")
        elif dev.type == "cpu":
            out.append("cpu")
        else:
            out.append(str(dev))
    return out


def load_replicas(name: str, devices: Sequence[str], weights: str | None = None, **kwargs) -> list:
    """One model per device through the registry (``load_model``), in the order of ``devices``."""
    from laser_plugin.models import load_model

    return [load_model(name, weights=weights, device=d, **kwargs) for d in devices]
