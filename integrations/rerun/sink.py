"""``RerunSink``: streams finalised frames and per-window statistics to Rerun.

Layout (see :mod:`.layout`): the camera pose and intrinsics on ``world/camera`` with its RGB,
depth, confidence and depth-layer images as children; this frame's points on ``world/points``;
a bounded static map on ``world/map``; the camera path on ``world/trajectory``; per-window
statistics under ``metrics/``. Timelines: ``frame`` (stream index) and ``video_time`` (seconds).

A viewer that closes or cannot be reached must never stop a reconstruction: every logging call is
guarded, the first failure is reported once as a warning, and the run goes on.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

import numpy as np
import rerun as rr

from laser_plugin.errors import OutputError
from laser_plugin.mapping import VoxelMap
from laser_plugin.types import ReconstructedFrame, WindowStats

from . import layout as L
from .config import RerunConfig
from .spec import RerunMode, RerunTarget

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_URL = "rerun+http://127.0.0.1:9876/proxy"


def points_stride(height: int, width: int, max_points: int) -> int:
    """Smallest pixel stride s with ceil(H/s)·ceil(W/s) <= max_points (1 when it already fits)."""
    if max_points <= 0:
        raise ValueError("max_points must be positive")
    s = max(1, math.ceil(math.sqrt(height * width / max_points)))
    while math.ceil(height / s) * math.ceil(width / s) > max_points:
        s += 1
    return s


def layer_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per layer label (golden-ratio hue steps)."""
    import colorsys

    h = (0.13 + 0.618034 * label) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def layer_annotations(layer_scales: np.ndarray | None, num_labels: int) -> list[rr.AnnotationInfo]:
    """Class 0 = no layer; class k+1 = layer k labelled with the scale LASER applied to it."""
    infos = [rr.AnnotationInfo(id=0, label="no layer", color=(0, 0, 0, 0))]
    for k in range(num_labels):
        if layer_scales is not None and k < len(layer_scales):
            text = f"layer {k}: scale {float(layer_scales[k]):.3f}"
        else:
            text = f"layer {k}"
        infos.append(rr.AnnotationInfo(id=k + 1, label=text, color=layer_color(k)))
    return infos


def _put_viewer_on_path() -> None:
    """``spawn`` runs the ``rerun`` binary from PATH; pip puts it beside this interpreter, which a
    non-activated virtualenv does not have on PATH."""
    import os
    import shutil

    here = Path(sys.executable).parent
    if shutil.which("rerun") is None and (here / "rerun").exists():
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"


class RerunSink:
    """A sink (``on_frame``, ``on_window``, ``on_correction``, ``close``) logging to Rerun.

    ``mode``: ``"spawn"`` a viewer, ``"save"`` to the .rrd file ``path_or_url``, ``"serve"`` a gRPC
    server (``self.url``), or ``"connect"`` to the viewer at ``path_or_url``.
    """

    def __init__(
        self,
        mode: RerunMode = "spawn",
        path_or_url: str | Path | None = None,
        config: RerunConfig | None = None,
    ):
        self.target = RerunTarget(mode, None if path_or_url is None else str(path_or_url))
        self.config = cfg = config or RerunConfig()
        self.url: str | None = None
        self.rec = rr.RecordingStream(cfg.app_id, recording_id=cfg.recording_id)
        self._open(L.default_blueprint())
        # The world is the first camera's frame: OpenCV axes.
        self.rec.log(L.WORLD, rr.ViewCoordinates.RDF, static=True)
        for path, name in L.SERIES_NAMES.items():
            self.rec.log(path, rr.SeriesLines(names=name), static=True)
        self.map = VoxelMap(max_points=cfg.map_max_points)
        self._centres: OrderedDict[int, np.ndarray] = OrderedDict()
        self._trajectory_logged = 0
        self._recent_times: OrderedDict[int, float] = OrderedDict()
        self._frames_since_map = 0
        self._frames_since_window = 0
        self._last_window_clock = time.perf_counter()
        self._plane_distance: float | None = None
        self._warned = False
        self._closed = False
        self.num_frames = 0
        self.lost = False
        self._strikes = 0
        """True once the viewer proved unreachable: nothing more is sent (memory stays bounded)."""

    # -- connection -------------------------------------------------------------------------
    def _open(self, blueprint) -> None:
        cfg, t = self.config, self.target
        try:
            if t.mode == "save":
                path = Path(t.path_or_url).expanduser()
                if not path.parent.is_dir():
                    raise OutputError(
                        f"cannot save the Rerun recording: {path.parent} is not a directory"
                    )
                self.rec.save(path, default_blueprint=blueprint)
                self.url = str(path)
            elif t.mode == "spawn":
                _put_viewer_on_path()
                self.rec.spawn(
                    port=cfg.spawn_port,
                    memory_limit=cfg.memory_limit,
                    hide_welcome_screen=True,
                    default_blueprint=blueprint,
                )
            elif t.mode == "serve":
                # A server sink rather than ``serve_grpc``, which always listens on 0.0.0.0.
                server = rr.GrpcServerSink(
                    bind_ip=cfg.bind,
                    port=cfg.grpc_port or 9876,
                    server_memory_limit=cfg.server_memory_limit,
                )
                self.rec.set_sinks(server, default_blueprint=blueprint)
                self.url = server.uri
                print(f"rerun: serving at {self.url} (rerun --connect {self.url})", file=sys.stderr)
                if cfg.web_viewer:
                    rr.serve_web_viewer(
                        web_port=cfg.web_port, open_browser=False, connect_to=self.url
                    )
                    web = f"http://127.0.0.1:{cfg.web_port}/?url={quote(self.url, safe='')}"
                    print(f"rerun: web viewer at {web}", file=sys.stderr)
            else:
                self.url = t.path_or_url or DEFAULT_CONNECT_URL
                self.rec.connect_grpc(self.url, default_blueprint=blueprint)
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(
                f"cannot open Rerun {t.mode} ({t.path_or_url or ''}): {exc}"
            ) from None

    def _guard(self, what: str, fn, *args) -> None:
        """Run one logging step; a failure is warned about once and never reaches the engine."""
        if self.lost:
            return
        try:
            fn(*args)
        except Exception as exc:
            self._warn(f"Rerun sink: {what} failed ({exc}); the run goes on")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(message)

    def _check_viewer(self) -> None:
        """Detect a viewer that closed or never came up.

        While it cannot connect, the SDK queues everything in memory; stop sending instead, so a
        long run does not grow without bound. A slow but connected viewer only delays the flush.
        """
        if self.lost or self.target.mode not in ("spawn", "connect"):
            return
        try:
            self.rec.flush(timeout_sec=self.config.check_timeout_s)
            self._strikes = 0
        except Exception as exc:
            # "unable to connect" is definitive; a timed-out flush gets a few more chances.
            self._strikes += 1
            if "connect" in str(exc).lower() or self._strikes >= self.config.check_strikes:
                self.lost = True
                self._warn(
                    f"Rerun viewer at {self.url or self.target.mode} is unreachable ({exc}); "
                    "no more data is sent to it, the run goes on"
                )

    # -- sink protocol ----------------------------------------------------------------------
    def on_frame(self, frame: ReconstructedFrame) -> None:
        self.num_frames += 1
        self._guard("logging a frame", self._log_frame, frame)
        if self.num_frames % self.config.check_every == 0:
            self._check_viewer()

    def on_window(self, stats: WindowStats) -> None:
        now = time.perf_counter()
        elapsed = now - self._last_window_clock
        fps = (
            self._frames_since_window / elapsed
            if elapsed > 0 and self._frames_since_window
            else None
        )
        self._last_window_clock, self._frames_since_window = now, 0
        self._guard("logging window statistics", self.log_window_stats, stats, fps)
        self._check_viewer()

    def on_correction(self, frames: list[ReconstructedFrame]) -> None:
        """Re-log corrected poses (e.g. after a loop closure); the latest row at a time wins."""
        for f in frames:
            self._guard("logging a corrected frame", self._log_camera, f, True)
        self._guard("logging the trajectory", self._log_trajectory, True)

    def on_interrupt(self, exc: BaseException) -> None:
        self._guard("flushing", lambda: self.rec.flush(timeout_sec=self.config.flush_timeout_s))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard("logging the map", self._log_map)
        self._guard("logging the trajectory", self._log_trajectory, True)
        self._guard("flushing", lambda: self.rec.flush(timeout_sec=self.config.flush_timeout_s))
        if self.target.mode != "serve" or self.lost:
            self._disconnect()

    def _disconnect(self) -> None:
        # Also when lost: disconnecting drops what the SDK still queues for the dead viewer.
        try:
            self.rec.disconnect()
        except Exception as exc:
            self._warn(f"Rerun sink: disconnecting failed ({exc})")

    def shutdown(self) -> None:
        """Close everything, including the gRPC server that ``serve`` mode keeps up after
        :meth:`close` so that late viewers still get the recording (it also ends with the process)."""
        self.close()
        self._disconnect()

    # -- logging ----------------------------------------------------------------------------
    def _set_time(self, index: int | None, seconds: float | None) -> None:
        self.rec.reset_time()
        if index is not None:
            self.rec.set_time(L.FRAME_TIMELINE, sequence=int(index))
        if seconds is not None:
            self.rec.set_time(L.VIDEO_TIMELINE, duration=float(seconds))

    def _log_frame(self, frame: ReconstructedFrame) -> None:
        cfg = self.config
        self._frames_since_window += 1
        self._recent_times[frame.index] = frame.timestamp
        while len(self._recent_times) > 1024:
            self._recent_times.popitem(last=False)
        if self._plane_distance is None:
            valid = frame.depth[(frame.depth > 0) & np.isfinite(frame.depth)]
            # Frustum size in scene units: the gauge is arbitrary, so follow the scene's depth.
            self._plane_distance = 0.15 * float(np.median(valid)) if valid.size else 0.1
        pts, cols = self._log_camera(frame, False)
        rec = self.rec
        image = rr.Image(frame.image)
        rec.log(L.RGB, image.compress(jpeg_quality=cfg.jpeg_quality) if cfg.jpeg_quality else image)
        if cfg.log_depth:
            rec.log(L.DEPTH, rr.DepthImage(frame.depth.astype(np.float32), meter=1.0))
        if cfg.log_confidence:
            conf8 = (np.clip(frame.conf, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            rec.log(L.CONFIDENCE, rr.Image(conf8, color_model="L"))
        if cfg.log_layers and frame.layers is not None:
            labels = frame.layers.astype(np.int32)
            n = int(labels.max()) + 1 if labels.size else 0
            rec.log(L.LAYERS, rr.AnnotationContext(layer_annotations(frame.layer_scales, n)))
            rec.log(L.LAYERS, rr.SegmentationImage((labels + 1).clip(0).astype(np.uint16)))
        self.map.add(pts, cols)
        self._frames_since_map += 1
        every = cfg.map_every_saved if self.target.mode == "save" else cfg.map_every
        if self._frames_since_map >= every:
            self._log_map()
        self._log_trajectory(False)

    def _log_camera(
        self, frame: ReconstructedFrame, corrected: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pose, pinhole and this frame's points at the frame's time; returns the points."""
        self._set_time(frame.index, frame.timestamp)
        c2w = np.asarray(frame.cam_to_world, dtype=np.float64)
        # Transform3D defaults to parent-from-child: camera-to-world goes in as is.
        self.rec.log(
            L.CAMERA,
            rr.Transform3D(translation=c2w[:3, 3], mat3x3=c2w[:3, :3]),
            rr.Pinhole(
                image_from_camera=np.asarray(frame.intrinsics, dtype=np.float64),
                resolution=[frame.width, frame.height],
                camera_xyz=rr.ViewCoordinates.RDF,
                image_plane_distance=self._plane_distance,
            ),
        )
        stride = points_stride(frame.height, frame.width, self.config.frame_points)
        pts, cols = frame.points_world(min_conf=self.config.min_conf, stride=stride)
        self.rec.log(L.POINTS, rr.Points3D(pts, colors=cols, radii=rr.Radius.ui_points(2.0)))
        self._centres[frame.index] = c2w[:3, 3].astype(np.float32)
        if corrected:
            self._trajectory_logged = 0
        return pts, cols

    def _log_trajectory(self, force: bool) -> None:
        n = len(self._centres)
        # Re-log when the path grew by 1/history of its length: O(history·N) points in total.
        if n < 2 or (
            not force and n - self._trajectory_logged < max(1, n // self.config.trajectory_history)
        ):
            return
        if force and n == self._trajectory_logged:
            return
        last = max(self._centres)
        self._set_time(last, self._recent_times.get(last))
        centres = np.stack([self._centres[i] for i in sorted(self._centres)])
        self.rec.log(
            L.TRAJECTORY,
            rr.LineStrips3D([centres], colors=[255, 80, 40], radii=rr.Radius.ui_points(2.0)),
        )
        self._trajectory_logged = n

    def _log_map(self) -> None:
        self._frames_since_map = 0
        pts, cols = self.map.points()
        if len(pts):
            self.rec.log(
                L.MAP, rr.Points3D(pts, colors=cols, radii=rr.Radius.ui_points(1.0)), static=True
            )

    def log_window_stats(self, stats: WindowStats, fps: float | None = None) -> None:
        """Per-window time series at the window's last frame (``fps``: frames/s, if measured)."""
        last = int(stats.frame_indices[-1]) if stats.frame_indices else None
        self._set_time(last, self._recent_times.get(last) if last is not None else None)
        values = {
            L.SCALE: stats.scale,
            L.DEPTH_RESIDUAL: stats.depth_residual,
            L.POSE_RESIDUAL: stats.pose_residual,
            L.NUM_LAYERS: stats.num_layers,
            L.LAYER_SPREAD: stats.layer_scale_spread,
            L.FPS: fps,
        }
        for path, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.rec.log(path, rr.Scalars(float(value)))
