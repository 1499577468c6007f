"""Frame sources: an image folder (natural sort), a video file (PyAV) or an iterable of arrays.

Every source yields :class:`SourceFrame` lazily, so a long video is never held in memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laser_plugin.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".gif"}


@dataclass
class SourceFrame:
    index: int
    timestamp: float
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    name: str = ""


def natural_key(text: str) -> list:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def to_rgb_uint8(array: np.ndarray, what: str = "frame") -> np.ndarray:
    """Grayscale, RGBA, 16-bit and float images -> (H, W, 3) uint8 RGB."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(f"{what} must be an HxW, HxWx3 or HxWx4 image, got shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise InputError(f"{what} is too small ({a.shape[1]}x{a.shape[0]} pixels)")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    raise InputError(f"{what} has unsupported dtype {a.dtype}")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, applying its EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.uint32)
                peak = 65535 if arr.max() > 255 else 255
                return to_rgb_uint8((arr * 255 // peak).astype(np.uint8), str(path))
            return to_rgb_uint8(np.asarray(img.convert("RGB")), str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = sorted(
        (p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name)
    )
    skipped = len(files) - len(images)
    if not images:
        raise InputError(
            f"no images in folder {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if skipped:
        warnings.warn(f"skipped {skipped} non-image file(s) in {folder}", stacklevel=2)
    return images


def iter_folder(folder: Path, fps: float) -> Iterator[SourceFrame]:
    for i, path in enumerate(list_images(folder)):
        try:
            image = read_image(path)
        except InputError as exc:
            warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
            continue
        yield SourceFrame(i, i / fps, image, path.name)


def iter_video(path: Path, stride: int = 1) -> Iterator[SourceFrame]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot open video {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        kept = 0
        try:
            for frame in container.decode(stream):
                if index % stride == 0:
                    ts = (
                        float(frame.time)
                        if frame.time is not None
                        else index / float(stream.average_rate or 30)
                    )
                    yield SourceFrame(
                        kept, ts, frame.to_ndarray(format="rgb24"), f"{path.name}#{index}"
                    )
                    kept += 1
                index += 1
        except (av.error.FFmpegError, OSError) as exc:
            if kept == 0:
                raise InputError(f"cannot decode video {path}: {exc}") from None
            warnings.warn(f"video {path} ended early after {kept} frames: {exc}", stacklevel=2)
        if kept == 0:
            raise InputError(f"video {path} has no decodable frames")
        declared = int(stream.frames or 0)  # 0 where the container does not say
        if declared and index < declared - 1:  # one frame of slack: counts are sometimes rounded
            warnings.warn(
                f"video {path} declares {declared} frames but only {index} could be decoded (truncated file?)",
                stacklevel=2,
            )


def count_frames(source: str | Path, stride: int = 1) -> int | None:
    """Frames :func:`open_source` will give for a folder or video path, for progress bars and
    ETAs; None where unknown (a container that declares no frame count). Reads no pixels: a
    folder's listing, or the video's stream header."""
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            with warnings.catch_warnings():  # the run itself reports skipped files, once
                warnings.simplefilter("ignore")
                n = len(list_images(path))
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            import av

            with av.open(str(path)) as container:
                n = int(container.streams.video[0].frames or 0) if container.streams.video else 0
            if n <= 0:
                return None
        else:
            return None
    except Exception:  # a progress total is a nicety: never fail a run over it
        return None
    return -(-n // stride)


def open_source(
    source: str | Path | Iterable, fps: float = 30.0, stride: int = 1, max_frames: int | None = None
) -> Iterator[SourceFrame]:
    """Frames from a path (image folder or video file) or an iterable of HxWx3 uint8 arrays.

    ``stride`` keeps every n-th video frame; ``fps`` sets timestamps where the source has none.
    """
    it = _open(source, fps, stride)
    for i, frame in enumerate(it):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _open(source, fps: float, stride: int) -> Iterator[SourceFrame]:
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if not path.is_dir() and not path.is_file():
            # A pipe with no writer would block the open forever, and a run reads its input more
            # than once (the up-front check, the run, a resume): a stream cannot be read twice.
            raise InputError(
                f"{path} is not a regular file or folder (a pipe, socket or device): "
                "save the stream to a file first"
            )
        if path.is_dir():
            yield from (f for f in iter_folder(path, fps) if f.index % stride == 0)
            return
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            yield SourceFrame(0, 0.0, read_image(path), path.name)
            return
        if suffix not in VIDEO_SUFFIXES:
            raise InputError(
                f"unsupported input {path.name}: give a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an image folder"
            )
        yield from iter_video(path, stride)
        return
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = list(source)
    try:
        iterator = iter(source)
    except TypeError:
        raise InputError(f"unsupported input of type {type(source).__name__}") from None
    for i, item in enumerate(iterator):
        if isinstance(item, SourceFrame):
            yield item
            continue
        yield SourceFrame(i, i / fps, to_rgb_uint8(item, f"frame {i}"))
