"""Shared helpers of the fault tests (no tests here): CLI drivers, a model for any input, media.

The CLI is driven two ways: in-process through ``laser_plugin.cli.main`` (fast; the exit code and
stderr are what a user sees) and, where a real process matters (signals, ``kill -9``, tracebacks),
as a subprocess through :data:`DRIVER`, which runs the real ``laser`` entry point after pointing
the ``synthetic`` backend at a small pre-rendered scene (or at :class:`PlaneModel`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from laser_plugin.types import WindowPrediction

SCENE_ARGS = ("demo", 40, 64, 112)  # name, frames, height, width: small enough for 2 CPU cores

# Runs the real `laser` command. LASER_TEST_MODEL=scene:NAME:N:H:W -> the synthetic backend over
# that scene; =plane -> PlaneModel (reconstructs any input). LASER_TEST_DELAY=s slows every model
# call (so a signal can land mid-run); LASER_TEST_COUNT=1 prints the number of model calls at exit.
DRIVER = r"""
import os, sys, time
sys.path.insert(0, os.environ["LASER_TEST_DIR"])
import laser_plugin.models.synthetic as synthetic
spec = os.environ.get("LASER_TEST_MODEL", "")
delay = float(os.environ.get("LASER_TEST_DELAY", "0"))
if spec.startswith("scene:"):
    _, name, n, h, w = spec.split(":")
    scene = synthetic.make_scene(name, int(n), int(h), int(w))
    for i in range(scene.num_frames):
        scene.render(i)  # registers every frame's fingerprint in this process
    model = synthetic.EmulatedModel(scene)
elif spec == "plane":
    from test_faults_common import PlaneModel
    model = PlaneModel()
else:
    model = None
if model is not None:
    class Slow:
        def __init__(self, inner):
            self.inner = inner
        def input_size(self, h, w):
            return self.inner.input_size(h, w)
        def __call__(self, images):
            time.sleep(delay)
            return self.inner(images)
    synthetic.make_model = lambda weights=None, device="cpu", **kw: Slow(model)
    if os.environ.get("LASER_TEST_COUNT"):
        import atexit
        counted = Slow(model)
        calls = [0]
        _call = Slow.__call__
        def counting(self, images):
            calls[0] += 1
            return _call(self, images)
        Slow.__call__ = counting
        atexit.register(lambda: print(f"model calls: {calls[0]}", file=sys.stderr))
from laser_plugin.cli import main
raise SystemExit(main())
"""


def cli_env(model: str | None = None, delay: float = 0.0, count: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LASER_TEST_DIR=str(Path(__file__).parent),
        LASER_TEST_MODEL=model or "",
        LASER_TEST_DELAY=str(delay),
        LASER_TEST_COUNT="1" if count else "",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="default",
    )
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, *args]


def run_cli(*args: str, model: str | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run `laser ARGS` in a subprocess; returns the CompletedProcess (text)."""
    return subprocess.run(
        cli_command(*args),
        env=cli_env(model),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scene_spec(
    name: str = SCENE_ARGS[0],
    n: int = SCENE_ARGS[1],
    h: int = SCENE_ARGS[2],
    w: int = SCENE_ARGS[3],
) -> str:
    return f"scene:{name}:{n}:{h}:{w}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_user_error(code: int, stderr: str, *needles: str) -> str:
    """A user mistake: exit 2, exactly one `error:` line naming the problem, no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def write_images(folder: Path, images, fmt: str = "png") -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        p = folder / f"frame_{i:04d}.{fmt}"
        Image.fromarray(image).save(p)
        paths.append(p)
    return paths


def scene_images(n: int = SCENE_ARGS[1]) -> list[np.ndarray]:
    from laser_plugin.models.synthetic import make_scene

    scene = make_scene(SCENE_ARGS[0], n, SCENE_ARGS[2], SCENE_ARGS[3])
    return list(scene.frames())


def textured_images(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Frames of a random texture sliding right (any content works with PlaneModel)."""
    rng = np.random.default_rng(seed)
    base = (rng.random((h, w + n, 3)) * 255).astype(np.uint8)
    return [np.ascontiguousarray(base[:, i : i + w]) for i in range(n)]


def make_video(path: Path, images, fps: int = 10, codec: str = "mpeg4") -> Path:
    """Encode frames with PyAV (mpeg4 is in every FFmpeg build)."""
    import av

    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class PlaneModel:
    """Reconstructs any input: a slanted wall seen by a camera sliding along x.

    Consecutive windows share frames, so with exact predictions the stitched trajectory must be
    x = 0.05 * frame index (in the first window's gauge) whatever the images are.
    """

    name = "plane"

    def __init__(self, step: float = 0.05):
        self.step = step
        self.calls = 0
        self.first_index = 0  # frame index of the window's first frame, set by the caller

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return 48, 64

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        n, _, h, w = images.shape
        self.calls += 1
        v = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        u = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        depth = (2.0 + 0.01 * u + 0.02 * v)[None].repeat(n, 1, 1)
        pose = torch.eye(4).repeat(n, 1, 1)
        # Window-local gauge: the first frame of the window at the origin.
        pose[:, 0, 3] = self.step * torch.arange(n, dtype=torch.float32)
        k = torch.tensor([[60.0, 0, (w - 1) / 2], [0, 60.0, (h - 1) / 2], [0, 0, 1]]).repeat(
            n, 1, 1
        )
        conf = (1.0 + u / w)[None].repeat(n, 1, 1)  # varied, so a confidence cut keeps half
        return WindowPrediction(depth, conf, pose, k)
