"""Phone video -> LASER -> nerfstudio dataset -> Gaussian splatting with splatfacto.

No COLMAP: LASER gives every frame a pose, intrinsics and a dense depth map in one streaming
pass, and the dataset carries a coloured point cloud for splatfacto's initialisation.

    # 1. the dataset (GPU recommended for pi3/vggt; weights download on first use when online)
    python examples/video_to_splatfacto.py --video clip.mp4 --output-dir data/clip
    # same as:   ns-process-data laser --data clip.mp4 --output-dir data/clip
    # 2. training (needs nerfstudio with a CUDA build of gsplat)
    ns-train splatfacto --data data/clip laser-data
    # or pass --train here to start it

Without ``--video`` it runs on the synthetic demo scene with the emulated model (no weights,
runs on a CPU in seconds), which is what the test of this example does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from laser_plugin.config import LaserConfig
from laser_plugin.errors import LaserError
from laser_plugin.integrations.nerfstudio.pipeline import ExportSummary, reconstruct_to_nerfstudio
from laser_plugin.integrations.nerfstudio.writer import NerfstudioExportConfig


@dataclass
class Args:
    """Video to a splatfacto-ready nerfstudio dataset."""

    video: Path | None = None
    """Video file or image folder; None: the synthetic demo scene."""
    output_dir: Path = Path("outputs/laser-splatfacto/data")
    """Dataset directory."""
    model: str = "pi3"
    """Backend for real input (pi3, vggt, or any registered in laser_plugin.models)."""
    weights: str | None = None
    """Checkpoint path or hub id for the backend."""
    device: str = "cuda"
    """Device for the backend."""
    max_frames: int | None = None
    """Stop after this many frames."""
    frame_stride: int = 1
    """Keep every n-th frame."""
    laser: LaserConfig = field(default_factory=LaserConfig)
    """Streaming LASER settings."""
    export: NerfstudioExportConfig = field(default_factory=NerfstudioExportConfig)
    """Dataset layout."""
    train: bool = False
    """Start `ns-train METHOD --data OUTPUT_DIR laser-data` when the dataset is written."""
    method: Literal["splatfacto", "splatfacto-big", "nerfacto", "depth-nerfacto"] = "splatfacto"
    """nerfstudio method for --train."""


def build_dataset(args: Args) -> ExportSummary:
    """Reconstruct and write the dataset; returns what was written."""
    if args.video is None:
        from laser_plugin.models.synthetic import make_model, make_scene

        scene = make_scene("demo", num_frames=args.max_frames)
        model, source = make_model(scene=scene), list(scene.frames())
    else:
        from laser_plugin.models import load_model

        model, source = load_model(args.model, weights=args.weights, device=args.device), args.video
    return reconstruct_to_nerfstudio(
        source,
        args.output_dir,
        model=model,
        laser=args.laser,
        export=args.export,
        max_frames=args.max_frames,
        stride=args.frame_stride,
        provenance={"command": "examples/video_to_splatfacto.py"},
    )


def train_command(args: Args) -> list[str]:
    return ["ns-train", args.method, "--data", str(args.output_dir), "laser-data"]


def main(args: Args) -> int:
    try:
        summary = build_dataset(args)
    except LaserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"dataset: {summary.num_frames} frames, {summary.num_points} points -> {summary.output_dir}"
    )
    command = train_command(args)
    print("train with: " + " ".join(command))
    if args.train:
        if shutil.which("ns-train") is None:
            print(
                "error: ns-train not found; pip install 'laser-plugin[nerfstudio]'", file=sys.stderr
            )
            return 2
        return subprocess.call(command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(tyro.cli(Args)))
