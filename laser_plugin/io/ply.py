"""Binary little-endian PLY point clouds with colour (x y z float32, red green blue uchar)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.io.atomic import write_bytes_atomic

_VERTEX = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


def ply_bytes(points: np.ndarray, colors: np.ndarray) -> bytes:
    """(N, 3) float points and (N, 3) uint8 colours -> PLY file bytes."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError("points and colors must have the same length")
    v = np.empty(len(points), dtype=_VERTEX)
    v["x"], v["y"], v["z"] = points.T
    v["red"], v["green"], v["blue"] = colors.T
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by laser-plugin\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    return header.encode("ascii") + v.tobytes()


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write atomically."""
    write_bytes_atomic(Path(path), ply_bytes(points, colors))


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply` -> ((N, 3) float32, (N, 3) uint8)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    v = np.frombuffer(data, dtype=_VERTEX, count=count, offset=end)
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1)
    cols = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    return pts, cols
