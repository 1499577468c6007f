"""Our full-size π³ and VGGT modules have exactly the upstream parameter names and shapes.

The manifests are generated from the upstream model classes by ``benchmarks/gen_manifests.py``;
the modules are built on the meta device, so this costs no memory.
"""

import json
from pathlib import Path

import pytest
import torch

from laser_plugin.models import pi3, vggt

MANIFESTS = Path(pi3.__file__).parent / "manifests"


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    assert data["num_tensors"] == len(data["keys"])
    return {k: tuple(v) for k, v in data["keys"].items()}


def _ours(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_pi3_matches_upstream_manifest_exactly():
    expected = _manifest("pi3")
    ours = _ours(pi3.build_net("large", device="meta"))
    assert sorted(ours.keys() - expected.keys()) == []
    assert sorted(expected.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(torch.Size(s).numel() for s in ours.values()) == 958_696_738


def test_vggt_matches_upstream_manifest_except_the_unused_track_head():
    expected = _manifest("vggt")
    ignored = {k for k in expected if k.startswith(vggt.CHECKPOINT.ignore_prefixes)}
    assert len(ignored) == 394  # the tracking head exists upstream and is skipped on purpose
    ours = _ours(vggt.build_net("large", device="meta"))
    assert sorted(ours.keys() - expected.keys()) == []
    assert sorted(expected.keys() - ignored - ours.keys()) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_manifest_records_its_provenance(name):
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    assert data["command"].startswith("python benchmarks/gen_manifests.py")
    assert data["upstream"].startswith("https://github.com/")
    assert data["revision"]
