"""Checkpoint loading: safe formats only, local files first, the model hub when online.

- ``.safetensors`` is read with :mod:`safetensors`; anything else with
  ``torch.load(weights_only=True)``, which refuses pickles that would construct arbitrary
  objects or run code.
- A path is tried first, then the default location ``$LASER_WEIGHTS_DIR/<model>/<file>``
  (default ``~/.cache/laser-plugin/weights``), then a hub id (``owner/name`` or
  ``owner/name/file``) through :mod:`huggingface_hub` (its local cache first, then the network).
- Every failure is a one-line :class:`~laser_plugin.errors.WeightsError` that says what to download
  and where to put it.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from laser_plugin.errors import WeightsError


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's released weights live and under which terms."""

    model: str
    """Short name (``pi3``, ``vggt``), also the sub-folder of the default weights directory."""
    hub_repo: str
    """Model-hub repository id."""
    filename: str
    """File inside the repository."""
    license: str
    """Licence of the weights (not of our code)."""
    ignore_prefixes: tuple[str, ...] = ()
    """Checkpoint keys we knowingly do not load (heads this backend never runs)."""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hub_repo}/resolve/main/{self.filename}"

    @property
    def default_path(self) -> Path:
        root = (
            os.environ.get("LASER_WEIGHTS_DIR")
            or Path.home() / ".cache" / "laser-plugin" / "weights"
        )
        return Path(root) / self.model / self.filename

    def hint(self) -> str:
        return (
            f"download {self.filename} from {self.url} ({self.license}) and put it at "
            f"{self.default_path} or pass its path with --weights"
        )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")


def resolve(spec: str | os.PathLike | None, info: CheckpointInfo) -> Path:
    """Find the checkpoint file for ``spec`` (a path, a hub id, or None for the default path)."""
    if spec is None:
        if info.default_path.is_file():
            return info.default_path
        raise WeightsError(f"no {info.model} weights given: {info.hint()}")
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / info.filename
    if path.is_file():
        return path
    text = str(spec)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise WeightsError(f"{info.model} weights not found at {spec}: {info.hint()}")
    return _hub_download(text, info)


def _hub_download(hub_id: str, info: CheckpointInfo) -> Path:
    parts = hub_id.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or info.filename
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsError(f"huggingface_hub is not installed: {info.hint()}") from None
    for local_only in (True, False):
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=local_only))
        except Exception as exc:  # offline, gated, missing file...
            error = exc
    raise WeightsError(
        f"could not get {filename} from the model hub repository {repo} "
        f"({type(error).__name__}): {info.hint()}"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, on the CPU, without running any code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file (truncated?): {exc}"
            ) from None
    try:
        try:
            # Memory-mapped: a 5 GB checkpoint is not read into memory twice.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be mapped
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"refusing to load {path}: it is not a plain tensor checkpoint ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a readable torch checkpoint (truncated?): {first}"
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    # Training checkpoints often nest the weights one level down.
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not contain a state dict of tensors")
    return dict(obj)


def _examples(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], name: str, ignore_prefixes: tuple[str, ...] = ()
) -> dict[str, Tensor]:
    """The entries of ``state`` that ``model`` takes, after checking names and shapes exactly.

    Keys under ``ignore_prefixes`` are dropped (they must still be present in a genuine
    checkpoint only if the caller checks that separately); anything else missing, unexpected or
    of another shape is a :class:`WeightsError`.
    """
    expected = model.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = expected.keys() - kept.keys()
    unexpected = kept.keys() - expected.keys()
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in kept.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape ({'; '.join(sorted(wrong)[:2])})")
    if problems:
        raise WeightsError(
            f"checkpoint is not a {name} checkpoint of this size: " + "; ".join(problems)
        )
    return kept


def from_pretrained(
    model: nn.Module, spec: str | os.PathLike | None, info: CheckpointInfo, quiet: bool = False
) -> Path:
    """Resolve, read, check and load ``spec`` into ``model`` (strictly); returns the file used.

    ``model`` may live on the meta device: tensors are then assigned, not copied.
    """
    path = resolve(spec, info)
    state = read_state_dict(path)
    kept = check_state_dict(model, state, info.model, info.ignore_prefixes)
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(kept, strict=True, assign=on_meta)
    if not quiet:
        print(f"loaded {info.model} weights from {path} (licence: {info.license})", file=sys.stderr)
    return path


def save_weights(model: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write a state dict as ``.safetensors`` (or torch format for any other suffix)."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
