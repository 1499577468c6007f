"""ViserSink: a live web viewer of a streaming reconstruction (a Sink of the engine).

Threads: the engine calls ``on_frame`` from its own thread; viser runs GUI callbacks on its
threads; a small flusher thread pushes the cloud and trajectory to the browsers at most every
``update_interval`` seconds, so a fast stream never waits on the network. One re-entrant lock
guards the state. ``on_frame`` blocks *before* taking the lock while the viewer is paused, so
the GUI stays responsive and the engine stops producing (back-pressure, not buffering).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from laser_plugin.errors import ConfigError
from laser_plugin.integrations.viser.cloud import VoxelCloud
from laser_plugin.integrations.viser.colors import point_colors
from laser_plugin.integrations.viser.compat import SceneCompat
from laser_plugin.integrations.viser.config import ViserConfig
from laser_plugin.integrations.viser.gui import build_controls
from laser_plugin.integrations.viser.sampling import (
    FrameSamples,
    rotation_to_wxyz,
    sample_frame,
    thumbnail,
    vertical_fov,
)
from laser_plugin.integrations.viser.worker import PausableWorker
from laser_plugin.types import ReconstructedFrame, WindowStats

CLOUD_NODE = "/world/cloud"
TRAJECTORY_NODE = "/world/trajectory"
CAMERAS_NODE = "/cameras"
CURRENT_NODE = "/current_camera"
_TRAJECTORY_COLOR = (255, 120, 0)
_CURRENT_COLOR = (255, 120, 0)
_FRUSTUM_COLOR = (40, 40, 40)
_MAX_TRAJECTORY_POINTS = 4096


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: may resolve to anything
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class _FrameItem:
    """A frame as queued for the viewer thread."""

    index: int
    cam_to_world: np.ndarray  # (4, 4) float64, OpenCV axes
    fov: float  # vertical, radians
    aspect: float  # width / height
    depth_scale: float  # median depth of the sampled pixels
    samples: FrameSamples
    thumbnail: np.ndarray | None  # (h, w, 3) uint8


@dataclass
class _FrameRecord:
    """What the viewer keeps per frame (a few hundred bytes: bounded enough for long runs)."""

    index: int
    ordinal: int
    cam_to_world: np.ndarray  # (4, 4) float64, OpenCV axes
    fov: float  # vertical, radians
    aspect: float  # width / height
    depth_scale: float  # median depth


class ViserSink:
    """Streams finalised frames to a viser server: cloud, frustums, trajectory and controls.

    Use it as an engine sink (``on_frame``, ``on_window``, ``on_correction``, ``close``), or
    feed it frames yourself. ``close()`` pushes the final state and keeps serving; ``stop()``
    shuts the server down (``serve_forever()`` blocks until Ctrl-C, then stops).
    """

    def __init__(self, config: ViserConfig | None = None) -> None:
        self.config = (config or ViserConfig()).validate()
        try:
            import viser
        except ImportError as exc:
            raise ConfigError(
                "the viser viewer needs the viser package: pip install 'laser-plugin[viser]'"
            ) from exc
        cfg = self.config
        # viser 0.2.7 reports the requested port, not the bound one, so resolve 0 ourselves.
        port = cfg.port or free_port(cfg.host)
        self.server = viser.ViserServer(host=cfg.host, port=port, verbose=False)
        self.port = int(self.server.get_port())
        shown_host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self.url = f"http://{shown_host}:{self.port}"
        if not is_loopback(cfg.host):
            print(
                f"warning: the viser viewer listens on {cfg.host}:{self.port}, which other "
                "machines can reach; anyone who connects can watch the reconstruction and "
                "pause the run. Use --host 127.0.0.1 to keep it on this machine.",
                file=sys.stderr,
                flush=True,
            )
        if cfg.verbose:
            print(f"viser viewer: {self.url}", file=sys.stderr, flush=True)

        self._compat = SceneCompat(self.server)
        self._lock = threading.RLock()
        self._state = "waiting for frames"

        self._cloud: VoxelCloud | None = None
        self._frustum_scale = cfg.frustum_scale or 0.1
        self._frames: list[_FrameRecord] = []
        self._indices: list[int] = []  # stream indices of self._frames, increasing
        self._frustums: dict[int, Any] = {}
        self._thumbs: dict[int, np.ndarray] = {}
        self._frustum_stride = 1
        self._live = True
        self._shown: int | None = None
        self._last_window: WindowStats | None = None
        self._dirty = False
        self._slider_max = 1
        self._last_index: int | None = None
        self._homed = False  # browsers already open get one view of the first frames

        self.frames_received = 0
        """Frames the viewer thread has taken in so far (``flush()`` first for an exact count)."""
        self.points_shown = 0
        """Points in the cloud last sent to the browsers."""
        self.pushes = 0
        """Cloud updates sent so far."""

        # Frames go through a bounded queue to the viewer thread: the engine pays for the
        # subsample and thumbnail only, not the voxel merge, JPEG encoding and messages.
        self._worker = PausableWorker(
            self._handle, self._tick, cfg.update_interval, cfg.max_queue, name="viser-viewer"
        )

        self.server.scene.set_up_direction("-y")  # OpenCV world: y points down
        self._cameras_root = self.server.scene.add_frame(CAMERAS_NODE, show_axes=False)
        self._controls = build_controls(self.server, cfg)
        self._wire_controls()
        self.server.on_client_connect(self._on_client_connect)

    # ------------------------------------------------------------------ Sink protocol

    def on_frame(self, frame: ReconstructedFrame) -> None:
        """Queue one finalised frame for the viewer; blocks while the viewer is paused (and
        when ``max_queue`` frames are already waiting)."""
        self._worker.raise_error("the viser viewer")
        self.wait_if_paused()
        if self._worker.stopped.is_set():
            return
        if self._last_index is not None and frame.index <= self._last_index:
            raise ValueError(
                f"frames must arrive in increasing index order: got {frame.index} "
                f"after {self._last_index}"
            )
        self._last_index = int(frame.index)
        self._worker.put("frame", self._light(frame))

    def _light(self, frame: ReconstructedFrame) -> _FrameItem:
        """What the viewer needs of a frame, small enough to queue many (~100 kB): the pixel
        subsample, the thumbnail and the camera; the full-size maps stay with the engine."""
        cfg = self.config
        samples = sample_frame(frame, cfg.points_per_frame)
        image = np.asarray(frame.image, np.uint8)
        k = np.asarray(frame.intrinsics, np.float64)
        return _FrameItem(
            index=int(frame.index),
            cam_to_world=np.array(frame.cam_to_world, np.float64),
            fov=vertical_fov(k, frame.height),
            aspect=frame.width / frame.height,
            depth_scale=float(np.median(samples.depth)) if len(samples.depth) else 1.0,
            samples=samples,
            thumbnail=thumbnail(image, cfg.thumbnail_width) if cfg.thumbnail_width else None,
        )

    def on_window(self, stats: WindowStats) -> None:
        """Show the last window's registration figures in the readout."""
        self._worker.put("window", stats)

    def on_correction(self, frames: list[ReconstructedFrame]) -> None:
        """Move already shown frames (and their points) to corrected poses (loop closure)."""
        self._worker.put("correction", list(frames))

    def on_interrupt(self, exc: BaseException) -> None:
        """The run stopped early (Ctrl-C, an error): say so and show what arrived."""
        self._worker.put("interrupt", None)

    def close(self) -> None:
        """End of stream: show everything queued. The viewer keeps serving until ``stop()``."""
        self._worker.put("close", None)
        self._worker.drain()
        self._worker.raise_error("the viser viewer")

    # ------------------------------------------------------------------ the viewer thread

    def _tick(self) -> None:
        if self._dirty:
            with self._lock:
                self._push()

    def _handle(self, kind: str, item: Any) -> None:
        with self._lock:
            if kind == "frame":
                self._add_frame(item)
            elif kind == "window":
                self._last_window = item
                self._dirty = True
            elif kind == "correction":
                self._apply_correction(item)
            elif kind == "interrupt":
                self._state = "interrupted"
                self._push()
            elif kind == "close":
                if self._state != "interrupted":
                    self._state = "finished"
                self._push()

    def _add_frame(self, item: _FrameItem) -> None:
        cfg = self.config
        if self._cloud is None:
            self._cloud = VoxelCloud(cfg.max_points, cfg.voxel_size or item.depth_scale / 100.0)
            self._frustum_scale = cfg.frustum_scale or item.depth_scale / 20.0
        self._cloud.add(*item.samples, frame=item.index)
        record = _FrameRecord(
            index=item.index,
            ordinal=len(self._frames),
            cam_to_world=item.cam_to_world,
            fov=item.fov,
            aspect=item.aspect,
            depth_scale=item.depth_scale,
        )
        self._frames.append(record)
        self._indices.append(record.index)
        self._add_frustum(record, item.thumbnail)
        if self._live:
            self._shown = record.index
        self.frames_received += 1
        self._state = "streaming"
        self._dirty = True

    def _apply_correction(self, frames: list[ReconstructedFrame]) -> None:
        moves: dict[int, np.ndarray] = {}
        for frame in frames:
            pos = bisect.bisect_left(self._indices, frame.index)
            if pos == len(self._indices) or self._indices[pos] != frame.index:
                continue
            record = self._frames[pos]
            new = np.asarray(frame.cam_to_world, np.float64)
            moves[record.index] = new @ np.linalg.inv(record.cam_to_world)
            record.cam_to_world = new.copy()
            handle = self._frustums.get(record.index)
            if handle is not None:
                handle.wxyz = rotation_to_wxyz(new[:3, :3])
                handle.position = new[:3, 3]
        if self._cloud is not None:
            self._cloud.transform_frames(moves)
        self._push()

    # ------------------------------------------------------------------ pause / lifecycle

    @property
    def paused(self) -> bool:
        return self._worker.paused

    def pause(self) -> None:
        """Pause the stream: the next ``on_frame`` blocks until ``resume()``."""
        self._worker.pause()
        with self._lock:
            self._controls.pause.visible = False
            self._controls.resume.visible = True
            self._push()  # show everything received so far while the user looks around

    def resume(self) -> None:
        """Let the stream go on."""
        with self._lock:
            self._controls.resume.visible = False
            self._controls.pause.visible = True
            self._dirty = True
        self._worker.resume()

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (the engine's producer side calls this through ``on_frame``).

        Returns True when the stream may go on (not paused, or stopped), False on timeout.
        """
        return self._worker.wait_if_paused(timeout)

    def flush(self) -> None:
        """Handle everything queued (unless paused), then send the cloud, trajectory and
        readout to the browsers now."""
        if not self.paused:
            self._worker.drain()
        with self._lock:
            self._push()

    def stop(self) -> None:
        """Shut the server down; a paused ``on_frame`` returns (and later frames are ignored)."""
        if self._worker.stopped.is_set():
            return
        self._worker.stop()
        self.server.stop()

    def serve_forever(self) -> None:
        """Keep the viewer open until Ctrl-C, then stop it."""
        if self.config.verbose:
            print(f"viser viewer open at {self.url} (Ctrl-C to quit)", file=sys.stderr, flush=True)
        try:
            while not self._worker.stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> ViserSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def num_frustums(self) -> int:
        with self._lock:
            return len(self._frustums)

    # ------------------------------------------------------------------ scene updates

    def _add_frustum(self, record: _FrameRecord, thumb: np.ndarray | None) -> None:
        if record.ordinal % self._frustum_stride:
            return
        cfg = self.config
        self._frustums[record.index] = self._add_frustum_node(
            f"{CAMERAS_NODE}/frame_{record.index:06d}", record, thumb, _FRUSTUM_COLOR, 1.0
        )
        if thumb is not None:
            self._thumbs[record.index] = thumb
        if len(self._frustums) > cfg.max_frustums:
            # Keep every other frustum (older ones too), so coverage stays even over the run.
            self._frustum_stride *= 2
            for rec in self._frames:
                if rec.index in self._frustums and rec.ordinal % self._frustum_stride:
                    self._frustums.pop(rec.index).remove()
                    self._thumbs.pop(rec.index, None)

    def _add_frustum_node(
        self,
        name: str,
        record: _FrameRecord,
        image: np.ndarray | None,
        color: tuple[int, int, int],
        size: float,
    ) -> Any:
        c2w = record.cam_to_world
        return self.server.scene.add_camera_frustum(
            name,
            fov=record.fov,
            aspect=record.aspect,
            scale=self._frustum_scale * size,
            color=color,
            image=image,
            format="jpeg",
            jpeg_quality=80,
            wxyz=rotation_to_wxyz(c2w[:3, :3]),
            position=c2w[:3, 3],
            visible=bool(self._controls.show_frustums.value) if name == CURRENT_NODE else True,
        )

    def _shown_record(self) -> _FrameRecord | None:
        if not self._frames:
            return None
        if self._live or self._shown is None:
            return self._frames[-1]
        pos = bisect.bisect_right(self._indices, self._shown) - 1
        return self._frames[max(pos, 0)]

    def _push(self) -> None:
        """Send the cloud, trajectory, current camera, timeline and readout (lock held)."""
        self._dirty = False
        controls = self._controls
        shown = self._shown_record()
        if self._cloud is not None and shown is not None:
            cloud = self._cloud
            mask = cloud.select(
                max_frame=None if self._live else shown.index,
                min_conf=float(controls.min_conf.value),
            )
            colors = point_colors(
                controls.color_mode.value,
                cloud.colors[mask],
                cloud.conf[mask],
                cloud.depth[mask],
                cloud.layer[mask],
            )
            self._compat.point_cloud(
                CLOUD_NODE,
                cloud.points[mask],
                colors,
                point_size=float(controls.point_size.value) * cloud.voxel_size,
            )
            self.points_shown = int(mask.sum())
            self.pushes += 1
            self._push_trajectory()
            self._add_frustum_node(
                CURRENT_NODE, shown, self._thumbs.get(shown.index), _CURRENT_COLOR, 1.5
            )
            self._push_timeline(shown)
            if controls.follow.value or not self._homed:
                self._point_clients_at(shown)
                self._homed = True
        controls.readout.content = self._readout()

    def _push_trajectory(self) -> None:
        if len(self._frames) < 2:
            return
        centres = np.array([rec.cam_to_world[:3, 3] for rec in self._frames])
        if len(centres) > _MAX_TRAJECTORY_POINTS:
            keep = np.linspace(0, len(centres) - 1, _MAX_TRAJECTORY_POINTS).round().astype(int)
            centres = centres[keep]
        self._compat.polyline(TRAJECTORY_NODE, centres, _TRAJECTORY_COLOR, 2.0)

    def _push_timeline(self, shown: _FrameRecord) -> None:
        slider = self._controls.frame
        latest = self._indices[-1]
        value = latest if self._live else int(slider.value)
        if latest != self._slider_max or int(slider.value) != value:
            self._compat.set_slider_range(slider, max(latest, 1), value)
            self._slider_max = latest

    def _readout(self) -> str:
        n = len(self._frames)
        # A frame already past wait_if_paused may land after pause(): the flag decides.
        state = "paused" if self.paused and self._state == "streaming" else self._state
        lines = [f"**{state}** · {n} frames · {self.points_shown} points shown"]
        if self._cloud is not None:
            lines.append(f"voxel {self._cloud.voxel_size:.3g} · {len(self._frustums)} frustums")
        w = self._last_window
        if w is not None:
            lines.append(
                f"window {w.window} · scale {w.scale:.3g} · depth residual {w.depth_residual:.3g}"
            )
        return "  \n".join(lines)

    def _camera_view(self, record: _FrameRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eye, look-at point and up vector of a chase view: behind and above a camera, far
        enough back (half the median depth) that its frustum and its view both fit on screen."""
        c2w = record.cam_to_world
        centre, forward, up = c2w[:3, 3], c2w[:3, 2], -c2w[:3, 1]  # OpenCV: y down
        back = 0.5 * record.depth_scale
        eye = centre - back * forward + 0.5 * back * up
        return eye, centre + record.depth_scale * forward, up

    def _point_clients_at(self, record: _FrameRecord, clients: list[Any] | None = None) -> None:
        eye, look_at, up = self._camera_view(record)
        for client in clients if clients is not None else list(self.server.get_clients().values()):
            try:
                with client.atomic():
                    client.camera.position = eye
                    client.camera.look_at = look_at
                    client.camera.up_direction = up
            except Exception:  # a client that just left: the stream must not care
                continue

    # ------------------------------------------------------------------ callbacks

    def _on_client_connect(self, client: Any) -> None:
        with self._lock:
            shown = self._shown_record()
            if shown is not None:
                self._point_clients_at(shown, [client])

    def _wire_controls(self) -> None:
        c = self._controls
        c.pause.on_click(lambda _: self.pause())
        c.resume.on_click(lambda _: self.resume())
        c.frame.on_update(lambda _: self._on_scrub())
        c.follow.on_update(lambda _: self._on_follow())
        c.show_frustums.on_update(lambda _: self._on_show_frustums())
        for handle in (c.color_mode, c.min_conf, c.point_size):
            handle.on_update(lambda _: self._refresh())

    def _refresh(self) -> None:
        """Re-send what is shown (a display setting changed); never waits for the queue."""
        with self._lock:
            self._push()

    def _on_scrub(self) -> None:
        with self._lock:
            if not self._indices:
                return
            value = int(self._controls.frame.value)
            latest = self._indices[-1]
            live = value >= latest
            if live == self._live and (live or value == self._shown):
                return  # our own update of the slider, or no change
            self._live = live
            self._shown = latest if live else value
            self._push()

    def _on_follow(self) -> None:
        with self._lock:
            shown = self._shown_record()
            if self._controls.follow.value and shown is not None:
                self._point_clients_at(shown)

    def _on_show_frustums(self) -> None:
        with self._lock:
            visible = bool(self._controls.show_frustums.value)
            self._cameras_root.visible = visible
            self._push()
