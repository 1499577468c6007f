"""Resumable runs: the engine state after each window, saved atomically under ``OUT/state/``.

A window is the unit of work: after the run writer has fsynced a window's frames, the state
needed to continue (the final estimates of the last L-1 frames, which the next window overlaps,
the frames held back in "later" mode, counters and the model size) is written to one ``.npz``
file by rename, so a stop at any instant leaves either the previous window's state or this one's.

On resume the source is decoded again from the start; the windows already done are scheduled but
neither predicted nor aligned, so the next window sees exactly the overlap it would have seen in
an uninterrupted run. Nothing is unpickled: arrays go through ``np.load(allow_pickle=False)`` and
metadata through JSON.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laser_plugin.errors import ConfigError, OutputError
from laser_plugin.io.atomic import write_bytes_atomic
from laser_plugin.types import ReconstructedFrame

STATE_VERSION = 1
STATE_FILE = Path("state") / "engine.npz"

# Settings that change the result; a resumed run must use the same ones.
_FINGERPRINT_KEYS = (
    "input",
    "model",
    "weights",
    "laser",
    "stride",
    "fps",
    "max_frames",
    "save_source_images",
    "outputs",
    "loop_closure",
    "loop",
)


@dataclass
class EngineState:
    """What :class:`~laser_plugin.engine.StreamingReconstructor` needs to continue a stream."""

    num_windows: int
    """Windows fully processed (the next window to run has this index)."""
    num_frames: int
    """Frames emitted to the sinks so far."""
    model_size: tuple[int, int] | None
    first_source_size: tuple[int, int] | None
    cache: dict[int, dict[str, np.ndarray | None]] = field(default_factory=dict)
    """index -> final estimate of the frame (depth, confident, cam_to_world, intrinsics, labels,
    depth_strided), for the frames a later window may overlap."""
    held: list[ReconstructedFrame] = field(default_factory=list)
    """Frames finalised by the next window in "later" mode (not yet emitted)."""
    settings: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> a hook's own state (``{"meta": JSON-able, "arrays": {name: array}}``), e.g. loop
    closure's pose graph and keyframe index."""


def _cache_fields() -> list[str]:
    """Every per-frame field of the engine's overlap cache (whatever the engine adds later)."""
    import dataclasses

    from laser_plugin.engine import _Final

    return [f.name for f in dataclasses.fields(_Final) if f.name != "index"]


_FRAME_ARRAYS = (
    "image",
    "cam_to_world",
    "intrinsics",
    "depth",
    "conf",
    "layers",
    "layer_scales",
    "source_image",
)


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def capture(engine, settings: dict[str, Any] | None = None) -> EngineState:
    """Snapshot the engine between windows (cheap: the cache is L-1 frames)."""
    cache = {
        idx: {name: _np(getattr(f, name, None)) for name in _cache_fields()}
        for idx, f in engine.stream.cache.items()
    }
    stream = engine.stream
    return EngineState(
        num_windows=engine.num_windows,
        num_frames=engine.num_frames,
        model_size=tuple(stream.model_size) if stream.model_size else None,
        first_source_size=tuple(stream.first_source_size) if stream.first_source_size else None,
        cache=cache,
        held=list(stream.held),
        settings=dict(settings or {}),
        hooks={h.name: h.capture() for h in getattr(engine, "hooks", ())},
    )


def to_bytes(state: EngineState) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "version": STATE_VERSION,
        "num_windows": state.num_windows,
        "num_frames": state.num_frames,
        "model_size": state.model_size,
        "first_source_size": state.first_source_size,
        "cache": sorted(state.cache),
        "held": [],
        "settings": state.settings,
        "hooks": {name: h["meta"] for name, h in state.hooks.items()},
    }
    packed: dict[str, Any] = {}
    for idx, entry in state.cache.items():
        for name, arr in entry.items():
            if arr is not None:
                key = f"cache/{idx}/{name}"
                arrays[key] = _pack(key, np.asarray(arr), packed)
    for k, f in enumerate(state.held):
        meta["held"].append({"index": f.index, "timestamp": f.timestamp, "window": f.window})
        for name in _FRAME_ARRAYS:
            arr = getattr(f, name)
            if arr is not None:
                arrays[f"held/{k}/{name}"] = np.asarray(arr)
    for name, h in state.hooks.items():
        for key, arr in h["arrays"].items():
            arrays[f"hook/{name}/{key}"] = np.asarray(arr)
    meta["packed"] = packed
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=_json_default).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_bytes(data: bytes) -> EngineState:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    if meta.get("version") != STATE_VERSION:
        raise OutputError(
            f"resume state has version {meta.get('version')}, this laser reads {STATE_VERSION}"
        )
    for key, how in meta.get("packed", {}).items():
        arrays[key] = _unpack(arrays[key], how)
    cache = {
        int(idx): {name: arrays.get(f"cache/{idx}/{name}") for name in _cache_fields()}
        for idx in meta["cache"]
    }
    held = []
    for k, h in enumerate(meta["held"]):
        kw = {name: arrays.get(f"held/{k}/{name}") for name in _FRAME_ARRAYS}
        held.append(
            ReconstructedFrame(index=h["index"], timestamp=h["timestamp"], window=h["window"], **kw)
        )
    return EngineState(
        num_windows=int(meta["num_windows"]),
        num_frames=int(meta["num_frames"]),
        model_size=tuple(meta["model_size"]) if meta["model_size"] else None,
        first_source_size=tuple(meta["first_source_size"]) if meta["first_source_size"] else None,
        cache=cache,
        held=held,
        settings=meta.get("settings", {}),
        hooks={
            name: {
                "meta": hmeta,
                "arrays": {
                    k.split("/", 2)[2]: v
                    for k, v in arrays.items()
                    if k.startswith(f"hook/{name}/")
                },
            }
            for name, hmeta in meta.get("hooks", {}).items()
        },
    )


def restore(engine, state: EngineState) -> None:
    """Put a saved state into an engine whose ``run`` has just reset its per-stream fields."""
    from laser_plugin.engine import StreamState, _Final

    dev = engine.device

    def t(a):
        return None if a is None else torch.from_numpy(np.array(a)).to(dev)

    engine.stream = StreamState(
        cache={
            idx: _Final(idx, **{name: t(e.get(name)) for name in _cache_fields()})
            for idx, e in state.cache.items()
        },
        held=list(state.held),
        model_size=state.model_size,
        first_source_size=state.first_source_size,
    )
    engine.num_windows = state.num_windows
    engine.num_frames = state.num_frames


def save_state(out_dir: Path, state: EngineState) -> None:
    path = Path(out_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, to_bytes(state))


def load_state(out_dir: Path) -> EngineState | None:
    """The saved state of a run directory, or None when no window had completed."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OutputError(f"cannot read the resume state {path}: {exc.strerror or exc}") from None
    try:
        return from_bytes(data)
    except (
        ValueError,  # also JSONDecodeError, UnicodeDecodeError, a bad .npy header
        KeyError,
        TypeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,  # truncated (a full disk, a copy cut short)
        zlib.error,
    ) as exc:
        lines = str(exc).strip().splitlines()
        why = lines[0] if lines else type(exc).__name__
        raise OutputError(
            f"cannot read the resume state {path}: it is damaged ({why}); the frames written so "
            "far are untouched: export or view them as they are, or start again with --overwrite"
        ) from None


def read_settings(out_dir: Path, key: str = "settings", strict: bool = False) -> Any:
    """``key`` of the summary.json of a run directory (settings by default; {} if unreadable).

    ``strict``: a damaged summary.json raises :class:`~laser_plugin.errors.InputError` (one
    line) instead, as a resume must not guess what the run was."""
    if strict:
        from laser_plugin.io.run_dir import read_summary

        return read_summary(out_dir).get(key, {})
    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary.get(key, {}) if isinstance(summary, dict) else {}


def fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's settings that must match for a resume to give the same result."""
    return json.loads(
        json.dumps({k: settings.get(k) for k in _FINGERPRINT_KEYS}, default=_json_default)
    )


def input_fingerprint(source: Any) -> dict[str, Any] | None:
    """What identifies the input's content, cheaply, for ``settings["input_digest"]``.

    An image folder: the image files' names, sizes and modification times (hashed, with their
    count); a file: its size and modification time, and for a video its stream's codec, size,
    frame count and rate. Reading every byte would cost as much as decoding; a changed folder or
    re-encoded video changes these. None for in-memory sources (nothing to compare).
    """
    import hashlib
    import os

    from laser_plugin.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if not isinstance(source, (str, Path)):
        return None
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            rows = []
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                st = entry.stat()
                rows.append(f"{entry.name}\t{st.st_size}\t{st.st_mtime_ns}")
            digest = hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape"))
            return {"kind": "folder", "files": len(rows), "sha256": digest.hexdigest()}
        st = path.stat()
    except OSError:
        return None
    out: dict[str, Any] = {"kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
        try:
            import av

            with av.open(str(path)) as container:
                v = container.streams.video[0]
                out["stream"] = {
                    "codec": v.codec_context.name,
                    "width": v.codec_context.width,
                    "height": v.codec_context.height,
                    "frames": int(v.frames or 0),
                    "rate": str(v.average_rate),
                }
        except Exception:  # unreadable here: the run itself reports it in one line
            pass
    return out


def _check_input(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume on an input that changed since the run started (frame N would no longer
    be the frame the saved state continues from)."""
    a, b = saved.get("input_digest"), current.get("input_digest")
    if a is None or b is None or a == b:  # runs saved before input digests: nothing to compare
        return
    if a.get("kind") == "folder" and b.get("kind") == "folder" and a.get("files") != b.get("files"):
        detail = f"{a.get('files')} images then, {b.get('files')} now"
    elif a.get("kind") == "folder" and b.get("kind") == "folder":
        detail = "image files were replaced or modified"
    elif a.get("size") != b.get("size"):
        detail = f"{a.get('size')} bytes then, {b.get('size')} now"
    else:
        detail = "the file was modified"
    raise ConfigError(
        f"cannot resume: the input {current.get('input') or ''} changed since the run started "
        f"({detail}); resume with the same input, or --overwrite to start again"
    )


def check_settings(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` naming the first setting that differs (then a
    changed input, see :func:`input_fingerprint`)."""
    a, b = fingerprint(saved), fingerprint(current)
    for key in _FINGERPRINT_KEYS:
        if a.get(key) == b.get(key):
            continue
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            for sub in sorted(set(a[key]) | set(b[key])):
                if a[key].get(sub) != b[key].get(sub):
                    raise ConfigError(
                        f"cannot resume: {key}.{sub} was {a[key].get(sub)!r}, now {b[key].get(sub)!r} "
                        "(use the same settings, or --overwrite to start again)"
                    )
        raise ConfigError(
            f"cannot resume: {key} was {a.get(key)!r}, now {b.get(key)!r} "
            "(use the same settings, or --overwrite to start again)"
        )
    _check_input(saved, current)


class StateSaver:
    """A sink, placed after the run writer, that saves the engine state between windows.

    A save writes the L-1 cached frames (about 12 MB at 518x294 with L=20: a few tenths of a
    second with fsync), so it happens at most every ``interval_s`` seconds (0: after every
    window); a resumed run restarts from the last save and recomputes the frames after it, with
    the same result. ``essential``: if the state cannot be written (disk full), the run stops
    rather than going on without the ability to resume.
    """

    essential = True
    wants_state = True

    def __init__(
        self,
        engine,
        out_dir: Path,
        settings: dict[str, Any],
        interval_s: float = 0.0,
        before_save=None,
    ):
        self.engine = engine
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.interval_s = interval_s
        # The run writer's wait_durable: it commits frames in its own thread, and a state must
        # never count frames that frames.jsonl does not hold yet.
        self.before_save = before_save
        self._last = time.monotonic()

    def on_frame(self, frame: ReconstructedFrame) -> None:
        pass

    def due(self) -> bool:
        """Whether the state of the window just aligned should be saved (asked by the run loop,
        which then captures it, in the aligning thread, and calls :meth:`on_state` after the
        window's other sink calls)."""
        if self.interval_s > 0 and time.monotonic() - self._last < self.interval_s:
            return False
        self._last = time.monotonic()
        return True

    def on_state(self, state: EngineState) -> None:
        if self.before_save is not None:
            self.before_save()
        state = dataclasses.replace(state, settings=dict(self.settings))
        try:
            save_state(self.out_dir, state)
        except OSError as exc:
            raise OutputError(
                f"cannot write the resume state in {self.out_dir}: {exc.strerror or exc} "
                # The write is atomic: the previous state stays, and the run continues from it.
                "(the frames saved so far are kept; the run can be resumed with --resume)"
            ) from None

    def close(self) -> None:
        pass


def _pack(key: str, arr: np.ndarray, packed: dict[str, Any]) -> np.ndarray:
    """Shrink masks (8 per byte) and small-range integer labels (int16), losslessly."""
    if arr.dtype == np.bool_:
        packed[key] = {"kind": "bits", "shape": list(arr.shape)}
        return np.packbits(arr.reshape(-1))
    if (
        arr.dtype.kind == "i"
        and arr.itemsize > 2
        and arr.size
        and arr.min() >= -32768
        and arr.max() < 32768
    ):
        packed[key] = {"kind": "int16", "dtype": arr.dtype.str}
        return arr.astype(np.int16)
    return arr


def _unpack(arr: np.ndarray, how: dict[str, Any]) -> np.ndarray:
    if how["kind"] == "bits":
        shape = tuple(how["shape"])
        return np.unpackbits(arr, count=int(np.prod(shape))).astype(np.bool_).reshape(shape)
    return arr.astype(np.dtype(how["dtype"]))


def _json_default(obj: Any):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
