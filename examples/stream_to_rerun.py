"""Stream a reconstruction into Rerun while it runs: cameras, images, depth, confidence, depth
layers with their LASER scales, per-frame points, the growing map and per-window statistics.

    python examples/stream_to_rerun.py                          # demo scene, opens a viewer
    python examples/stream_to_rerun.py --rerun save:demo.rrd    # write a recording instead
    python examples/stream_to_rerun.py --video clip.mp4 --model pi3 --device cuda
    rerun demo.rrd                                              # look at a saved recording

Without ``--video`` it runs the synthetic demo scene with the emulated model: no weights, a few
seconds on a CPU. The same from the command line: ``laser run VIDEO --rerun spawn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.errors import LaserError
from laser_plugin.integrations.rerun import RerunConfig, make_rerun_sink


@dataclass
class Args:
    """Reconstruct a video (or the demo scene) and stream it to Rerun."""

    rerun: str = "spawn"
    """Where to: spawn | save:PATH | serve | connect[:URL]."""
    video: Path | None = None
    """Video file or image folder; None: the synthetic demo scene."""
    model: str = "pi3"
    """Backend for real input (pi3, vggt, or any registered in laser_plugin.models)."""
    weights: str | None = None
    """Checkpoint path or hub id for the backend."""
    device: str = "cpu"
    """Device for the backend."""
    max_frames: int | None = None
    """Stop after this many frames."""
    laser: LaserConfig = field(default_factory=LaserConfig)
    """Streaming LASER settings."""
    viewer: RerunConfig = field(default_factory=RerunConfig)
    """What is logged, and memory limits."""


def main(args: Args) -> int:
    if args.video is None:
        from laser_plugin.models.synthetic import make_model, make_scene

        scene = make_scene("demo", num_frames=args.max_frames)
        model, source = make_model(scene=scene), list(scene.frames())
    else:
        from laser_plugin.models import load_model

        model, source = load_model(args.model, weights=args.weights, device=args.device), args.video
    sink = make_rerun_sink(args.rerun, args.viewer)
    frames = 0
    for _ in StreamingReconstructor(model, args.laser).run(
        source, sinks=[sink], max_frames=args.max_frames
    ):
        frames += 1
    print(
        f"streamed {frames} frames to Rerun ({sink.target.mode}{': ' + sink.url if sink.url else ''})"
    )
    if sink.target.mode == "serve":
        input("serving; press Enter to stop ")
        sink.shutdown()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(tyro.cli(Args)))
    except LaserError as exc:
        raise SystemExit(f"error: {exc}") from None
