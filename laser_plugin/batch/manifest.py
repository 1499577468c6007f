"""Batch manifests: which videos to reconstruct, and the name of each one's run directory.

Three formats, chosen by suffix:

- ``.csv``: a header row with a ``path`` column and an optional ``name`` column;
- ``.jsonl``: one object per line, ``{"path": ..., "name": ...}`` (``name`` optional);
- anything else: plain text, one video file or image folder per line (lines starting with ``#``
  are comments).

Relative paths are relative to the manifest's folder. A name defaults to the input's stem; names
that collide get a short hash of the absolute path, so each video has a stable output directory
(which is what makes a batch resumable).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from laser_plugin.errors import ConfigError, InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Job:
    """One video of a batch."""

    name: str
    """Name of its run directory under the output root (unique within the batch)."""
    path: str
    """Absolute path of the video file or image folder (as seen from the workers)."""


def safe_name(text: str) -> str:
    """A file-system-safe directory name: runs of other characters become ``_``."""
    name = _UNSAFE.sub("_", text.strip()).strip("_")
    if not name or set(name) == {"."}:
        raise ConfigError(f"cannot make an output directory name from {text!r}")
    return name


def _default_name(path: Path) -> str:
    return safe_name(path.stem if path.suffix else path.name)


def _entries(manifest: Path) -> list[tuple[str, str | None, str]]:
    """(path, name or None, where) triples; ``where`` names the line for error messages."""
    suffix = manifest.suffix.lower()
    text = manifest.read_text(encoding="utf-8-sig")
    out: list[tuple[str, str | None, str]] = []
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields:
            raise InputError(f"{manifest}: a CSV manifest needs a header row with a 'path' column")
        for row in reader:
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not any(row.values()):
                continue
            where = f"{manifest.name}:{reader.line_num}"
            if not row.get("path"):
                raise InputError(f"{where}: empty path")
            out.append((row["path"], row.get("name") or None, where))
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{manifest.name}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not JSON ({exc.msg})") from None
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("path"), str)
                or not obj["path"].strip()
            ):
                raise InputError(f"{where}: each line must be an object with a 'path' string")
            name = obj.get("name")
            out.append((obj["path"].strip(), str(name) if name not in (None, "") else None, where))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):  # no inline comments: '#' may be in a path
                out.append((line, None, f"{manifest.name}:{n}"))
    return out


def read_manifest(manifest: str | Path) -> list[Job]:
    """Parse ``manifest`` into jobs with unique, stable names (see the module docstring)."""
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}")
    base = manifest.resolve().parent
    entries = _entries(manifest)
    if not entries:
        raise InputError(f"manifest {manifest} lists no videos")
    paths = []
    for raw, _, _ in entries:
        p = Path(raw).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    explicit = [safe_name(name) if name else None for _, name, _ in entries]
    derived = [name or _default_name(p) for name, p in zip(explicit, paths)]
    counts = Counter(derived)
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for (_, _, where), p, given, name in zip(entries, paths, explicit, derived):
        if counts[name] > 1 and given is None:
            name = f"{name}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        if name in seen:
            raise ConfigError(
                f"{where}: output name {name!r} is already used by {seen[name]}; give unique names"
            )
        seen[name] = where
        jobs.append(Job(name, str(p)))
    return jobs
