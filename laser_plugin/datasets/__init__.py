"""Readers for the standard benchmarks, each yielding :class:`Sequence` objects.

``load_dataset(name, root)`` dispatches by name; each reader is one small module documenting
its on-disk layout.
"""

from __future__ import annotations

from pathlib import Path

from laser_plugin.datasets.base import Sequence as Sequence
from laser_plugin.errors import ConfigError, InputError

DATASETS = ("tum", "bonn", "kitti", "sintel", "scannet", "7scenes", "nrgbd", "synthetic")


def load_dataset(name: str, root: str | Path | None, **kw) -> list[Sequence]:
    """All sequences of dataset ``name`` under ``root`` (for ``synthetic``: scene names)."""
    if name == "synthetic":
        from laser_plugin.datasets import synthetic

        return synthetic.load(None if root is None else str(root), **kw)
    if root is None:
        raise InputError(f"dataset {name!r} needs a DATASET_ROOT directory")
    root = Path(root).expanduser()
    if name == "tum":
        from laser_plugin.datasets import tum as mod
    elif name == "bonn":
        from laser_plugin.datasets import bonn as mod
    elif name == "kitti":
        from laser_plugin.datasets import kitti as mod
    elif name == "sintel":
        from laser_plugin.datasets import sintel as mod
    elif name == "scannet":
        from laser_plugin.datasets import scannet as mod
    elif name == "7scenes":
        from laser_plugin.datasets import sevenscenes as mod
    elif name == "nrgbd":
        from laser_plugin.datasets import nrgbd as mod
    else:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return mod.load(root, **kw)


__all__ = ["DATASETS", "Sequence", "load_dataset"]
