"""The run directory: what ``laser run`` writes, and the one reader every integration uses.

Layout, format 2 (``FORMAT_VERSION``; format 1 is still read). A frame's line in ``frames.jsonl``
is appended only after its files are written and fsynced, so an interrupted run is a valid run
holding the frames finalised so far; ``--outputs`` chooses the optional parts::

    summary.json     settings, model, status (running|complete|interrupted|failed), counts, timings
    frames.jsonl     one JSON object per finalised frame
    trajectory.txt   TUM: timestamp tx ty tz qx qy qz qw (camera-to-world, OpenCV axes)
    intrinsics.txt   index fx fy cx cy width height
    images/NNNNNN.jpg   model-resolution RGB, JPEG quality 90
    depth/NNNNNN.npz    key "depth": float16 z-depth in scene units, 0 = invalid (float32 for a
                        frame whose depth exceeds float16's range); a frame a loop
                        correction rescaled also holds "depth_scale" ((1,) float64, the
                        factor; readers ignore it, loop closure divides it out when it
                        corrects the frame again)
    conf/NNNNNN.npz     key "conf": uint8, confidence = value / 255 (conf is in [0, 1])
    layers/NNNNNN.npz   key "layers": int16 depth-layer labels, -1 = none (outputs "layers")
    source/NNNNNN.jpg   original-resolution RGB, JPEG quality 95 (outputs "source"); otherwise
                        frames.jsonl names the frame in the input ("source_frame": decode index
                        in the video, or "source_file": a file name in the input folder) and
                        the reader decodes it from there
    points.ply          coloured global point cloud, voxel-downsampled and bounded ("points")

Format 1 wrote images/NNNNNN.png, float32 depth/NNNNNN.npy, float16 conf/NNNNNN.npy,
layers/NNNNNN.npy and source JPEGs by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser_plugin.errors import InputError, OutputError
from laser_plugin.geometry.camera import rotmat_to_quat_xyzw
from laser_plugin.geometry.lsa import layer_summary
from laser_plugin.io.atomic import (
    have_syncfs,
    sync_filesystem,
    write_bytes_atomic,
    write_json_atomic,
)
from laser_plugin.io.ply import write_ply
from laser_plugin.io.write_pool import Committer, Future, Slots, default_threads, encoder_pool
from laser_plugin.mapping import VoxelMap
from laser_plugin.types import ReconstructedFrame, WindowStats

FORMAT_VERSION = 2
"""1: PNG images, float32 .npy depth, float16 .npy conf, source JPEGs by default. 2: see above."""
# Every top-level name a run writes (laser_plugin.io.ownership: --overwrite removes nothing else).
_OWN_ENTRIES = {
    "summary.json",
    "frames.jsonl",
    "trajectory.txt",
    "intrinsics.txt",
    "points.ply",
    "images",
    "source",
    "depth",
    "conf",
    "layers",
    "state",
}
# The names laser gives the files inside its folders: per-frame folders hold NNNNNN.EXT (the frame
# index, never an input file name), state/ the resume state, which may have folders of its own
# (the loop closure's spilled records). A folder of _OWN_ENTRIES not listed here is taken as a
# per-frame folder. No name laser writes starts with "." (but its temporary files).
_FRAME_FILE = re.compile(r"^\d{6,}\.[A-Za-z0-9]+$")
_OWN_FILE_PATTERNS = {"state": re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")}
_DEEP_ENTRIES = {"state"}


def _no_finished_frame(path: Path) -> bool:
    try:
        return b"\n" not in (path / "frames.jsonl").read_bytes()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def prepare_output_dir(path: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``path`` and lock it for this process; refuse a non-empty one unless ``overwrite``
    and it provably holds only a laser run (see :mod:`laser_plugin.io.ownership`).

    ``resume``: keep an existing run as it is (the caller continues it). The lock
    (:mod:`laser_plugin.io.lock`) lasts until :func:`laser_plugin.io.lock.release` or the end of
    the process, so a second laser process writing the same directory stops with one line.
    """
    from laser_plugin.io import lock, ownership

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {path} exists and is not a directory")
    if resume and not (path / "summary.json").is_file():
        raise OutputError(f"nothing to resume: {path} holds no laser run (no summary.json)")
    if resume:
        # A resumed run appends to its folders: never through a link to somewhere else.
        linked = sorted(n for n in _OWN_ENTRIES if (path / n).is_symlink())
        if linked:
            raise OutputError(
                f"refusing to resume {path}: {linked[0]} is a symbolic link, not a folder or "
                "file laser wrote; nothing was changed"
            )

    def plan():
        if resume or not ownership.entries(path):
            return None
        ours = ownership.is_claimed(path) or (path / "summary.json").is_file()
        # A run of ours that finished no frame (refused or failed at once) holds nothing worth
        # keeping: a plain re-run replaces it instead of asking for --overwrite.
        if not overwrite and not (ownership.is_claimed(path) and _no_finished_frame(path)):
            if not ours:
                raise OutputError(
                    f"output directory {path} is not empty and holds no laser run: "
                    "choose a new or empty directory"
                )
            raise OutputError(
                f"output directory {path} is not empty (--overwrite replaces it, --resume continues an interrupted run)"
            )
        dirs = {
            name: _OWN_FILE_PATTERNS.get(name, _FRAME_FILE)
            for name in _OWN_ENTRIES
            if (path / name).is_dir() and not (path / name).is_symlink()
        }
        files = _OWN_ENTRIES - set(dirs)
        remove_files, remove_dirs, foreign = ownership.plan_run_removal(
            path, files, dirs, deep=_DEEP_ENTRIES
        )
        if foreign:
            raise OutputError(
                f"refusing to overwrite {path}: it holds files that are not from a laser run "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); nothing was removed"
            )
        if not ownership.is_claimed(path):
            raise OutputError(
                f"refusing to overwrite {path}: it has no {ownership.RUN_MARKER} (made by an older "
                "laser, or not by laser); delete it yourself or choose another directory"
            )
        return remove_files, remove_dirs

    plan()  # refusals first, before anything (even the lock file) is written
    held_before = lock.holds(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire(path)
        todo = plan()  # again under the lock: another process may have written meanwhile
        if todo is not None:
            ownership.remove(*todo, where=path)
        if not resume:
            ownership.claim(path)  # new, empty or just cleared: ours from now on
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except BaseException as exc:
        if not held_before:
            lock.release(path)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write to output directory {path}: {exc.strerror or exc}"
            ) from None
        raise
    return path


def _jpg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# -- format 2: what is written, and how ---------------------------------------------------------

OUTPUTS = ("images", "depth", "conf", "layers", "source", "points")
"""Everything a run can write (``--outputs``)."""
REQUIRED_OUTPUTS = frozenset({"images", "depth", "conf"})
"""What every reader (load_run, --resume, the exporters, eval) needs."""
PRESETS = {
    "compact": frozenset({"images", "depth", "conf", "points"}),
    "full": frozenset(OUTPUTS),
}
DEFAULT_OUTPUTS = "compact"
IMAGE_QUALITY = 90
"""JPEG quality of the model-size images (26 kB at 518x294 against 250+ kB as PNG)."""
SOURCE_QUALITY = 95
"""JPEG quality of kept original-resolution images (the exporters' training images)."""
DEFLATE_LEVEL = 1
"""zlib level of the .npz maps: level 1 is within 3% of level 6's size at a third of its time."""
CONF_LEVELS = 255
"""Confidence is saved as uint8 ``round(conf * 255)`` and read back as ``q / 255``: conf is
normalised to [0, 1] per window by rank, so 256 even steps lose at most 0.002 of it."""
_F16_MAX = 65504.0
MAP_GROUP_WINDOWS = 4
"""Windows whose points are merged into the map at once (see RunWriter._group_add)."""


def parse_outputs(spec: str | Iterable[str] | None) -> frozenset[str]:
    """``"compact"``, ``"full"`` or a comma list of :data:`OUTPUTS` and presets, e.g.
    ``"compact,layers"``; refused in one line unless it keeps :data:`REQUIRED_OUTPUTS`."""
    from laser_plugin.errors import ConfigError

    tokens = spec if spec is not None else DEFAULT_OUTPUTS
    tokens = tokens.split(",") if isinstance(tokens, str) else list(tokens)
    out: set[str] = set()
    for tok in (t.strip().lower() for t in tokens):
        if not tok:
            continue
        if tok in PRESETS:
            out |= PRESETS[tok]
        elif tok in OUTPUTS:
            out.add(tok)
        else:
            raise ConfigError(
                f"--outputs: unknown output {tok!r}; choose from {', '.join(OUTPUTS)} "
                "or the presets compact, full (e.g. --outputs compact,layers)"
            )
    missing = REQUIRED_OUTPUTS - out
    if missing:
        raise ConfigError(
            f"--outputs must keep images, depth and conf (every reader of a run needs them); "
            f"missing {', '.join(sorted(missing))} (e.g. --outputs compact,layers)"
        )
    return frozenset(out)


def format_outputs(outputs: Iterable[str]) -> str:
    """The canonical comma list (in :data:`OUTPUTS` order), as settings record it."""
    chosen = set(outputs)
    return ",".join(o for o in OUTPUTS if o in chosen)


def quantize_conf(conf: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(conf, 0.0, 1.0) * CONF_LEVELS).astype(np.uint8)


def dequantize_conf(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(CONF_LEVELS)


def depth_as_saved(depth: np.ndarray) -> np.ndarray:
    """float16 (relative precision 5e-4, ample for a network's depth), or float32 for a frame
    holding a depth beyond float16's range (it would become inf)."""
    d = np.asarray(depth, dtype=np.float32)
    if d.size and not float(np.max(d)) < _F16_MAX:
        return d
    return d.astype(np.float16)


def _npz_bytes(key: str, array: np.ndarray, **more: np.ndarray) -> bytes:
    """A .npz of ``array`` (``np.load(path)[key]``) and any ``more`` arrays, deflated at
    :data:`DEFLATE_LEVEL`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL) as z:
        for name, arr in {key: array, **more}.items():
            with z.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _depth_bytes(frame: ReconstructedFrame, depth: np.ndarray) -> bytes:
    """A frame's depth file. A depth map a loop correction scaled also holds the factor
    (``depth_scale``, from ``frame.extras``): loop closure reads the frame back from the run
    to correct it again, and must divide the factor out. Readers of the run ignore it."""
    scale = frame.depth_scale
    more = {} if scale == 1.0 else {"depth_scale": np.array([scale], np.float64)}
    return _npz_bytes("depth", depth, **more)


def _load_array(path: Path, key: str) -> np.ndarray:
    """An array saved by either format: ``.npy`` (format 1) or a one-array ``.npz`` (format 2).

    A damaged file (truncated, not an array, another key) raises InputError in one line."""
    import zlib

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return z[key]
        return np.load(path, allow_pickle=False)
    except KeyError:
        raise InputError(f"{path} is damaged: it holds no array {key!r}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(
            f"{path} is damaged or not a laser array file ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_image(path: Path, what: str) -> np.ndarray:
    """An RGB image of the run; a damaged file raises InputError in one line."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (permission, I/O), not the content
            raise InputError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None
        raise InputError(
            f"{path} ({what}) is damaged or not an image ({_first_line(exc)})"
        ) from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
        raise InputError(
            f"{path} ({what}) is damaged or not an image ({_first_line(exc)})"
        ) from None


def _write_file(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write (not atomically: a frame's files become part of the run only when its frames.jsonl
    line is written, after they are durable; an unlisted file may be torn)."""
    with open(path, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the names of files created in ``path`` durable (POSIX leaves them to the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; their entries are durable anyway
    finally:
        os.close(fd)


def _map_points(
    frame: ReconstructedFrame,
    image: np.ndarray,
    depth: np.ndarray,
    conf: np.ndarray,
    conf_min: float,
    stride: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The frame's contribution to points.ply, from the values as saved (decoded JPEG colours,
    float16 depth, quantised confidence), so a resumed run rebuilds exactly the same map."""
    saved = dataclasses.replace(frame, image=image, depth=depth, conf=conf, source_image=None)
    return saved.points_world(min_conf=conf_min, stride=stride)


def _decode_jpg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class _SourceRefs:
    """Where a frame's original image can be read again when it is not kept: the decode index in
    the input video, or the file name in the input folder. Only for inputs given as a path (the
    run's settings["input"]); names are single components of the folder the user named."""

    def __init__(self, settings: dict) -> None:
        self.kind: str | None = None
        self.input_name = ""
        self.names: list[str] = []
        self.stride = max(int(settings.get("stride") or 1), 1)
        self.fps = float(settings.get("fps") or 30.0)
        src = settings.get("input")
        if not isinstance(src, str) or not src:
            return
        from laser_plugin.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_images

        path = Path(src)
        self.input_name = path.name
        try:
            if path.is_dir():
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the run itself reports skipped files
                    self.names = [p.name for p in list_images(path)]
                self.kind = "folder"
            elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                self.kind = "video"
            elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                self.kind = "image"
        except (OSError, InputError):
            self.kind = None

    def fields(self, frame: ReconstructedFrame) -> dict[str, Any]:
        if self.kind == "video":
            # iter_video keeps decode indices 0, s, 2s, ... and numbers them 0, 1, 2, ...
            return {"source_frame": frame.index * self.stride}
        if self.kind == "folder":
            # iter_folder stamps the file at sorted position i with i / fps (before the stride and
            # any unreadable file thin the stream), so the timestamp names the file exactly.
            pos = round(frame.timestamp * self.fps)
            if 0 <= pos < len(self.names):
                return {"source_file": self.names[pos]}
        if self.kind == "image":
            return {"source_file": self.input_name}
        return {}


@dataclass
class _Pending:
    """A frame taken in by :meth:`RunWriter.on_frame`, being encoded."""

    frame: ReconstructedFrame
    future: Future
    result: dict | None = None


class RunWriter:
    """A sink writing the run directory. Call :meth:`close` with the final status.

    ``essential``: the engine stops the run if this sink fails (a full disk must not let the run
    go on with nothing saved). ``resume_frames``: continue an interrupted run whose first
    ``resume_frames`` frames are kept (later lines of frames.jsonl, trajectory.txt and
    intrinsics.txt are dropped; the point map is rebuilt from the kept frames).

    ``outputs``: what to write (:func:`parse_outputs`; default ``compact``);
    ``save_source_images`` (older API): True adds ``source``, False removes it.

    How it keeps up with the network: :meth:`on_frame` only hands the frame to ``threads``
    encoder threads (JPEG and deflate run there, GIL released) and returns; at most
    ``max_pending`` frames are in flight (the caller waits beyond that, so memory stays flat).
    One committer thread makes them durable a window at a time, in stream order: each file is
    fsynced by its encoder, then the folders once, then the window's lines are appended to
    trajectory.txt, intrinsics.txt and frames.jsonl (a frame's three lines together, as before)
    and the three files fsynced once. A frame is in the run once its frames.jsonl line is, so a
    stop at any instant leaves a loadable run whose listed frames are complete. The resume
    state refers to frames, so its saver calls :meth:`wait_durable` before saving. A failure in
    either thread is raised by the next call (or :meth:`close`), once, as an OutputError.
    """

    essential = True

    def __init__(
        self,
        out_dir: Path,
        settings: dict[str, Any] | None = None,
        save_source_images: bool | None = None,
        map_max_points: int = 1_000_000,
        map_conf: float = 0.5,
        map_stride: int = 4,
        ply_every: int = 10,
        resume_frames: int | None = None,
        outputs: str | Iterable[str] | None = None,
        threads: int | None = None,
        max_pending: int = 48,
        sync: str | None = None,
        ply_interval_s: float = 30.0,
    ):
        self.dir = Path(out_dir)
        # "fs": one syncfs of the run's filesystem per window makes its files durable (Linux);
        # "file": each file is fsynced by its encoder (elsewhere, or LASER_WRITER_SYNC=file).
        self.sync = (
            sync or os.environ.get("LASER_WRITER_SYNC") or ("fs" if have_syncfs() else "file")
        )
        if self.sync not in ("fs", "file") or (self.sync == "fs" and not have_syncfs()):
            raise ValueError(f"RunWriter sync must be 'file' or 'fs' (Linux), got {self.sync!r}")
        self.ply_interval_s = ply_interval_s
        outs = set(parse_outputs(outputs))
        if save_source_images is True:
            outs.add("source")
        elif save_source_images is False:
            outs.discard("source")
        self.outputs = frozenset(outs)
        self.save_source_images = "source" in self.outputs
        try:
            for sub in ("images", "depth", "conf", "layers", "source"):
                if sub in self.outputs:
                    (self.dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {self.dir}: {exc.strerror or exc}"
            ) from None
        self.settings = settings or {}
        self._refs = _SourceRefs(self.settings) if "source" not in self.outputs else None
        self.map = VoxelMap(max_points=map_max_points)
        self.map_conf = map_conf
        self.map_stride = map_stride
        self.ply_every = ply_every
        self.num_frames = 0
        self.num_windows = 0
        self.timings: dict[str, float] = {}
        self.window_stats: list[dict] = []
        self.extra: dict[str, Any] = {}
        self.engine_timings: dict[str, float] | None = None
        """The engine's stage timings (set by the CLI), copied into summary.json."""
        self.writer_seconds = {"on_frame": 0.0, "encode": 0.0, "commit": 0.0, "map": 0.0}
        """Where the writer's time goes: ``on_frame`` in the caller's thread (the only part on
        the critical path), the rest in its own threads (encode summed over them)."""
        self.bytes_written = 0
        self.frames_received = 0
        """Frames handed to on_frame (``num_frames`` counts those committed, which lags)."""
        self.started = time.time()
        self._closed = False
        self._status = "complete"
        self._raised = False
        self._batch: list[_Pending] = []
        # Points are added to the map a window at a time (one merge of the whole map per window
        # instead of per frame), grouped by the frames' window field so that a resumed run,
        # rebuilding from saved frames, makes the same groups and the same points.ply.
        self._group: tuple[int | None, list, list] = (None, [], [])
        self._last_summary = 0.0
        self._last_ply = time.monotonic()
        if resume_frames is not None:
            self._resume(resume_frames)
            self.frames_received = self.num_frames
        else:
            for name in ("frames.jsonl", "trajectory.txt", "intrinsics.txt"):
                (self.dir / name).write_bytes(b"")
        # Kept open for the whole run (closed in close()), appended line by line.
        self._frames = open(self.dir / "frames.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._traj = open(self.dir / "trajectory.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._intr = open(self.dir / "intrinsics.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._write_summary("running")
        self.threads = threads or default_threads()
        self._pool = encoder_pool(self.threads)
        self._slots = Slots(max(1, max_pending))
        self._committer = Committer(self._handle, self._drop, name="laser-commit")
        self._mapper = Committer(self._map_handle, lambda item: None, "laser-map", maxsize=64)

    # -- sink protocol (the caller's thread) -----------------------------------------------
    def on_frame(self, frame: ReconstructedFrame) -> None:
        t = time.perf_counter()
        self._check()
        if not self._slots.acquire():  # the committer failed while we waited
            self._check()
        self._committer.put(("frame", _Pending(frame, self._pool.submit(self._encode, frame))))
        self.frames_received += 1
        self.writer_seconds["on_frame"] += time.perf_counter() - t

    def on_window(self, stats: WindowStats) -> None:
        self._check()
        info = {
            "window": stats.window,
            "frames": [stats.frame_indices[0], stats.frame_indices[-1]],
            "new_frames": len(stats.new_frame_indices),
            "scale": stats.scale,
            "depth_residual": stats.depth_residual,
            "pose_residual": stats.pose_residual,
            "overlap_pixels": stats.overlap_pixels,
            "num_layers": stats.num_layers,
            "layer_scale_spread": stats.layer_scale_spread,
            "num_inter_edges": stats.num_inter_edges,
            "num_intra_edges": stats.num_intra_edges,
            "layer_coverage": round(stats.layer_coverage, 4),
            "depth_noise": round(stats.depth_noise, 5),
            "warnings": stats.warnings,
            # When the engine finalised the window (seconds since the writer started): the
            # warm-up and the steady rate of a run read from these (benchmarks/cli_speed.py).
            "t_s": round(time.time() - self.started, 3),
        }
        self._committer.put(("window", info, dict(stats.timings)))

    def wait_durable(self) -> None:
        """Return once every frame taken in so far is durable and listed in frames.jsonl (the
        resume state saved next refers to them); raise the writer's failure if it had one."""
        self._committer.put(("flush",))
        self._committer.wait()
        self._check()

    def read_frame(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """(image (H, W, 3) uint8, depth (H, W) float32 as saved, conf (H, W) float32, the
        depth's ``depth_scale``) of frame ``index`` of this run, or None if it has none. Call
        :meth:`wait_durable` first: a frame still being encoded is not there yet. (Loop closure
        reads moved frames back from here: :class:`laser_plugin.loop.archive.RunDirFrames`.)"""
        name = f"{index:06d}"
        depth_path = self.dir / "depth" / f"{name}.npz"
        if not depth_path.exists():
            return None
        try:
            with np.load(depth_path, allow_pickle=False) as z:
                depth = z["depth"].astype(np.float32)
                scale = float(z["depth_scale"].ravel()[0]) if "depth_scale" in z.files else 1.0
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise OutputError(f"cannot read back {depth_path}: {_first_line(exc)}") from None
        image = _read_image(self.dir / "images" / f"{name}.jpg", f"frame {index}")
        conf = dequantize_conf(_load_array(self.dir / "conf" / f"{name}.npz", "conf"))
        return image, depth, conf, scale

    def _check(self) -> None:
        err = self._committer.error or self._mapper.error
        if err is not None and not self._raised:
            self._raised = True
            self._slots.break_()
            raise err

    # -- the encoder threads ---------------------------------------------------------------
    def _encode(self, frame: ReconstructedFrame) -> dict:
        """Encode and write one frame's files (fsynced); return what its record and the map need."""
        t = time.perf_counter()
        # File names come from the frame index only, never from input file names, so nothing is
        # ever written outside the run directory.
        name = f"{frame.index:06d}"
        out: dict[str, Any] = {"paths": {}, "fields": {}, "bytes": 0}

        def put(kind: str, rel: str, data: bytes) -> None:
            _write_file(self.dir / rel, data, fsync=self.sync == "file")
            out["paths"][kind] = rel
            out["bytes"] += len(data)

        image_jpg = _jpg_bytes(frame.image, IMAGE_QUALITY)
        put("image", f"images/{name}.jpg", image_jpg)
        depth = depth_as_saved(frame.depth)
        put("depth", f"depth/{name}.npz", _depth_bytes(frame, depth))
        conf = quantize_conf(frame.conf)
        put("conf", f"conf/{name}.npz", _npz_bytes("conf", conf))
        if "layers" in self.outputs and frame.layers is not None:
            put("layers", f"layers/{name}.npz", _npz_bytes("layers", frame.layers.astype(np.int16)))
            if frame.layer_scales is not None:
                out["fields"]["layer_scales"] = [round(float(s), 6) for s in frame.layer_scales]
        if "source" in self.outputs and frame.source_image is not None:
            put("source", f"source/{name}.jpg", _jpg_bytes(frame.source_image, SOURCE_QUALITY))
            out["fields"]["source_width"] = int(frame.source_image.shape[1])
            out["fields"]["source_height"] = int(frame.source_image.shape[0])
        elif self._refs is not None:
            out["fields"].update(self._refs.fields(frame))
        if "points" in self.outputs:
            out["points"] = _map_points(
                frame,
                _decode_jpg(image_jpg),
                depth.astype(np.float32),
                dequantize_conf(conf),
                self.map_conf,
                self.map_stride,
            )
        out["seconds"] = time.perf_counter() - t
        return out

    # -- the committer thread --------------------------------------------------------------
    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "frame":
            self._batch.append(item[1])
        elif kind == "flush":
            self._commit()
        elif kind == "window":
            self._commit()
            _, info, timings = item
            self.num_windows += 1
            for k, v in timings.items():
                self.timings[k] = self.timings.get(k, 0.0) + v
            self.window_stats.append(info)
            t = time.perf_counter()
            now = time.monotonic()
            if (
                "points" in self.outputs
                and self.num_windows % self.ply_every == 0
                and now - self._last_ply >= self.ply_interval_s
            ):
                # A snapshot of the cloud for viewers of a running run; the final one is
                # written at close (a 1M-point cloud is 15 MB: not after every window).
                self._last_ply = now
                self._mapper.put(("ply",))
            if now - self._last_summary >= 2.0:  # progress for readers; the final one at close
                self._last_summary = now
                try:
                    self._write_summary("running")
                except OSError as exc:
                    raise self._dir_error(exc) from None
            self.writer_seconds["commit"] += time.perf_counter() - t

    def _drop(self, item: tuple) -> None:
        if item[0] == "frame":
            self._slots.release()
        elif item[0] in ("flush", "window"):
            n, self._batch = len(self._batch), []
            self._slots.release(n)

    def _commit(self) -> None:
        """Make the frames taken in since the last commit part of the run (in order; a frame
        whose files failed ends the commit before it, and the failure is raised)."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        ready: list[_Pending] = []
        failure: tuple[_Pending, BaseException] | None = None
        for p in batch:
            try:
                p.result = p.future.result()
            except BaseException as exc:
                failure = (p, exc)
                break
            ready.append(p)
        t = time.perf_counter()  # the commit itself, not the wait for the encoders
        try:
            if ready:
                self._append(ready)
        except OSError as exc:
            self._slots.release(len(batch))
            raise self._dir_error(exc) from None
        self._slots.release(len(batch))
        self.writer_seconds["commit"] += time.perf_counter() - t
        if failure is not None:
            p, exc = failure
            if isinstance(exc, OSError):
                raise OutputError(
                    f"cannot write frame {p.frame.index} to {self.dir}: {exc.strerror or exc} "
                    f"({self.num_frames} frames were saved; the run can be resumed with --resume)"
                ) from None
            raise exc

    def _append(self, ready: list[_Pending]) -> None:
        if self.sync == "fs":
            sync_filesystem(self.dir)  # the window's files and their names, in one call
        else:
            for sub in {rel.split("/")[0] for p in ready for rel in p.result["paths"].values()}:
                _fsync_dir(self.dir / sub)
        for p in ready:
            f, res = p.frame, p.result
            record: dict[str, Any] = {
                "index": f.index,
                "timestamp": f.timestamp,
                "window": f.window,
                "width": f.width,
                "height": f.height,
                "intrinsics": f.intrinsics.tolist(),
                "cam_to_world": f.cam_to_world.tolist(),
                "image": res["paths"]["image"],
                "depth": res["paths"]["depth"],
                "conf": res["paths"]["conf"],
                "layers": res["paths"].get("layers"),
                "layer_scales": None,
                "source": res["paths"].get("source"),
                **res["fields"],
            }
            c2w = f.cam_to_world
            q = rotmat_to_quat_xyzw(c2w[:3, :3])
            tr = c2w[:3, 3]
            k = f.intrinsics
            # A frame's three lines together, flushed at once: a hard kill leaves at most one
            # trajectory/intrinsics line more than frames.jsonl (frames.jsonl is the record).
            self._traj.write(
                f"{f.timestamp:.6f} {tr[0]:.9g} {tr[1]:.9g} {tr[2]:.9g} {q[0]:.9g} {q[1]:.9g} {q[2]:.9g} {q[3]:.9g}\n"
            )
            self._traj.flush()
            self._intr.write(
                f"{f.index} {k[0, 0]:.9g} {k[1, 1]:.9g} {k[0, 2]:.9g} {k[1, 2]:.9g} {f.width} {f.height}\n"
            )
            self._intr.flush()
            self._frames.write(json.dumps(record) + "\n")
            self._frames.flush()
            self.num_frames += 1
            self.bytes_written += res["bytes"]
            self.writer_seconds["encode"] += res["seconds"]
        if self.sync == "fs":
            sync_filesystem(self.dir)
        else:
            for fh in (self._frames, self._traj, self._intr):
                os.fsync(fh.fileno())
        if "points" in self.outputs:
            for p in ready:
                self._mapper.put(("points", p.frame.window, *p.result["points"]))
        for p in ready:  # the frame's arrays can go now
            p.frame = None  # type: ignore[assignment]
            p.result = None

    # -- the map thread ----------------------------------------------------------------------
    def _map_handle(self, item: tuple) -> None:
        t = time.perf_counter()
        if item[0] == "points":
            self._group_add(*item[1:])
        elif item[0] == "ply":
            try:
                self.write_points()
            except OSError as exc:
                raise self._dir_error(exc) from None
        elif item[0] == "flush":
            self._group_flush()
        self.writer_seconds["map"] += time.perf_counter() - t

    def _group_add(self, window: int, pts: np.ndarray, cols: np.ndarray) -> None:
        # One merge per MAP_GROUP_WINDOWS windows: a merge re-sorts the whole map (up to 1M
        # points, ~0.1 s), which per window would cost nearly a core at 125 frames/s.
        key = window // MAP_GROUP_WINDOWS
        if key != self._group[0]:
            self._group_flush()
            self._group = (key, [], [])
        self._group[1].append(pts)
        self._group[2].append(cols)

    def _group_flush(self) -> None:
        _, pts, cols = self._group
        if pts:
            self.map.add(np.concatenate(pts), np.concatenate(cols))
        self._group = (None, [], [])

    def _dir_error(self, exc: OSError) -> OutputError:
        return OutputError(
            f"cannot write to {self.dir}: {exc.strerror or exc} "
            f"({self.num_frames} frames were saved; the run can be resumed with --resume)"
        )

    # -- corrections, interruption, close (the caller's thread) -----------------------------
    def on_correction(self, frames: list[ReconstructedFrame]) -> None:
        """Loop closure moved frames already written: rewrite their depth maps, then frames.jsonl
        and trajectory.txt atomically (each replaced as a whole, so a reader sees the old or the
        new version). The point map is rebuilt from the saved frames at close."""
        self.wait_durable()  # the committer is idle from here until the next on_frame
        fixed = {f.index: f for f in frames}
        try:
            for f in frames:
                write_bytes_atomic(
                    self.dir / "depth" / f"{f.index:06d}.npz",
                    _depth_bytes(f, depth_as_saved(f.depth)),
                )
            self._frames.close()
            self._traj.close()
            records = [
                json.loads(line)
                for line in (self.dir / "frames.jsonl").read_text().splitlines()
                if line
            ]
            traj = []
            for rec in records:
                if rec["index"] in fixed:
                    rec["cam_to_world"] = fixed[rec["index"]].cam_to_world.tolist()
                    rec["depth"] = f"depth/{rec['index']:06d}.npz"
                c2w = np.asarray(rec["cam_to_world"])
                q, t = rotmat_to_quat_xyzw(c2w[:3, :3]), c2w[:3, 3]
                traj.append(
                    f"{rec['timestamp']:.6f} {t[0]:.9g} {t[1]:.9g} {t[2]:.9g} {q[0]:.9g} {q[1]:.9g} {q[2]:.9g} {q[3]:.9g}\n"
                )
            write_bytes_atomic(
                self.dir / "frames.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode()
            )
            write_bytes_atomic(self.dir / "trajectory.txt", "".join(traj).encode())
        except OSError as exc:
            raise OutputError(
                f"cannot write loop corrections to {self.dir}: {exc.strerror or exc}"
            ) from None
        finally:
            self._frames = open(self.dir / "frames.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            self._traj = open(self.dir / "trajectory.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._map_stale = True
        self.extra["corrected_frames"] = int(self.extra.get("corrected_frames", 0)) + len(frames)

    def on_interrupt(self, exc: BaseException) -> None:
        """The run stopped early: Ctrl-C/SIGTERM give 'interrupted', an error 'failed'."""
        self._status = (
            "interrupted" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) else "failed"
        )

    def close(self, status: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        # Every frame taken in is committed first (those already encoded are kept, also after
        # Ctrl-C: stopping the threads half-way would only lose finished work).
        self._committer.put(("flush",))
        self._committer.stop()
        self._pool.shutdown(wait=True)
        self._mapper.put(("flush",))  # the last window's points
        self._mapper.stop()
        failure = (self._committer.error or self._mapper.error) if not self._raised else None
        status = status or self._status
        if failure is not None:
            status = "failed"
        for fh in (self._frames, self._traj, self._intr):
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError:
                pass  # disk full: what was flushed before is what the run holds
            fh.close()
        try:
            # A stop between the lines of one frame leaves the text files out of step: trim them.
            self._reconcile(self._count_frames())
            if getattr(self, "_map_stale", False):  # loop corrections moved saved frames
                self.map = VoxelMap(max_points=self.map.max_points)
                self._group = (None, [], [])
                self._rebuild_map(load_run(self.dir))
                self._group_flush()
            if "points" in self.outputs:
                self.write_points()
        except OSError as exc:
            status = "failed"
            raise OutputError(
                f"cannot finish the run directory {self.dir}: {exc.strerror or exc} "
                f"({self.num_frames} frames were saved)"
            ) from None
        finally:
            with contextlib.suppress(OSError):  # else the last window's summary stays
                self._write_summary(status)
        if failure is not None:
            self._raised = True
            raise failure

    # -- resume ----------------------------------------------------------------------------
    def _count_frames(self) -> int:
        """Complete lines of frames.jsonl (a torn last line is cut off)."""
        path = self.dir / "frames.jsonl"
        if not path.exists():
            return 0
        data = path.read_bytes()
        return data.count(b"\n")

    def _reconcile(self, n: int) -> None:
        """Keep the first ``n`` lines of frames.jsonl, trajectory.txt and intrinsics.txt."""
        for name in ("frames.jsonl", "trajectory.txt", "intrinsics.txt"):
            path = self.dir / name
            if not path.exists():
                continue
            data = path.read_bytes()
            lines = data.split(b"\n")
            if len(lines) - 1 > n or (data and not data.endswith(b"\n")):
                keep = b"".join(line + b"\n" for line in lines[:n])
                write_bytes_atomic(path, keep)

    def _rebuild_map(self, run: RunData) -> int:
        """Add every saved frame of ``run`` to the map (as saved, grouped as the live run grouped
        them; the last group stays open for the frames that follow); return their number."""
        if "points" in self.outputs:
            for i in range(len(run.frames)):
                f = run.load_frame(i, source=False)
                self._group_add(
                    f.window, *f.points_world(min_conf=self.map_conf, stride=self.map_stride)
                )
        return len(run.frames)

    def _resume(self, n: int) -> None:
        # A damaged summary.json or frames.jsonl is refused before anything is cut off.
        old = load_run(self.dir).summary
        version = old.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise OutputError(
                f"cannot resume {self.dir}: it was written in run-directory format {version} by "
                f"another version of laser (this one writes {FORMAT_VERSION}); --overwrite starts again"
            )
        have = self._count_frames()
        if have < n:
            raise OutputError(
                f"cannot resume {self.dir}: frames.jsonl holds {have} frames, the saved state {n}"
            )
        self._reconcile(n)
        self.window_stats = list(old.get("window_stats", []))
        self.timings = dict(old.get("timings_s", {}))
        self.extra["resumed"] = int(old.get("resumed", 0)) + 1
        run = load_run(self.dir)
        self.num_frames = self._rebuild_map(run)
        self.num_windows = len({f.window for f in run.frames})

    # -- helpers ---------------------------------------------------------------------------
    def write_points(self) -> None:
        pts, cols = self.map.points()
        write_ply(self.dir / "points.ply", pts, cols)

    def _write_summary(self, status: str) -> None:
        elapsed = time.time() - self.started
        engine_timings = {}
        if self.engine_timings is not None:
            with contextlib.suppress(RuntimeError):  # a key added meanwhile: next time
                engine_timings = {k: round(v, 4) for k, v in list(self.engine_timings.items())}
        write_json_atomic(
            self.dir / "summary.json",
            {
                "format_version": FORMAT_VERSION,
                "status": status,
                "settings": self.settings,
                "outputs": format_outputs(getattr(self, "outputs", PRESETS["full"])),
                "frames": self.num_frames,
                "windows": self.num_windows,
                "started_unix": round(self.started, 3),
                "elapsed_s": round(elapsed, 3),
                "frames_per_s": round(self.num_frames / elapsed, 3) if elapsed > 0 else None,
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "timings_ms_per_frame": {
                    k: round(1000 * v / max(self.num_frames, 1), 3) for k, v in self.timings.items()
                },
                "engine_timings_s": engine_timings,
                "writer": {
                    "threads": getattr(self, "threads", None),
                    "seconds": {k: round(v, 4) for k, v in self.writer_seconds.items()},
                    "bytes_per_frame": round(self.bytes_written / max(self.num_frames, 1)),
                },
                "map_points": len(self.map),
                "map_voxel_size": self.map.voxel_size,
                "window_stats": self.window_stats[-1000:],
                # Did layer alignment do anything (layers, coverage, inter-window edges)?
                "layer_alignment": layer_summary(
                    self.window_stats,
                    enabled=bool((self.settings or {}).get("laser", {}).get("layer_alignment", 1)),
                ),
                **self.extra,
            },
        )


@dataclass
class FrameRecord:
    index: int
    timestamp: float
    window: int
    width: int
    height: int
    intrinsics: np.ndarray
    cam_to_world: np.ndarray
    paths: dict[str, str | None]
    layer_scales: list[float] | None = None
    source_size: tuple[int, int] | None = None
    """(width, height) of the original image, when saved."""
    source_ref: dict[str, Any] | None = None
    """Format 2, original image not kept: {"source_frame": decode index in the input video} or
    {"source_file": file name in the input folder}."""


@dataclass
class RunData:
    """A run directory opened for reading (complete or interrupted)."""

    path: Path
    summary: dict
    frames: list[FrameRecord] = field(default_factory=list)
    _video: _VideoFrames | None = field(default=None, repr=False)
    _source_warned: bool = field(default=False, repr=False)

    @property
    def points_ply(self) -> Path:
        return self.path / "points.ply"

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    def cam_to_world(self) -> np.ndarray:
        """(N, 4, 4)."""
        return (
            np.stack([f.cam_to_world for f in self.frames]) if self.frames else np.zeros((0, 4, 4))
        )

    @property
    def format_version(self) -> int:
        return int(self.summary.get("format_version", 1))

    @property
    def input_path(self) -> Path | None:
        """The input the run was made from (a video, an image folder or an image), if a path."""
        src = self.summary.get("settings", {}).get("input")
        return Path(src) if isinstance(src, str) and src else None

    def sources_outside(self) -> bool:
        """True when some frame's original image is not in the run but read from its input."""
        return any(f.source_ref for f in self.frames)

    def check_sources(self) -> None:
        """Raise InputError (one line) unless every frame's original image can be read: the
        exporters call this before writing anything."""
        if not self.sources_outside():
            return
        src = self.input_path
        if src is None or not src.exists():
            raise InputError(
                f"run {self.path} does not keep its original frames (run with --outputs "
                f"compact,source to keep them) and reads them from its input {src}, which is "
                "missing: put it back, or export at the model's resolution "
                "(--export.image-resolution model)"
            )

    def source_image(self, i: int, required: bool = False) -> np.ndarray | None:
        """The i-th frame's original-resolution image: kept in the run (source/), or decoded
        again from the run's input (format 2, not kept); None where neither is possible
        (``required``: raise InputError instead; otherwise one warning per run)."""
        rec = self.frames[i]
        if rec.paths.get("source"):
            return _read_image(
                _inside(self.path, rec.paths["source"]), f"original of frame {rec.index}"
            )
        if not rec.source_ref:
            return None
        try:
            return self._read_input(rec)
        except InputError as exc:
            if required:
                raise
            if not self._source_warned:
                import warnings

                warnings.warn(f"original frames unavailable: {exc}", RuntimeWarning, stacklevel=2)
                self._source_warned = True
            return None

    def _read_input(self, rec: FrameRecord) -> np.ndarray:
        from laser_plugin.sources import read_image

        src = self.input_path
        ref = rec.source_ref or {}
        if src is None or not src.exists():
            raise InputError(f"the run's input {src} is missing")
        if not (src.is_file() or src.is_dir()):  # a pipe named by summary.json would block
            raise InputError(f"the run's input {src} is not a regular file or folder")
        if "source_frame" in ref:
            if self._video is None or self._video.path != src:
                self._video = _VideoFrames(src)
            return self._video.get(int(ref["source_frame"]), rec.timestamp)
        name = ref.get("source_file")
        # Only a file the user named, or one directly inside the folder they named: a name from
        # frames.jsonl is a single path component, never a path of its own.
        if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name:
            raise InputError(f"{self.path} is not a valid run: frames.jsonl names {name!r}")
        path = src / name if src.is_dir() else src
        if path.name != name or not path.is_file():
            raise InputError(f"{path} (frame {rec.index} of the run) is missing")
        return read_image(path)

    def load_frame(self, i: int, source: bool | str = "kept") -> ReconstructedFrame:
        """The i-th frame of the run (position in ``frames``) as a :class:`ReconstructedFrame`.

        ``source``, the original-resolution image: "kept" (default) only where the run holds it
        (source/), "auto" also decoded again from the input where it can be (see
        :meth:`source_image`), True the same but required (InputError otherwise), False none.
        Decoding a video again is costly: only the exporters ask for it."""
        rec = self.frames[i]
        p = rec.paths
        image = _read_image(_inside(self.path, p["image"]), f"frame {rec.index}")
        if source == "kept":
            src_image = self.source_image(i) if p.get("source") else None
        else:
            src_image = self.source_image(i, required=source is True) if source else None
        layers = _load_array(_inside(self.path, p["layers"]), "layers") if p.get("layers") else None
        conf = _load_array(_inside(self.path, p["conf"]), "conf")
        depth = _load_array(_inside(self.path, p["depth"]), "depth")
        # A damaged file of the right kind but the wrong size would fail far from here.
        size = (rec.height, rec.width)
        for name, arr, shape in (
            ("image", image, (*size, 3)),
            ("depth", depth, size),
            ("conf", conf, size),
            ("layers", layers, size),
        ):
            if arr is not None and (arr.shape != shape or arr.dtype.kind not in "biuf"):
                raise InputError(
                    f"{self.path / p[name]} (frame {rec.index}) does not fit the run: "
                    f"{arr.dtype} {'x'.join(map(str, arr.shape))}, expected {'x'.join(map(str, shape))}"
                )
        return ReconstructedFrame(
            index=rec.index,
            timestamp=rec.timestamp,
            image=image,
            cam_to_world=rec.cam_to_world,
            intrinsics=rec.intrinsics,
            depth=depth.astype(np.float32),
            conf=dequantize_conf(conf) if conf.dtype == np.uint8 else conf.astype(np.float32),
            window=rec.window,
            layers=layers,
            layer_scales=None
            if rec.layer_scales is None
            else np.asarray(rec.layer_scales, np.float32),
            source_image=src_image,
        )


class _VideoFrames:
    """Frames of a video by decode index, read forwards (the exporters go in order; going back
    reopens the file). Each frame's time is checked against the run's timestamp, so a video
    changed since the run is refused rather than silently mismatched."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._frames = None
        self._next = 0
        self._container = None

    def _open(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        try:
            self._container = av.open(str(self.path))
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
            raise InputError(f"cannot open the run's input video {self.path}: {exc}") from None
        self._frames = self._container.decode(stream)
        self._next = 0

    def get(self, index: int, timestamp: float) -> np.ndarray:
        import av

        if self._frames is None or index < self._next:
            self._open()
        try:
            for frame in self._frames:
                j = self._next
                self._next += 1
                if j < index:
                    continue
                if frame.time is not None and abs(float(frame.time) - timestamp) > 1e-3:
                    raise InputError(
                        f"the video {self.path} no longer matches the run: its frame {index} is "
                        f"at {float(frame.time):.3f} s, the run's at {timestamp:.3f} s"
                    )
                return frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode the run's input video {self.path}: {exc}") from None
        raise InputError(f"the video {self.path} has no frame {index} (changed since the run?)")


def _inside(run_dir: Path, rel: Any) -> Path:
    """``run_dir / rel`` for a path read from frames.jsonl, refused (one line) unless it stays
    inside the run directory: no absolute path, no ``..``, no symbolic link leading out. A run
    directory may come from anyone; reading it must not read other files."""
    from laser_plugin.errors import InputError

    root = Path(run_dir).resolve()
    if isinstance(rel, str) and rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts:
        p = root / rel
        resolved = p.resolve()
        if root in resolved.parents:
            return p
    raise InputError(
        f"{run_dir} is not a valid run: frames.jsonl names {rel!r}, outside the run directory"
    )


def _invalid(path: Path, what: str) -> InputError:
    """The one-line error for a run directory that is damaged or was not written by laser."""
    return InputError(f"{path} is not a valid run: {what}")


def read_summary(path: str | Path) -> dict:
    """A run directory's summary.json; InputError (one line) if it is missing or damaged."""
    path = Path(path).expanduser()
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _invalid(path, "summary.json is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _invalid(
            path, f"summary.json is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read {path / 'summary.json'}: {exc.strerror or exc}") from None
    if not isinstance(summary, dict):
        raise _invalid(path, "summary.json does not hold a JSON object")
    if summary.get("settings") is None:
        summary["settings"] = {}
    elif not isinstance(summary["settings"], dict):
        raise _invalid(path, "summary.json's settings are not a JSON object")
    return summary


def _matrix(value: Any, shape: tuple[int, int]) -> np.ndarray:
    """A finite ``shape`` matrix from frames.jsonl, or ValueError."""
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape:
        raise ValueError(f"shape {m.shape}, expected {shape}")
    if not np.isfinite(m).all():
        raise ValueError("non-finite values")
    return m


def _frame_record(path: Path, r: Any) -> FrameRecord:
    """One frames.jsonl object -> FrameRecord; ValueError/KeyError/TypeError naming the field."""
    if not isinstance(r, dict):
        raise TypeError("not a JSON object")
    missing = [k for k in _RECORD_KEYS if k not in r]
    if missing:
        raise KeyError(f"no {missing[0]!r}")
    field_name = "index"
    try:
        index, window = int(r["index"]), int(r["window"])
        field_name = "width/height"
        width, height = int(r["width"]), int(r["height"])
        field_name = "timestamp"
        timestamp = float(r["timestamp"])
        if not math.isfinite(timestamp):
            raise ValueError("non-finite")
        field_name = "intrinsics"
        intrinsics = _matrix(r["intrinsics"], (3, 3))
        field_name = "cam_to_world"
        cam_to_world = _matrix(r["cam_to_world"], (4, 4))
        field_name = "layer_scales"
        scales = r.get("layer_scales")
        if scales is not None and not (
            isinstance(scales, list) and all(isinstance(v, (int, float)) for v in scales)
        ):
            raise TypeError("not a list of numbers")
        field_name = "source_width/source_height"
        source_size = (int(r["source_width"]), int(r["source_height"])) if r.get("source") else None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"bad {field_name!r} ({exc})") from None
    if index < 0 or window < 0 or width < 1 or height < 1:
        raise ValueError("negative index/window or empty size")
    paths = {k: r.get(k) for k in ("image", "depth", "conf", "layers", "source")}
    for k, rel in paths.items():
        if rel is not None or k in ("image", "depth", "conf"):
            _inside(path, rel)
    return FrameRecord(
        index=index,
        timestamp=timestamp,
        window=window,
        width=width,
        height=height,
        intrinsics=intrinsics,
        cam_to_world=cam_to_world,
        paths=paths,
        layer_scales=scales,
        source_size=source_size,
        source_ref={k: r[k] for k in ("source_frame", "source_file") if k in r} or None,
    )


_RECORD_KEYS = ("index", "timestamp", "window", "width", "height", "intrinsics", "cam_to_world")


def load_run(path: str | Path) -> RunData:
    """Open a run directory; tolerates a run interrupted mid-write (a torn last line is ignored).

    Anything else that does not look like what laser wrote (a line that is not JSON, a missing
    field, a non-finite pose, a path leading out of the run) raises :class:`InputError` in one
    line naming the file and line: a damaged run is refused, never half-read."""
    path = Path(path).expanduser()
    if not (path / "summary.json").is_file():
        raise InputError(f"{path} is not a laser run directory (no summary.json)")
    summary = read_summary(path)
    frames: list[FrameRecord] = []
    jsonl = path / "frames.jsonl"
    if jsonl.exists():
        try:
            data = jsonl.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {jsonl}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            torn = lineno == len(lines)  # no newline after it: a write cut short by a hard kill
            try:
                r = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if torn:
                    continue
                raise _invalid(path, f"frames.jsonl line {lineno} is not a JSON record") from None
            try:
                record = _frame_record(path, r)
            except (KeyError, TypeError, ValueError) as exc:
                if torn:
                    continue
                msg = exc.args[0] if exc.args else type(exc).__name__
                raise _invalid(path, f"frames.jsonl line {lineno}: {msg}") from None
            if not all((path / record.paths[k]).exists() for k in ("image", "depth", "conf")):
                continue
            frames.append(record)
    return RunData(path, summary, frames)
