"""Atomic file writes: write a sibling temporary file, then rename it over the target.

A reader (or a run interrupted at any instant) sees either the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def _json_default(obj: Any):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _load_syncfs():
    """libc's syncfs(2) (Linux), or None."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def have_syncfs() -> bool:
    return _SYNCFS is not None


def sync_filesystem(path: Path) -> None:
    """Make every file written on ``path``'s filesystem durable, names included, in one call.

    A window of frames is some 50 new files: one ``syncfs`` is one journal commit where an fsync
    per file is one each (slow disks take milliseconds per commit). It also flushes other
    processes' pending writes on that filesystem, which costs time but never correctness. Raises
    OSError where the kernel reports a write-back error (Linux 5.8+).
    """
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS is None:
            raise OSError("syncfs is not available here")
        if _SYNCFS(fd) != 0:  # a foreign call: the GIL is released while it waits
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
