"""``laser eval DATASET_ROOT --dataset NAME --model NAME``: reproduce the paper's tables."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from laser_plugin.config import LaserConfig  # (no torch): the engine's defaults, shared with `run`

DatasetName = Literal["tum", "bonn", "kitti", "sintel", "scannet", "7scenes", "nrgbd", "synthetic"]


@dataclass
class Eval:
    """Run the streaming pipeline over a benchmark's sequences and score it: video depth
    (AbsRel, δ<1.25), camera pose (ATE, RPE after Sim(3)) and, on 7-Scenes/NRGBD/synthetic,
    the point map (Acc, Comp, NC); per sequence and averaged, beside the paper's numbers."""

    dataset: DatasetName
    """Benchmark layout of DATASET_ROOT."""
    dataset_root: Positional[Annotated[str | None, arg(metavar="DATASET_ROOT")]] = None
    """Dataset directory (for --dataset synthetic: scene names, comma-separated, or 'all')."""
    model: str | None = None
    """Reconstruction model (a `laser_plugin.models` entry point). Default: synthetic for
    --dataset synthetic, else pi3."""
    weights: str | None = None
    """Checkpoint file or hub id for the model."""
    device: str = "cpu"
    """Where the network runs: cpu, cuda or cuda:N."""
    align_device: str = "auto"
    """Device for the alignment: auto (the same as --device), cpu, cuda or cuda:N."""
    sequences: tuple[str, ...] = ()
    """Only these sequences (names as listed in the table); default all."""
    start: int = 0
    """First frame of each sequence."""
    stride: int | None = None
    """Keep every n-th frame (default: the dataset's protocol, 1 except 7-Scenes 20, NRGBD 40)."""
    max_frames: int | None = None
    """At most this many frames per sequence (after start and stride)."""
    render_pass: Literal["final", "clean"] = "final"
    """Sintel render pass."""
    synthetic_frames: int | None = None
    """Frames per synthetic scene (default: the scene's own length)."""
    synthetic_size: tuple[int, int] = (128, 224)
    """Height and width of the synthetic scenes' frames."""
    window_size: int = LaserConfig.window_size
    """Frames per window (L)."""
    overlap: int = LaserConfig.overlap
    """Frames shared by consecutive windows."""
    iou_threshold: float = LaserConfig.iou_threshold
    """Mask IoU linking depth layers across windows (tau)."""
    layer_alignment: bool = LaserConfig.layer_alignment
    """Layer-wise scale alignment; --no-layer-alignment is plain Sim(3) stitching."""
    intra_edges: bool = LaserConfig.intra_edges
    """Intra-window layer edges; --no-intra-edges is the paper's 'w/o E_intra' ablation."""
    overlap_estimate: Literal["earlier", "later"] | None = None
    """Which window's estimate an overlap frame keeps. Default: "earlier", as `laser run` (the
    scores are those of what a user runs); with --sweep "later" (each overlap frame re-emitted
    with the next window's layer-aligned estimate), the convention under which the paper's
    "w/o E_intra" row differs from plain Sim(3)."""
    loop_closure: bool = True
    """Close loops, as `laser run` does by default (the scores are those of what a user runs);
    --no-loop-closure scores plain LASER, the method of the paper's tables."""
    depth_align: Literal["scale", "median", "scale_shift", "lstsq", "none"] = "scale"
    """Per-sequence depth alignment before AbsRel/δ (the published numbers use 'scale')."""
    sweep: bool = False
    """Run the ablation rows (full, no layer alignment, no intra edges, window sizes, IoU
    thresholds) and print the paper's ablation table shape."""
    sweep_window_sizes: tuple[int, ...] = (10, 30)
    """Window sizes added to the sweep (besides --window-size)."""
    sweep_iou_thresholds: tuple[float, ...] = (0.2, 0.5)
    """IoU thresholds added to the sweep (besides --iou-threshold)."""
    predictions: Path | None = None
    """Score a finished run directory (`laser run` output) instead of running a model; it must
    hold the frames of exactly one selected sequence, after --start/--stride/--max-frames."""
    output: Path | None = None
    """Write the results as JSON to this file."""
    json: bool = False
    """Print the JSON to stdout instead of the table."""

    @property
    def resolved_overlap_estimate(self) -> str:
        """--overlap-estimate, else `laser run`'s default, else "later" under --sweep."""
        if self.overlap_estimate is not None:
            return self.overlap_estimate
        return "later" if self.sweep else LaserConfig.overlap_estimate

    def main(self) -> int:
        import warnings

        from laser_plugin.cli.run import _show_warning

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning  # one "warning: ..." line each
            return self._main()

    def _main(self) -> int:
        from rich.console import Console

        from laser_plugin.cli.run import check_device
        from laser_plugin.datasets import load_dataset
        from laser_plugin.errors import ConfigError, InputError
        from laser_plugin.eval.protocol import PROTOCOLS
        from laser_plugin.eval.report import build_table, make_result, to_json, write_json
        from laser_plugin.eval.runner import (
            EvalOptions,
            aggregate,
            model_factory,
            run_frames,
            run_variant,
            score_frames,
            sweep_configs,
        )

        console = Console(stderr=True)
        model = self.model or ("synthetic" if self.dataset == "synthetic" else "pi3")
        if self.start < 0 or (self.stride is not None and self.stride < 1):
            raise ConfigError("--start must be >= 0 and --stride >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError("--max-frames must be at least 1")
        kw: dict = {}
        if self.dataset == "sintel":
            kw["render_pass"] = self.render_pass
        if self.dataset == "synthetic":
            kw.update(num_frames=self.synthetic_frames, height=self.synthetic_size[0])
            kw.update(width=self.synthetic_size[1])
        check_device(self.device, "--device", auto=False)
        align_device = self.device if self.align_device == "auto" else self.align_device
        check_device(align_device, "--align-device", auto=False)
        try:
            seqs = load_dataset(self.dataset, self.dataset_root, **kw)
        except UnicodeDecodeError as exc:
            # A list or ground-truth file that is not text (the readers decode UTF-8).
            where = _file_being_read(exc) or (
                f"one of the text files of the {self.dataset} dataset in {self.dataset_root}"
            )
            raise InputError(
                f"cannot read {where}: it is not UTF-8 text "
                f"(byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start})"
            ) from None
        if self.sequences:
            unknown = set(self.sequences) - {s.name for s in seqs}
            if unknown:
                raise InputError(
                    f"no sequence {sorted(unknown)[0]!r}; available: {', '.join(s.name for s in seqs)}"
                )
            seqs = [s for s in seqs if s.name in self.sequences]
        stride = self.stride or PROTOCOLS[self.dataset].stride
        seqs = [s.subset(self.start, stride, self.max_frames) for s in seqs]
        seqs = [s for s in seqs if len(s) > 0]
        if not seqs:
            raise InputError("no frames left after --start/--stride/--max-frames")
        base = LaserConfig(
            window_size=self.window_size,
            overlap=self.overlap,
            iou_threshold=self.iou_threshold,
            layer_alignment=self.layer_alignment,
            intra_edges=self.intra_edges,
            overlap_estimate=self.resolved_overlap_estimate,
            device=align_device,
        ).validate()
        configs = (
            sweep_configs(base, self.sweep_window_sizes, self.sweep_iou_thresholds)
            if self.sweep
            else {"run": base}
        )
        for cfg in configs.values():
            cfg.validate()
        opts = EvalOptions(depth_align=self.depth_align)
        variants = {}
        if self.predictions is not None:
            if len(seqs) != 1 or self.sweep:
                raise ConfigError(
                    f"--predictions scores one run: select one of {len(seqs)} sequences with "
                    "--sequences, and no --sweep"
                )
            (seq,) = seqs
            row = score_frames(seq, run_frames(self.predictions), PROTOCOLS[self.dataset], opts)
            row.pop("fps")  # reading files, not reconstructing
            variants["predictions"] = {
                "sequences": {seq.name: row},
                "mean": aggregate({seq.name: row}),
            }
            model = f"run {self.predictions}"
            configs = {}
        else:
            make_model = model_factory(model, self.weights, self.device)
        for name, cfg in configs.items():
            console.print(f"[bold]{name}[/bold]", highlight=False) if self.sweep else None
            variants[name] = run_variant(
                seqs,
                make_model,
                cfg,
                self.dataset,
                opts,
                progress=lambda msg: console.print(f"  {msg}", highlight=False),
                loop_closure=self.loop_closure,
            )
        settings = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("output", "json")
        }
        settings.update(model=model, stride=stride, dataset_root=self.dataset_root)
        layout = seqs[0].meta.get("layout")
        result = make_result(self.dataset, model, settings, variants, layout)
        if self.output is not None:
            write_json(result, self.output)
            console.print(f"results written to {self.output}", highlight=False)
        if self.json:
            print(to_json(result))
        else:
            out = Console()
            if not out.is_terminal:
                out = Console(width=160)  # a pipe or file: do not squeeze the table to 80 columns
            out.print(build_table(result))
        return 0


def _file_being_read(exc: BaseException) -> str | None:
    """The file a dataset reader was decoding when ``exc`` was raised (its innermost ``path``
    local), to name it in the error; None if no frame had one."""
    from pathlib import PurePath

    tb, found = exc.__traceback__, None
    while tb is not None:
        path = tb.tb_frame.f_locals.get("path")
        if isinstance(path, PurePath):
            found = str(path)
        tb = tb.tb_next
    return found
