"""Watch a reconstruction grow in the viser web viewer while it streams.

    python examples/live_viser.py                      # demo scene, http://127.0.0.1:8080
    python examples/live_viser.py --delay 0.2          # slower, to pause and scrub at leisure
    python examples/live_viser.py --video clip.mp4 --model pi3 --device cuda
    python examples/live_viser.py --viewer.host 0.0.0.0   # reachable from other machines

Open the printed address. "Pause stream" blocks the reconstruction until "Resume stream";
the Frame slider shows the map as of an earlier frame; colour by RGB, depth layer, confidence
or depth. The viewer stays open after the stream ends until Ctrl-C (``--no-keep-open`` quits).
Without ``--video`` it runs the synthetic demo scene with the emulated model: no weights, a few
seconds on a CPU. The same from the command line: ``laser run VIDEO --viser``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.errors import LaserError
from laser_plugin.integrations.viser import ViserConfig, ViserSink


@dataclass
class Args:
    """Reconstruct a video (or the demo scene) and show it live in viser."""

    video: Path | None = None
    """Video file or image folder; None: the synthetic demo scene."""
    model: str = "pi3"
    """Backend for real input (pi3, vggt, or any registered in laser_plugin.models)."""
    weights: str | None = None
    """Checkpoint path or hub id for the backend."""
    device: str = "cpu"
    """Device for the backend."""
    max_frames: int | None = None
    """Stop after this many frames (the demo scene's length when it runs)."""
    demo_size: tuple[int, int] = (128, 224)
    """Height and width of the demo scene's frames."""
    delay: float = 0.0
    """Seconds to wait after each frame, to watch the map grow."""
    keep_open: bool = True
    """Keep serving after the stream ends, until Ctrl-C."""
    laser: LaserConfig = field(default_factory=LaserConfig)
    """Streaming LASER settings."""
    viewer: ViserConfig = field(default_factory=ViserConfig)
    """Viewer address, point budget, initial display settings."""


def main(args: Args) -> ViserSink:
    """Stream, then (with ``keep_open``) serve until Ctrl-C; returns the sink (still serving
    when ``keep_open`` is off, so the caller can inspect it and ``stop()`` it)."""
    if args.video is None:
        from laser_plugin.models.synthetic import make_model, make_scene

        height, width = args.demo_size
        scene = make_scene("demo", num_frames=args.max_frames, height=height, width=width)
        model, source = make_model(scene=scene), scene.frames()
    else:
        from laser_plugin.models import load_model

        model, source = load_model(args.model, weights=args.weights, device=args.device), args.video
    sink = ViserSink(args.viewer)
    try:
        engine = StreamingReconstructor(model, args.laser)
        for _ in engine.run(source, sinks=[sink], max_frames=args.max_frames):
            time.sleep(args.delay)
    except BaseException:
        sink.stop()
        raise
    print(f"{sink.frames_received} frames, {sink.points_shown} points in the viewer at {sink.url}")
    if args.keep_open:
        sink.serve_forever()
    return sink


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except LaserError as exc:
        raise SystemExit(f"error: {exc}") from None
