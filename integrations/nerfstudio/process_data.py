"""``ns-process-data laser``: a video or image folder to a nerfstudio dataset with LASER.

nerfstudio 1.1.5 has no plugin group for process-data subcommands: ``ns-process-data`` runs
``tyro.cli(Commands)`` over a fixed ``Union`` in ``nerfstudio.scripts.process_data``, looked up
when its ``entrypoint()`` is called. :func:`extend_commands` appends ``laser`` to that Union; the
start-up hook ``_laser_plugin_ns_hook`` (installed with a ``.pth`` file) calls it when nerfstudio
loads that module. Without the hook, ``python -m laser_plugin.integrations.nerfstudio.process_data
laser ...`` does the same.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Union, get_args, get_origin

import tyro

from laser_plugin.config import LaserConfig
from laser_plugin.errors import LaserError
from laser_plugin.integrations.nerfstudio.writer import NerfstudioExportConfig

SUBCOMMAND = "laser"


@dataclass
class ProcessLaser:
    """Process a video or image folder into a nerfstudio dataset with LASER (streaming
    feed-forward reconstruction; no COLMAP). Writes images, depth maps, per-frame poses and
    intrinsics, and a sparse point cloud; train with `ns-train splatfacto --data OUT laser-data`."""

    data: Path
    """Video file or folder of images."""
    output_dir: Path
    """Directory for the nerfstudio dataset."""
    model: str = "pi3"
    """Reconstruction backend (entry-point group laser_plugin.models: pi3, vggt, synthetic, ...)."""
    weights: str | None = None
    """Checkpoint path or hub id; default: the backend's own default location."""
    device: str = "auto"
    """Device for the model: "auto" (CUDA when available, else CPU), "cuda", "cpu", "cuda:1", ..."""
    max_frames: int | None = None
    """Stop after this many frames."""
    frame_stride: int = 1
    """Keep every n-th frame of the input."""
    run_dir: Path | None = None
    """Also keep the LASER run directory here (trajectory, depth, confidence, layers), for
    `laser export` or the viewers later."""
    laser: LaserConfig = field(default_factory=LaserConfig)
    """Streaming LASER settings."""
    export: NerfstudioExportConfig = field(default_factory=NerfstudioExportConfig)
    """Dataset layout."""

    def main(self) -> None:
        from rich.console import Console

        try:
            summary = self.run()
        except LaserError as exc:
            print(f"error: {exc}", file=sys.stderr)  # one line, like the `laser` command
            raise SystemExit(2) from None
        console = Console(stderr=True, soft_wrap=True)
        console.print(
            f"[bold green]Done:[/bold green] {summary.num_frames} frames, {summary.num_points} points "
            f"in {summary.seconds:.1f} s -> {summary.output_dir}\n"
            f"Next: ns-train splatfacto --data {summary.output_dir} laser-data",
            highlight=False,
        )

    def run(self):
        from laser_plugin.integrations.nerfstudio.pipeline import reconstruct_to_nerfstudio
        from laser_plugin.models import load_model

        if self.frame_stride < 1:
            raise LaserError(f"frame_stride must be at least 1, got {self.frame_stride}")
        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(self.model, weights=self.weights, device=device)
        extra = ()
        if self.run_dir is not None:
            from laser_plugin.io.run_dir import RunWriter, prepare_output_dir

            # The input and stride let the run directory name each frame's original in the input
            # (format 2 keeps no copies), so a later `laser export` of it has them too.
            settings = {
                "model": self.model,
                "input": str(Path(self.data).expanduser().resolve()),
                "stride": self.frame_stride,
            }
            extra = (RunWriter(prepare_output_dir(self.run_dir), settings=settings),)
        return reconstruct_to_nerfstudio(
            self.data,
            self.output_dir,
            model=model,
            laser=self.laser,
            export=self.export,
            max_frames=self.max_frames,
            stride=self.frame_stride,
            provenance={"command": "ns-process-data laser", "model_name": self.model},
            extra_sinks=extra,
        )


def _subcommand_name(member: object) -> str | None:
    for meta in getattr(member, "__metadata__", ()):
        name = getattr(meta, "name", None)
        if isinstance(name, str):
            return name
    return None


def extend_commands(module: ModuleType) -> bool:
    """Append ``laser`` to ``module.Commands`` (nerfstudio's Union of subcommands).

    Returns False and changes nothing when ``Commands`` is missing, is not a Union (nerfstudio
    changed shape) or already has a ``laser`` subcommand.
    """
    commands = getattr(module, "Commands", None)
    if commands is None or get_origin(commands) is not Union:
        return False
    members = get_args(commands)
    if any(_subcommand_name(m) == SUBCOMMAND for m in members):
        return False
    laser = Annotated[ProcessLaser, tyro.conf.subcommand(name=SUBCOMMAND)]
    module.Commands = Union[(*members, laser)]
    return True


def entrypoint() -> None:
    """``ns-process-data`` with ``laser`` added, without the start-up hook."""
    import nerfstudio.scripts.process_data as process_data

    extend_commands(process_data)
    process_data.entrypoint()


if __name__ == "__main__":
    sys.exit(entrypoint())
