"""The viser viewer in a real browser: Debian's chromium, headless, driven by Playwright.

What reached the client is read on the client side: every websocket frame the page receives
is captured by Playwright and decoded with viser's own wire format (msgpack, plus zstd and
out-of-band binary buffers from viser 1.0), then replayed into a scene-tree model: node name ->
message type and point count, minus removed nodes. So "12 frustums and 30,000 points reached
the browser" is checked on bytes the browser actually received, not on server counters alone;
the canvas screenshot shows they were drawn; the control panel's text comes from the DOM.

Needs ``pip install playwright`` and ``apt-get install chromium`` (never ``playwright
install``); skipped, with the reason, where either is missing. Runs with viser 0.2.7 and 1.1.x.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import os
import re
import shutil
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("viser")
sync_api = pytest.importorskip("playwright.sync_api")

from laser_plugin.integrations.viser import ViserSink, make_viser_sink  # noqa: E402

CHROMIUM = os.environ.get("LASER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # Software WebGL on machines without a GPU, also on Chromium builds that no longer fall
    # back to it on their own.
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
VISER_VERSION = importlib.metadata.version("viser")
NEW_WIRE = int(VISER_VERSION.split(".")[0]) >= 1
"""viser >= 1.0 frames: [u64 raw len][u64 zstd len][zstd msgpack][padding][binary buffers]."""

if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


# ---------------------------------------------------------------------- client-side model


def _decode(payload: bytes) -> list[tuple[dict, list[int]]]:
    """One websocket frame -> [(message dict, byte lengths of its frame's binary buffers)]."""
    import msgspec

    if not NEW_WIRE:  # 0.2.x: a msgpack array of messages, arrays inline as bytes
        return [(m, []) for m in msgspec.msgpack.decode(payload)]
    import zstandard

    raw_len, zst_len = struct.unpack_from("<QQ", payload, 0)
    inner = zstandard.ZstdDecompressor().decompress(payload[16 : 16 + zst_len], raw_len)
    batch = msgspec.msgpack.decode(inner)
    lengths = list(batch["binaryBufferLengths"])
    return [(m, lengths) for m in batch["messages"]]


def _num_points(message: dict, lengths: list[int]) -> int:
    """Points in a PointCloudMessage (float32 in 0.2.x; float16/32 placeholders in 1.x)."""
    if not NEW_WIRE:
        return len(message["points"]) // 12
    ref = message["props"]["points"]
    itemsize = np.dtype(ref["dtype"]).itemsize
    return lengths[ref["__binary_index"]] // (3 * itemsize)


class ClientScene:
    """The scene tree as the browser received it, rebuilt from captured websocket frames."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, int]] = {}  # name -> (message type, points)
        self.hidden: set[str] = set()
        self.camera: dict[str, np.ndarray] = {}  # last position / look_at set by the server
        self.frames = 0
        self.cloud_dtype = "<f4"  # 0.2.x always sends float32
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def attach(self, page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", self._on_frame))

    def _on_frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        try:
            messages = _decode(payload)
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))
            return
        with self._lock:
            self.frames += 1
            for message, lengths in messages:
                self._apply(message, lengths)

    def _apply(self, message: dict, lengths: list[int]) -> None:
        kind = message["type"]
        if kind == "ResetSceneMessage":
            self.nodes.clear()
        elif kind == "RemoveSceneNodeMessage":
            self.nodes.pop(message["name"], None)
        elif kind == "SetSceneNodeVisibilityMessage":
            (self.hidden.discard if message["visible"] else self.hidden.add)(message["name"])
        elif kind == "SceneNodeUpdateMessage" and "visible" in message.get("updates", {}):
            name, visible = message["name"], message["updates"]["visible"]
            (self.hidden.discard if visible else self.hidden.add)(name)
        elif kind == "SetCameraPositionMessage":
            self.camera["position"] = np.asarray(message["position"], np.float64)
        elif kind == "SetCameraLookAtMessage":
            self.camera["look_at"] = np.asarray(message["look_at"], np.float64)
        elif kind == "PointCloudMessage":
            self.nodes[message["name"]] = (kind, _num_points(message, lengths))
            if NEW_WIRE:  # 1.x may send float16 positions; ours must be float32
                self.cloud_dtype = message["props"]["points"]["dtype"]
        elif kind in (
            "CameraFrustumMessage",
            "FrameMessage",
            "LineSegmentsMessage",  # 1.x trajectory
            "CatmullRomSplineMessage",  # 0.2.x trajectory
        ):
            self.nodes[message["name"]] = (kind, 0)

    def frustums(self, prefix: str = "/cameras/") -> int:
        with self._lock:
            return sum(
                1
                for n, (k, _) in self.nodes.items()
                if k == "CameraFrustumMessage" and n.startswith(prefix)
            )

    def points(self, name: str = "/world/cloud") -> int:
        with self._lock:
            return self.nodes.get(name, ("", -1))[1]


def wait_until(page, predicate, timeout: float = 15.0) -> bool:
    """Poll while letting Playwright dispatch its events (websocket frames)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        page.wait_for_timeout(100)
    return bool(predicate())


def colourful_fraction(page) -> float:
    """Fraction of canvas pixels that are clearly coloured (max - min channel > 40) or dark.

    An empty viser scene (white background, light grey grid) scores ~0.016.
    """
    from PIL import Image

    png = page.locator("canvas").first.screenshot()
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    colourful = (rgb.max(-1) - rgb.min(-1)) > 40
    dark = rgb.max(-1) < 150
    return float((colourful | dark).mean())


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo_frames():
    """A demo run of the engine: 16 frames of the synthetic scene, 64x112."""
    from laser_plugin import LaserConfig, StreamingReconstructor
    from laser_plugin.models.synthetic import make_model, make_scene

    scene = make_scene("demo", num_frames=16, height=64, width=112)
    rec = StreamingReconstructor(make_model(scene=scene), LaserConfig(window_size=8, overlap=3))
    return rec.reconstruct(scene.frames())


@pytest.fixture
def sink():
    # ~1500 points a frame: enough to see, light enough for software WebGL on 2 cores.
    s = make_viser_sink(port=0, update_interval=0.1, points_per_frame=1500, verbose=False)
    yield s
    s.stop()


def open_viewer(browser, sink: ViserSink):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    scene = ClientScene()
    scene.attach(page)
    page.goto(sink.url)
    page.get_by_role("button", name="Pause stream").wait_for(timeout=15000)
    return page, scene


def save_screenshot(page, name: str, tmp_path: Path) -> Path:
    """Into tmp_path, and into $LASER_TEST_ARTIFACTS when set (for CI artifacts)."""
    out = tmp_path / name
    page.screenshot(path=str(out))
    if os.environ.get("LASER_TEST_ARTIFACTS"):
        dest = Path(os.environ["LASER_TEST_ARTIFACTS"]) / f"viser-{VISER_VERSION}-{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest)
    return out


def _feed(
    sink: ViserSink, frames, done: threading.Event, errors: list, delay: float, fed=None
) -> None:
    try:
        for frame in frames:
            sink.on_frame(frame)
            if fed is not None:
                fed.append(frame.index)  # on_frame came back: the engine could go on
            time.sleep(delay)
        sink.close()
    except Exception as exc:
        errors.append(exc)
    finally:
        done.set()


# ---------------------------------------------------------------------- tests


def test_demo_run_reaches_and_is_drawn_in_the_browser(browser, demo_frames, tmp_path):
    sink = make_viser_sink(port=0, update_interval=0.1, verbose=False)  # full density
    try:
        _check_demo_run(browser, sink, demo_frames, tmp_path)
    finally:
        sink.stop()


def _check_demo_run(browser, sink, demo_frames, tmp_path):
    page, scene = open_viewer(browser, sink)
    page.wait_for_timeout(1500)  # let the empty scene render: the blank baseline
    blank = colourful_fraction(page)

    for frame in demo_frames:
        sink.on_frame(frame)
    sink.close()
    n = len(demo_frames)
    assert sink.num_frustums == n and sink.points_shown > 1000

    assert wait_until(
        page, lambda: scene.frustums() == n and scene.points() == sink.points_shown
    ), (
        f"client got {scene.frustums()} frustums / {scene.points()} points, "
        f"server sent {n} / {sink.points_shown}"
    )
    assert not scene.errors
    assert scene.points() == len(sink._cloud)  # the whole bounded cloud, nothing lost
    assert scene.cloud_dtype == "<f4"  # float32 positions, not viser 1.x's float16 default
    assert "/world/trajectory" in scene.nodes and "/current_camera" in scene.nodes

    # The control panel, as rendered: readout and the scrubber's range.
    readout = page.get_by_text(re.compile(r"\d+ frames")).first
    assert wait_until(page, lambda: f"finished · {n} frames" in readout.inner_text()), (
        readout.inner_text()
    )
    scrubber = page.locator('[role="slider"]').first
    assert scrubber.get_attribute("aria-valuemax") == str(demo_frames[-1].index)

    wait_until(page, lambda: colourful_fraction(page) > 0.08, timeout=20)
    drawn = colourful_fraction(page)
    print(f"canvas colourful fraction: empty {blank:.4f}, with the demo run {drawn:.4f}")
    save_screenshot(page, "demo.png", tmp_path)
    assert blank < 0.03, f"the empty scene was already {blank:.3f} colourful"
    assert drawn > 0.08 > blank
    page.close()


def _endless(frames, stop: threading.Event):
    """The demo frames over and over, re-indexed, until ``stop`` (a long live stream)."""
    for i in range(100_000):
        if stop.is_set():
            return
        yield dataclasses.replace(frames[i % len(frames)], index=i)


def test_pause_button_stops_the_stream_and_resume_continues(browser, sink, demo_frames):
    page, scene = open_viewer(browser, sink)
    done, stop, errors, fed = threading.Event(), threading.Event(), [], []
    stream = _endless(demo_frames, stop)
    producer = threading.Thread(target=_feed, args=(sink, stream, done, errors, 0.1, fed))
    producer.start()
    try:
        assert wait_until(page, lambda: scene.frustums() >= 3)

        page.get_by_role("button", name="Pause stream").click()
        assert wait_until(page, lambda: sink.paused, timeout=5), (
            "the click did not reach the server"
        )
        page.get_by_role("button", name="Resume stream").wait_for(timeout=5000)
        page.wait_for_timeout(500)  # a frame already inside on_frame may still land
        received, shown, returned = sink.frames_received, scene.frustums(), len(fed)
        page.wait_for_timeout(1500)
        assert len(fed) == returned, "the producer was not blocked while paused"
        assert sink.frames_received == received, "frames kept coming while paused"
        assert scene.frustums() == shown, "the browser kept receiving frames while paused"
        assert producer.is_alive() and not done.is_set()  # blocked in on_frame, not finished
        readout = page.get_by_text(re.compile(r"\d+ frames")).first
        assert wait_until(page, lambda: "paused" in readout.inner_text()), readout.inner_text()

        page.get_by_role("button", name="Resume stream").click()
        assert wait_until(page, lambda: scene.frustums() >= shown + 3), "no frames after resume"
        assert sink.frames_received >= received + 3 and not errors
    finally:
        stop.set()
        sink.resume()
        assert done.wait(10)
    page.close()


def test_client_leaving_mid_stream_does_not_disturb_the_run(browser, sink, demo_frames):
    page, scene = open_viewer(browser, sink)
    done, errors = threading.Event(), []
    producer = threading.Thread(target=_feed, args=(sink, demo_frames, done, errors, 0.1))
    producer.start()
    assert wait_until(page, lambda: scene.frustums() >= 2)
    page.close()  # the browser tab goes away mid-stream
    assert done.wait(15) and not errors
    assert sink.frames_received == len(demo_frames)

    # A new client gets the complete state.
    page, scene = open_viewer(browser, sink)
    assert wait_until(page, lambda: scene.frustums() == len(demo_frames))
    assert scene.points() == sink.points_shown
    page.close()


def test_browser_controls_change_the_scene(browser, sink, demo_frames):
    for frame in demo_frames:
        sink.on_frame(frame)
    sink.close()
    page, scene = open_viewer(browser, sink)
    assert wait_until(page, lambda: scene.points() == sink.points_shown)
    assert "/cameras" not in scene.hidden

    page.get_by_text("Show frustums").click()
    assert wait_until(page, lambda: "/cameras" in scene.hidden), "frustums were not hidden"

    # Scrub back to the third frame: the browser gets the map as of that frame.
    slider = page.locator('[role="slider"]').first
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    target = demo_frames[2].index
    expected = int(sink._cloud.select(max_frame=target).sum())
    assert expected < len(sink._cloud)
    assert wait_until(page, lambda: scene.points() == expected), (
        f"client shows {scene.points()} points, expected {expected} as of frame {target}"
    )

    # Follow camera: the browser's view jumps behind the shown (scrubbed) camera.
    eye, look_at, _ = sink._camera_view(sink._shown_record())
    assert sink._shown_record().index == target
    page.get_by_text("Follow camera").click()
    assert wait_until(
        page,
        lambda: (
            "position" in scene.camera
            and np.allclose(scene.camera["position"], eye, atol=1e-4)
            and np.allclose(scene.camera.get("look_at", np.zeros(3)), look_at, atol=1e-4)
        ),
    ), f"camera at {scene.camera}, expected eye {eye} looking at {look_at}"
    page.close()
