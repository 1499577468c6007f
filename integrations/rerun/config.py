"""Settings of the Rerun sink (a dataclass tyro can expose)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RerunConfig:
    """What the Rerun sink logs and how much memory it may use."""

    app_id: str = "laser"
    """Rerun application id (viewers group recordings by it)."""
    recording_id: str | None = None
    """Fixed recording id (a fresh one per run when None); fixing it makes recordings reproducible."""
    memory_limit: str = "2GiB"
    """Memory limit of a spawned viewer; beyond it the viewer drops the oldest data."""
    server_memory_limit: str = "1GiB"
    """Memory limit of the gRPC server of ``serve`` mode (same dropping policy)."""
    grpc_port: int | None = None
    """Port of the gRPC server in ``serve`` mode (Rerun's default, 9876, when None)."""
    bind: str = "127.0.0.1"
    """Address the gRPC server of ``serve`` mode listens on; "0.0.0.0" exposes the recording to
    the network (only when asked: it has no authentication)."""
    spawn_port: int = 9876
    """Port of the viewer started by ``spawn``."""
    web_viewer: bool = True
    """In ``serve`` mode, also host the web viewer (open its printed URL in a browser)."""
    web_port: int = 9090
    """Port of the web viewer in ``serve`` mode."""
    frame_points: int = 20_000
    """Most points logged per frame under ``world/points``; the pixel stride is chosen to stay under it."""
    min_conf: float = 0.1
    """Confidence (rank-normalised, 0..1) a pixel needs to appear in ``world/points`` and the map."""
    map_max_points: int = 200_000
    """Cap on ``world/map``: a voxel map that coarsens itself to stay under it."""
    map_every: int = 20
    """Live modes: re-log the static ``world/map`` every this many frames (and at the end)."""
    map_every_saved: int = 200
    """``save`` mode: the same, rarer, since every copy stays in the file although only the last
    one is shown."""
    trajectory_history: int = 100
    """``world/trajectory`` is re-logged whenever it grew by 1/this of its length, so a stream of N
    frames writes about this many times N points in total instead of N²/2."""
    jpeg_quality: int | None = 85
    """JPEG-compress the RGB images at this quality (None: raw pixels, 3 bytes per pixel)."""
    log_depth: bool = True
    """Log the depth image (the viewer can back-project it through the pinhole)."""
    log_confidence: bool = True
    """Log the confidence image."""
    log_layers: bool = True
    """Log the depth-layer segmentation with each layer's scale as its label."""
    check_every: int = 30
    """spawn/connect: check the viewer is still reachable every this many frames (and per window)."""
    check_timeout_s: float = 1.0
    """spawn/connect: how long a check may wait for the viewer to take the queued data."""
    check_strikes: int = 3
    """spawn/connect: consecutive failed checks after which the viewer counts as gone."""
    flush_timeout_s: float = 5.0
    """At close, wait at most this long for the viewer to take the remaining data."""
