"""``laser batch MANIFEST --output-root DIR``: reconstruct many videos on Ray."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from laser_plugin.batch.fleet import FleetOptions
from laser_plugin.cli.run import (
    DEVICE_NOTE,
    AlignLaserConfig,
    check_device,
    check_rate,
)
from laser_plugin.errors import ConfigError


def parse_model_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``("scene=demo", "frames=40")`` -> ``{"scene": "demo", "frames": 40}`` (JSON values, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-option expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@dataclass
class Batch:
    """Reconstruct every video of a manifest on Ray: one task per video (one GPU each when the
    cluster has GPUs); a failed video is retried, continuing from its last finished window;
    finished videos are skipped when the command is run again."""

    manifest: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="MANIFEST")]
    """Text file with one video file or image folder per line, or a CSV (columns path[,name]) or
    JSONL ({"path": ..., "name": ...}) file. Relative paths are relative to the manifest."""
    output_root: Path
    """Each video's run directory is OUTPUT_ROOT/NAME; batch_summary.json lists them all."""
    model: str = "pi3"
    """Backend: pi3, vggt, synthetic, or any registered in the laser_plugin.models entry points."""
    weights: str | None = None
    """Checkpoint (a local file the workers can read, or a model-hub id when online)."""
    model_option: tuple[str, ...] = ()
    """Extra backend options, KEY=VALUE (repeatable). For --model synthetic: scene=NAME,
    num_frames=N, height=H, width=W, seed=S select the synthetic scene the inputs were rendered from."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each task's network runs: auto (the GPU Ray assigns when the cluster has GPUs, else
    cpu), cpu, or cuda. The alignment's device is --align-device."""
    laser: AlignLaserConfig = field(default_factory=AlignLaserConfig)
    fleet: Annotated[FleetOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=FleetOptions)
    stride: int = 1
    """Keep every n-th frame of each input."""
    fps: float = 30.0
    """Frame rate for the timestamps of image folders."""
    max_frames: int | None = None
    """Stop each video after this many frames."""
    save_source_images: bool = True
    """Also keep the original-resolution images (for nerfstudio exports)."""
    quiet: bool = False
    """No progress bar or table (batch_summary.json is still written)."""

    def main(self) -> int:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from laser_plugin.batch import TaskSpec, read_manifest, run_batch
        from laser_plugin.batch.report import summary_table

        self.laser.validate()
        check_device(self.laser.device, "--align-device", auto=False, here=False)  # Ray workers'
        if self.device != "auto" and not self.quiet:
            print(DEVICE_NOTE, file=sys.stderr)
        check_rate(self.fps, "--fps")
        if self.stride < 1:
            raise ConfigError(f"--stride must be at least 1, got {self.stride}")
        jobs = read_manifest(self.manifest)
        spec = TaskSpec(
            model=self.model,
            weights=self.weights,
            model_options=parse_model_options(self.model_option),
            laser=self.laser,
            stride=self.stride,
            fps=self.fps,
            max_frames=self.max_frames,
            save_source_images=self.save_source_images,
        )
        console = Console(stderr=True, quiet=self.quiet)
        with Progress(
            TextColumn("[bold]videos"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[running]} running, {task.fields[failed]} failed, {task.fields[retried]} retried"
            ),
            TextColumn("{task.fields[frames]} frames, {task.fields[fps]:.1f} frames/s"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task(
                "videos", total=len(jobs), running=0, failed=0, retried=0, frames=0, fps=0.0
            )

            def update(state: dict) -> None:
                progress.update(
                    bar,
                    completed=state["done"],
                    running=state["running"],
                    failed=state["failed"],
                    retried=state["retried"],
                    frames=state["frames"],
                    fps=state["fps"],
                )

            result = run_batch(
                jobs, self.output_root, spec, self.fleet, on_update=update, device=self.device
            )
            progress.update(bar, completed=len(jobs), running=0)
        console.print(summary_table(result.records, result.seconds))
        console.print(f"records: {result.summary_path}")
        if not result.ok:
            failed = result.counts.get("failed", 0)
            print(
                f"{failed} of {len(jobs)} videos failed (see {result.summary_path})",
                file=sys.stderr,
            )
            return 1
        return 0
