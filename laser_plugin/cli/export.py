"""``laser export nerfstudio RUN_DIR OUT`` and ``laser export colmap RUN_DIR OUT``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro
from tyro.conf import Positional

from laser_plugin.integrations.nerfstudio.options import (
    ColmapExportConfig,
    NerfstudioExportConfig,
)


def _report(kind: str, summary) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(
        f"[bold green]{kind}:[/bold green] {summary.num_frames} frames, {summary.num_points} points "
        f"in {summary.seconds:.1f} s -> {summary.output_dir}",
        highlight=False,
    )


@dataclass
class ExportNerfstudio:
    """Write a run as a nerfstudio dataset (transforms.json, images, depths, sparse_pc.ply);
    train with: ns-train splatfacto --data OUT laser-data."""

    run_dir: Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_DIR")]]
    """Run directory written by laser run or laser demo."""
    output_dir: Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """Dataset directory to create."""
    export: NerfstudioExportConfig = field(default_factory=NerfstudioExportConfig)
    """Dataset layout."""
    overwrite: bool = False
    """Replace an earlier laser export in OUT (only the files it wrote are removed)."""

    def main(self) -> int:
        from laser_plugin.integrations.nerfstudio.export import export_run_nerfstudio

        # --overwrite as in `laser run` (the config's own field is hidden from the command line).
        self.export.overwrite = self.export.overwrite or self.overwrite
        summary = export_run_nerfstudio(self.run_dir, self.output_dir, self.export)
        _report("nerfstudio dataset", summary)
        return 0


@dataclass
class ExportColmap:
    """Write a run as a COLMAP sparse model (images/, sparse/0/cameras, images, points3D) for
    gsplat's examples or the original 3D Gaussian Splatting code."""

    run_dir: Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_DIR")]]
    """Run directory written by laser run or laser demo."""
    output_dir: Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """Directory to create (images/ and sparse/0/)."""
    export: ColmapExportConfig = field(default_factory=ColmapExportConfig)
    """Model layout."""
    overwrite: bool = False
    """Replace an earlier laser export in OUT (only the files it wrote are removed)."""

    def main(self) -> int:
        from laser_plugin.integrations.nerfstudio.export import export_run_colmap

        self.export.overwrite = self.export.overwrite or self.overwrite
        summary = export_run_colmap(self.run_dir, self.output_dir, self.export)
        _report("COLMAP model", summary)
        return 0


@dataclass
class Export:
    """Export a finished run for other tools (nerfstudio, COLMAP readers)."""

    # name="": no internal "target" in the help's group titles ("export options", not
    # "target.export options"); the flags are the same.
    target: Annotated[
        tyro.conf.OmitSubcommandPrefixes[
            Union[  # noqa: UP007 - tyro needs a runtime Union
                Annotated[ExportNerfstudio, tyro.conf.subcommand(name="nerfstudio")],
                Annotated[ExportColmap, tyro.conf.subcommand(name="colmap")],
            ]
        ],
        tyro.conf.arg(name=""),
    ]

    def main(self) -> int:
        return self.target.main()
