"""Regenerate the key manifests of the released π³ and VGGT networks from the UPSTREAM code.

    python benchmarks/gen_manifests.py                      # clones both upstream repos (network)
    python benchmarks/gen_manifests.py --pi3-src DIR --vggt-src DIR   # already checked-out sources

Each upstream repository is cloned into a temporary directory outside this repository (or read
from ``--*-src``: the folder that contains the ``pi3`` / ``vggt`` package), its top-level model
class is built on the meta device (no memory, no weights) and every state-dict entry's name and
shape is written to ``laser_plugin/models/manifests/<model>.json``. Needs torch, einops and
huggingface_hub (the upstream modules import them). Nothing of upstream is copied into this
repository; ``tests/test_models_manifest.py`` checks our modules against these files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "laser_plugin" / "models" / "manifests"
UPSTREAM = {
    "pi3": {"repo": "https://github.com/yyfz/Pi3", "package": "pi3", "cls": "pi3.models.pi3:Pi3"},
    "vggt": {
        "repo": "https://github.com/facebookresearch/vggt",
        "package": "vggt",
        "cls": "vggt.models.vggt:VGGT",
    },
}


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def upstream_source(name: str, src: str | None) -> Iterator[tuple[Path, str]]:
    """Yield (folder containing the package, description of the revision)."""
    if src:
        root = Path(src).resolve()
        try:
            rev = _git("rev-parse", "HEAD", cwd=root)
        except (subprocess.CalledProcessError, FileNotFoundError):
            rev = "unknown (not a git checkout)"
        yield root, rev
        return
    with tempfile.TemporaryDirectory(prefix=f"laser-upstream-{name}-") as tmp:
        _git("clone", "--depth", "1", UPSTREAM[name]["repo"], tmp)
        yield Path(tmp), _git("rev-parse", "HEAD", cwd=Path(tmp))


@contextlib.contextmanager
def meta_construction() -> Iterator[None]:
    # DINOv2's constructor calls .item() on a linspace (stochastic-depth rates), which the meta
    # device cannot answer; run that one factory on the CPU.
    original = torch.linspace

    def cpu_linspace(*args, **kwargs):
        kwargs["device"] = "cpu"
        return original(*args, **kwargs)

    torch.linspace = cpu_linspace
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.linspace = original


def build_manifest(name: str, root: Path, rev: str) -> dict:
    sys.path.insert(0, str(root))
    try:
        module_name, cls_name = UPSTREAM[name]["cls"].split(":")
        module = __import__(module_name, fromlist=[cls_name])
        with meta_construction():
            model = getattr(module, cls_name)()
    finally:
        sys.path.remove(str(root))
    state = model.state_dict()
    return {
        "model": name,
        "upstream": UPSTREAM[name]["repo"],
        "revision": rev,
        "class": UPSTREAM[name]["cls"],
        "command": "python benchmarks/gen_manifests.py",
        "num_tensors": len(state),
        "num_values": int(sum(t.numel() for t in state.values())),
        "keys": {k: list(t.shape) for k, t in state.items()},
    }


def to_json(manifest: dict) -> str:
    """JSON with one tensor per line (reviewable diffs)."""
    head = {k: v for k, v in manifest.items() if k != "keys"}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "keys": {']
    items = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest["keys"].items()]
    return "\n".join(lines) + "\n" + ",\n".join(items) + "\n }\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pi3-src", help="folder containing the upstream 'pi3' package (default: git clone)"
    )
    parser.add_argument(
        "--vggt-src", help="folder containing the upstream 'vggt' package (default: git clone)"
    )
    parser.add_argument("--pi3-rev", help="describe the --pi3-src revision (default: its git HEAD)")
    parser.add_argument(
        "--vggt-rev", help="describe the --vggt-src revision (default: its git HEAD)"
    )
    parser.add_argument("--out", type=Path, default=MANIFEST_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, src, rev_text in (
        ("pi3", args.pi3_src, args.pi3_rev),
        ("vggt", args.vggt_src, args.vggt_rev),
    ):
        with upstream_source(name, src) as (root, rev):
            manifest = build_manifest(name, root, rev_text or rev)
        path = args.out / f"{name}.json"
        path.write_text(to_json(manifest))
        print(
            f"{path}: {manifest['num_tensors']} tensors, {manifest['num_values'] / 1e6:.1f} M values"
        )


if __name__ == "__main__":
    main()
