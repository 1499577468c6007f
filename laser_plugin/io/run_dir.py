"""The run directory: what ``laser run`` writes, and the one reader every integration uses.

Layout (each file written atomically; a frame's line in ``frames.jsonl`` is appended only after
its files exist, so an interrupted run is a valid run holding the frames finalised so far)::

    summary.json     settings, model, status (running|complete|interrupted|failed), counts, timings
    frames.jsonl     one JSON object per finalised frame
    trajectory.txt   TUM: timestamp tx ty tz qx qy qz qw (camera-to-world, OpenCV axes)
    intrinsics.txt   index fx fy cx cy width height
    images/NNNNNN.png   model-resolution RGB
    source/NNNNNN.jpg   original-resolution RGB (when the source provides it)
    depth/NNNNNN.npy    float32 z-depth in scene units, 0 = invalid
    conf/NNNNNN.npy     float16 confidence in [0, 1]
    layers/NNNNNN.npy   int16 depth-layer labels, -1 = none (when layer alignment ran)
    points.ply          coloured global point cloud, voxel-downsampled and bounded
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser_plugin.errors import OutputError
from laser_plugin.geometry.camera import rotmat_to_quat_xyzw
from laser_plugin.io.atomic import write_bytes_atomic, write_json_atomic, write_npy_atomic
from laser_plugin.io.ply import write_ply
from laser_plugin.mapping import VoxelMap
from laser_plugin.types import ReconstructedFrame, WindowStats

FORMAT_VERSION = 1
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
# index, never an input file name), state/ the resume state. A folder of _OWN_ENTRIES not listed
# here is taken as a per-frame folder.
_FRAME_FILE = re.compile(r"^\d{6,}\.[A-Za-z0-9]+$")
_OWN_FILE_PATTERNS = {"state": re.compile(r"^[A-Za-z0-9_-]+\.(npz|npy|json)$")}


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

    def plan():
        if resume or not ownership.entries(path):
            return None
        ours = ownership.is_claimed(path) or (path / "summary.json").is_file()
        if not overwrite:
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
        remove_files, remove_dirs, foreign = ownership.plan_run_removal(path, files, dirs)
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


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class RunWriter:
    """A sink writing the run directory. Call :meth:`close` with the final status.

    ``essential``: the engine stops the run if this sink fails (a full disk must not let the run
    go on with nothing saved). ``resume_frames``: continue an interrupted run whose first
    ``resume_frames`` frames are kept (later lines of frames.jsonl, trajectory.txt and
    intrinsics.txt are dropped; the point map is rebuilt from the kept frames).
    """

    essential = True

    def __init__(
        self,
        out_dir: Path,
        settings: dict[str, Any] | None = None,
        save_source_images: bool = True,
        map_max_points: int = 1_000_000,
        map_conf: float = 0.5,
        map_stride: int = 4,
        ply_every: int = 10,
        resume_frames: int | None = None,
    ):
        self.dir = Path(out_dir)
        try:
            for sub in ("images", "depth", "conf", "layers", "source"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {self.dir}: {exc.strerror or exc}"
            ) from None
        self.settings = settings or {}
        self.save_source_images = save_source_images
        self.map = VoxelMap(max_points=map_max_points)
        self.map_conf = map_conf
        self.map_stride = map_stride
        self.ply_every = ply_every
        self.num_frames = 0
        self.num_windows = 0
        self.timings: dict[str, float] = {}
        self.window_stats: list[dict] = []
        self.extra: dict[str, Any] = {}
        self.started = time.time()
        self._closed = False
        self._status = "complete"
        if resume_frames is not None:
            self._resume(resume_frames)
        else:
            for name in ("frames.jsonl", "trajectory.txt", "intrinsics.txt"):
                (self.dir / name).write_bytes(b"")
        # Kept open for the whole run (closed in close()), appended line by line.
        self._frames = open(self.dir / "frames.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._traj = open(self.dir / "trajectory.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._intr = open(self.dir / "intrinsics.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._write_summary("running")

    # -- sink protocol ---------------------------------------------------------------------
    def on_frame(self, frame: ReconstructedFrame) -> None:
        try:
            self._write_frame(frame)
        except OSError as exc:
            raise OutputError(
                f"cannot write frame {frame.index} to {self.dir}: {exc.strerror or exc} "
                f"({self.num_frames} frames were saved; the run can be resumed with --resume)"
            ) from None

    def _write_frame(self, frame: ReconstructedFrame) -> None:
        # File names come from the frame index only, never from input file names, so nothing is
        # ever written outside the run directory.
        name = f"{frame.index:06d}"
        write_bytes_atomic(self.dir / "images" / f"{name}.png", _png_bytes(frame.image))
        record: dict[str, Any] = {
            "index": frame.index,
            "timestamp": frame.timestamp,
            "window": frame.window,
            "width": frame.width,
            "height": frame.height,
            "intrinsics": frame.intrinsics.tolist(),
            "cam_to_world": frame.cam_to_world.tolist(),
            "image": f"images/{name}.png",
            "depth": f"depth/{name}.npy",
            "conf": f"conf/{name}.npy",
            "layers": None,
            "layer_scales": None,
            "source": None,
        }
        write_npy_atomic(self.dir / record["depth"], frame.depth.astype(np.float32))
        write_npy_atomic(self.dir / record["conf"], frame.conf.astype(np.float16))
        if frame.layers is not None:
            record["layers"] = f"layers/{name}.npy"
            write_npy_atomic(self.dir / record["layers"], frame.layers.astype(np.int16))
            if frame.layer_scales is not None:
                record["layer_scales"] = [round(float(s), 6) for s in frame.layer_scales]
        if self.save_source_images and frame.source_image is not None:
            record["source"] = f"source/{name}.jpg"
            record["source_width"] = int(frame.source_image.shape[1])
            record["source_height"] = int(frame.source_image.shape[0])
            write_bytes_atomic(self.dir / record["source"], _jpg_bytes(frame.source_image))
        c2w = frame.cam_to_world
        q = rotmat_to_quat_xyzw(c2w[:3, :3])
        t = c2w[:3, 3]
        self._traj.write(
            f"{frame.timestamp:.6f} {t[0]:.9g} {t[1]:.9g} {t[2]:.9g} {q[0]:.9g} {q[1]:.9g} {q[2]:.9g} {q[3]:.9g}\n"
        )
        self._traj.flush()
        k = frame.intrinsics
        self._intr.write(
            f"{frame.index} {k[0, 0]:.9g} {k[1, 1]:.9g} {k[0, 2]:.9g} {k[1, 2]:.9g} {frame.width} {frame.height}\n"
        )
        self._intr.flush()
        # Only now, with every file of the frame in place, does the frame become part of the run
        # (a hard kill may leave one trajectory/intrinsics line more; frames.jsonl is the record).
        self._frames.write(json.dumps(record) + "\n")
        self._frames.flush()
        self.num_frames += 1
        self._add_to_map(frame)

    def _add_to_map(self, frame: ReconstructedFrame) -> None:
        # Confidence as saved (float16), so a resumed run rebuilds exactly the same map.
        conf = frame.conf.astype(np.float16).astype(np.float32)
        saved = dataclasses.replace(frame, conf=conf)
        pts, cols = saved.points_world(min_conf=self.map_conf, stride=self.map_stride)
        self.map.add(pts, cols)

    def on_window(self, stats: WindowStats) -> None:
        self.num_windows += 1
        for k, v in stats.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        self.window_stats.append(
            {
                "window": stats.window,
                "frames": [stats.frame_indices[0], stats.frame_indices[-1]],
                "new_frames": len(stats.new_frame_indices),
                "scale": stats.scale,
                "depth_residual": stats.depth_residual,
                "pose_residual": stats.pose_residual,
                "overlap_pixels": stats.overlap_pixels,
                "num_layers": stats.num_layers,
                "layer_scale_spread": stats.layer_scale_spread,
                "warnings": stats.warnings,
            }
        )
        for fh in (self._frames, self._traj, self._intr):
            os.fsync(fh.fileno())
        if self.num_windows % self.ply_every == 0:
            self.write_points()
        self._write_summary("running")

    def on_correction(self, frames: list[ReconstructedFrame]) -> None:
        """Loop closure moved frames already written: rewrite their depth maps, then frames.jsonl
        and trajectory.txt atomically (each replaced as a whole, so a reader sees the old or the
        new version). The point map is rebuilt from the saved frames at close."""
        fixed = {f.index: f for f in frames}
        try:
            for f in frames:
                write_npy_atomic(
                    self.dir / "depth" / f"{f.index:06d}.npy", f.depth.astype(np.float32)
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
        status = status or self._status
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
                run = load_run(self.dir)
                for i in range(len(run.frames)):
                    self._add_to_map(run.load_frame(i))
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

    def _resume(self, n: int) -> None:
        have = self._count_frames()
        if have < n:
            raise OutputError(
                f"cannot resume {self.dir}: frames.jsonl holds {have} frames, the saved state {n}"
            )
        self._reconcile(n)
        try:
            old = json.loads((self.dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        self.window_stats = list(old.get("window_stats", []))
        self.timings = dict(old.get("timings_s", {}))
        self.extra["resumed"] = int(old.get("resumed", 0)) + 1
        run = load_run(self.dir)
        for i in range(len(run.frames)):
            self._add_to_map(run.load_frame(i))
        self.num_frames = len(run.frames)
        self.num_windows = len({f.window for f in run.frames})

    # -- helpers ---------------------------------------------------------------------------
    def write_points(self) -> None:
        pts, cols = self.map.points()
        write_ply(self.dir / "points.ply", pts, cols)

    def _write_summary(self, status: str) -> None:
        elapsed = time.time() - self.started
        write_json_atomic(
            self.dir / "summary.json",
            {
                "format_version": FORMAT_VERSION,
                "status": status,
                "settings": self.settings,
                "frames": self.num_frames,
                "windows": self.num_windows,
                "elapsed_s": round(elapsed, 3),
                "frames_per_s": round(self.num_frames / elapsed, 3) if elapsed > 0 else None,
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "timings_ms_per_frame": {
                    k: round(1000 * v / max(self.num_frames, 1), 3) for k, v in self.timings.items()
                },
                "map_points": len(self.map),
                "map_voxel_size": self.map.voxel_size,
                "window_stats": self.window_stats[-1000:],
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


@dataclass
class RunData:
    """A run directory opened for reading (complete or interrupted)."""

    path: Path
    summary: dict
    frames: list[FrameRecord] = field(default_factory=list)

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

    def load_frame(self, i: int) -> ReconstructedFrame:
        """The i-th frame of the run (position in ``frames``) as a :class:`ReconstructedFrame`."""
        from PIL import Image

        rec = self.frames[i]
        p = rec.paths
        with Image.open(_inside(self.path, p["image"])) as im:
            image = np.asarray(im.convert("RGB"))
        source = None
        if p.get("source"):
            with Image.open(_inside(self.path, p["source"])) as im:
                source = np.asarray(im.convert("RGB"))
        layers = np.load(_inside(self.path, p["layers"])) if p.get("layers") else None
        return ReconstructedFrame(
            index=rec.index,
            timestamp=rec.timestamp,
            image=image,
            cam_to_world=rec.cam_to_world,
            intrinsics=rec.intrinsics,
            depth=np.load(_inside(self.path, p["depth"])),
            conf=np.load(_inside(self.path, p["conf"])).astype(np.float32),
            window=rec.window,
            layers=layers,
            layer_scales=None
            if rec.layer_scales is None
            else np.asarray(rec.layer_scales, np.float32),
            source_image=source,
        )


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
    raise InputError(f"{run_dir} is not a valid run: frames.jsonl names {rel!r}, outside the run directory")


def load_run(path: str | Path) -> RunData:
    """Open a run directory; tolerates a run interrupted mid-write (a torn last line is ignored)."""
    from laser_plugin.errors import InputError

    path = Path(path).expanduser()
    if not (path / "summary.json").is_file():
        raise InputError(f"{path} is not a laser run directory (no summary.json)")
    summary = json.loads((path / "summary.json").read_text())
    frames: list[FrameRecord] = []
    jsonl = path / "frames.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a hard kill
            paths = {k: r.get(k) for k in ("image", "depth", "conf", "layers", "source")}
            for k, rel in paths.items():
                if rel is not None or k in ("image", "depth", "conf"):
                    _inside(path, rel)
            if not all((path / paths[k]).exists() for k in ("image", "depth", "conf")):
                continue
            frames.append(
                FrameRecord(
                    index=int(r["index"]),
                    timestamp=float(r["timestamp"]),
                    window=int(r["window"]),
                    width=int(r["width"]),
                    height=int(r["height"]),
                    intrinsics=np.asarray(r["intrinsics"], dtype=np.float64),
                    cam_to_world=np.asarray(r["cam_to_world"], dtype=np.float64),
                    paths=paths,
                    layer_scales=r.get("layer_scales"),
                    source_size=(r["source_width"], r["source_height"])
                    if r.get("source")
                    else None,
                )
            )
    return RunData(path, summary, frames)
