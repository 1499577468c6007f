"""``laser run`` (a video or image folder) and ``laser demo`` (the built-in synthetic scene)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

from laser_plugin.config import LaserConfig
from laser_plugin.errors import ConfigError, InputError

# The everyday engine options keep short flags (--window-size, --overlap, --align-device); the
# research knobs of LaserConfig (segmentation thresholds, fits, fusion) are --laser.NAME, so that
# `laser run --help` leads with what a user sets (issue 22). Defaults come from LaserConfig.
_TOP = tyro.conf.arg(prefix_name=False)


@dataclass
class RunLaserConfig(LaserConfig):
    """Windows, layers and alignment (--window-size, --overlap and --align-device; the rest are
    research knobs). The network's device is --device (above)."""

    window_size: Annotated[int, _TOP] = LaserConfig.window_size
    """Frames per window (L). The paper's best is 20; smaller needs less GPU memory."""
    overlap: Annotated[int, _TOP] = LaserConfig.overlap
    """Frames shared by consecutive windows (O); must be in [1, window_size)."""
    device: Annotated[
        str, tyro.conf.arg(name="align-device", metavar="DEVICE", prefix_name=False)
    ] = "auto"
    """Device for the alignment: auto (the network's first device when it is a GPU, else cpu),
    cpu, cuda or cuda:N. On a GPU the CPU alignment is the bottleneck (benchmarks/DECISIONS.md,
    "alignment on the GPU instead of the CPU"), so auto keeps the alignment beside the network."""


@dataclass
class AlignLaserConfig(RunLaserConfig):
    """Windows, layers and alignment (--window-size, --overlap and --align-device; the rest are
    research knobs). The network's device is --device (above)."""

    device: Annotated[
        str, tyro.conf.arg(name="align-device", metavar="DEVICE", prefix_name=False)
    ] = "cpu"
    """Device for the alignment: cpu, cuda or cuda:N."""


# `laser demo` and `laser batch` used to take --device for the alignment.
DEVICE_NOTE = (
    "laser: note: --device is where the network runs (as in laser run); "
    "the alignment's device is --align-device"
)


@dataclass
class Viewers:
    """Live viewers (optional extras)."""

    rerun: Annotated[str | None, tyro.conf.arg(metavar="TARGET")] = None
    """Stream to Rerun: 'spawn', 'save:PATH', 'serve' or 'connect:URL' (needs laser-plugin[rerun])."""
    viser: bool = False
    """Serve a live viser viewer (needs laser-plugin[viser])."""
    host: Annotated[str, tyro.conf.arg(metavar="ADDRESS")] = "127.0.0.1"
    """Address the viser viewer binds to; anything but loopback exposes it to the network."""
    port: int = 8080
    """Port of the viser viewer."""

    def check(self) -> None:
        """Refuse, before any work, a viewer that could show nothing: ``--rerun spawn`` without
        a display, ``--rerun connect:URL`` with nothing listening (as ``laser view`` does)."""
        if not self.rerun:
            return
        try:
            # integrations/ joins the package path at run time (laser_plugin/integrations), which
            # a static checker cannot follow.
            from laser_plugin.integrations.rerun import (  # pyright: ignore[reportMissingImports]
                parse_rerun_spec,
            )
        except ImportError:
            return  # sinks() says which extra is missing
        from laser_plugin.cli.view import check_rerun_target

        check_rerun_target(parse_rerun_spec(self.rerun))

    def sinks(self) -> list:
        out = []
        if self.rerun:
            try:
                from laser_plugin.integrations.rerun import make_rerun_sink
            except ImportError as exc:
                raise ConfigError(
                    f"--rerun needs the Rerun extra: pip install 'laser-plugin[rerun]' ({exc})"
                ) from None
            out.append(make_rerun_sink(self.rerun))
        if self.viser:
            try:
                from laser_plugin.integrations.viser import make_viser_sink
            except ImportError as exc:
                raise ConfigError(
                    f"--viser needs the viser extra: pip install 'laser-plugin[viser]' ({exc})"
                ) from None
            out.append(make_viser_sink(host=self.host, port=self.port))
        return out


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM like Ctrl-C while a run lasts, so a terminated run also leaves a consistent
    partial result; the previous handler is restored afterwards (for API callers)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
        # A shell starting us in the background may have set SIGINT to "ignore"; a user's Ctrl-C
        # (or a supervisor's SIGINT) must still stop the run cleanly.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous)


def execute(
    model,
    source: Any,
    config: LaserConfig,
    output_dir: Path,
    *,
    overwrite: bool,
    settings: dict,
    viewers: Viewers | None = None,
    max_frames: int | None = None,
    fps: float = 30.0,
    stride: int = 1,
    total: int | None = None,
    save_source_images: bool | None = None,
    quiet: bool = False,
    extra_sinks: list | None = None,
    resume: bool = False,
    predictor=None,
    checkpoint_interval: float = 0.0,
    outputs: str | None = None,
    loop_closure: bool = False,
):
    """Run the engine with a progress bar, writing ``output_dir``; return (engine, writer).

    The engine state is saved under ``output_dir/state`` between windows (at most every
    ``checkpoint_interval`` seconds), so an interrupted run can be continued with ``resume=True``
    (same source and settings). ``loop_closure``: attach the loop-closure hook (whatever
    the ``predictor``); its records spill to ``output_dir/state/loop-*`` so a resumed run
    continues the same pose graph, and are deleted when the run completes.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from laser_plugin.io.run_dir import prepare_output_dir
    from laser_plugin.resume import check_settings, load_state, read_settings
    from laser_plugin.session import open_session

    config.validate()
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
    state = None
    if resume:
        out = prepare_output_dir(output_dir, resume=True)
        check_settings(read_settings(out, strict=True), settings)
        state = load_state(out)
        if state is not None:
            check_settings(state.settings, settings)
        else:  # stopped before its first saved window: nothing to keep
            print("warning: no saved state yet: starting from the first frame", file=sys.stderr)
            out = prepare_output_dir(output_dir, overwrite=True)
    else:
        out = prepare_output_dir(output_dir, overwrite=overwrite)
    session = open_session(
        out,
        model,
        config,
        settings,
        state=state,
        predictor=predictor,
        loop_closure=loop_closure,
        save_source_images=save_source_images,
        outputs=outputs,
        checkpoint_interval=checkpoint_interval,
        extra_sinks=[
            *(viewers.sinks() if viewers else []),
            *(extra_sinks or []),
            LayerWatchSink(config.layer_alignment),
        ],
    )
    engine, writer = session.engine, session.writer
    console = Console(stderr=True, quiet=quiet)
    start = time.perf_counter()
    count = 0 if state is None else state.num_frames
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} frames/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        # Until the first frame is final the bar says why it does not move (the first window,
        # and on the fast path the network's compile and graph capture).
        task = progress.add_task("warming up (first window, compile)", total=total, fps=0.0)
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            for _ in session.run(source, max_frames=max_frames, fps=fps, stride=stride):
                count += 1
                elapsed = time.perf_counter() - start
                progress.update(
                    task,
                    description="reconstructing",
                    completed=count,
                    fps=count / max(elapsed, 1e-9),
                )
    return engine, writer


class LayerWatchSink:
    """Prints one ``warning:`` line the first time layer alignment is effectively off (the
    decision is :class:`~laser_plugin.geometry.lsa.LayerAlignmentWatch`'s)."""

    def __init__(self, enabled: bool):
        from laser_plugin.geometry.lsa import LayerAlignmentWatch

        self.watch = LayerAlignmentWatch(enabled)

    def on_frame(self, frame) -> None:
        pass

    def on_window(self, stats) -> None:
        message = self.watch.update(stats)
        if message:
            print(f"warning: {message}", file=sys.stderr)

    def close(self) -> None:
        pass


def session_loop_settings(loop_closure: bool) -> dict:
    """The settings loop closure adds (the session module loads torch: imported when run)."""
    from laser_plugin.session import loop_settings

    return loop_settings(loop_closure)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of a run as one ``warning: ...`` line each (no source location: users act on the text)."""
    print(f"warning: {message}", file=sys.stderr)


def device_split(engine) -> str | None:
    """Windows each device predicted, e.g. "cuda:0 21, cuda:1 19" (None on one device)."""
    from laser_plugin.predictors import Replicas, Workers

    p = engine.predictor
    if isinstance(p, Workers):
        names, counts = p.pool.devices, p.pool.windows_per_worker
    elif isinstance(p, Replicas):
        names, counts = p.device_names(), p.windows_per_replica
    else:
        return None
    if len(counts) < 2:
        return None
    return ", ".join(f"{d} {n}" for d, n in zip(names, counts, strict=True))


def print_summary(
    engine, writer, extra_rows: dict[str, str] | None = None, quiet: bool = False
) -> None:
    from rich.console import Console
    from rich.table import Table

    if quiet:
        return
    console = Console(stderr=True)
    table = Table(title="laser: run summary", show_header=False)
    elapsed = time.time() - writer.started
    rows = {
        "output": str(writer.dir),
        "frames": str(writer.num_frames),
        "windows": str(writer.num_windows),
        "wall time": f"{elapsed:.1f} s ({writer.num_frames / max(elapsed, 1e-9):.1f} frames/s)",
        "map points": f"{len(writer.map):,}",
    }
    per_frame = {k: 1000 * v / max(writer.num_frames, 1) for k, v in engine.timings.items()}
    rows["ms / frame"] = ", ".join(f"{k} {v:.1f}" for k, v in per_frame.items())
    split = device_split(engine)
    if split:
        rows["windows per device"] = split
    layers = _layer_row(engine, writer)
    if layers:
        rows["depth layers"] = layers
    if engine.warnings:
        rows["warnings"] = f"{len(engine.warnings)} (first: {engine.warnings[0]})"
    rows.update(extra_rows or {})
    for k, v in rows.items():
        table.add_row(k, v)
    console.print(table)


def _layer_row(engine, writer) -> str | None:
    """The run summary's line on layer alignment: layers per frame, pixels in a layer,
    inter-window edges per window, and whether it was effectively off."""
    from laser_plugin.geometry.lsa import layer_summary

    config = getattr(engine, "config", None)
    if config is not None and not config.layer_alignment:
        return "off (layer_alignment=False)"
    s = layer_summary(writer.window_stats)
    if s["layers_per_frame"] is None:
        return None
    coverage = 100 * (s["layer_coverage"] or 0)
    row = f"{s['layers_per_frame']:.1f} per frame, {coverage:.0f}% of pixels"
    if s["inter_edges_per_window"] is not None:
        row += f", {s['inter_edges_per_window']:.0f} inter-window edges per window"
    return row + (" - effectively OFF" if s["warning"] else "")


def resume_is_done(output_dir: Path, settings: dict) -> bool:
    """For --resume: True (and says so) when the run in output_dir already completed."""
    from laser_plugin.resume import check_settings, read_settings

    out = Path(output_dir).expanduser()
    if not (out / "summary.json").is_file():
        return False
    check_settings(read_settings(out, strict=True), settings)
    if read_settings(out, "status", strict=True) != "complete":
        return False
    print(f"nothing to resume: the run in {out} is complete", file=sys.stderr)
    return True


DEFAULT_OUTPUT_DIR = Path("outputs/<input name>")


def default_output_dir(source: Path, reuse: bool) -> Path:
    """``outputs/<input name>`` for ``laser run`` without --output-dir, or ``outputs/<name>-N``
    (the first N from 2) when that is taken by anything but a run of the same input that is
    unfinished (the user may resume it) or, with ``reuse`` (--resume/--overwrite), any run of
    the same input. Nothing existing is ever picked for a different input."""
    import itertools
    import json

    resolved = source.resolve()
    name = (resolved.stem if resolved.is_file() else resolved.name) or "run"
    for n in itertools.count(1):
        cand = Path("outputs") / (name if n == 1 else f"{name}-{n}")
        if not cand.exists() and not cand.is_symlink():
            return cand
        try:
            summary = json.loads((cand / "summary.json").read_text())
            settings = summary["settings"]
            same = settings["command"] == "run" and settings["input"] == str(resolved)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same and (reuse or summary.get("status") != "complete"):
            return cand
    raise AssertionError("unreachable")


def _progress_total(source: Path, stride: int, max_frames: int | None) -> int | None:
    """Frames the run will take, for the progress bar's N/total and ETA (None if unknown)."""
    from laser_plugin.sources import count_frames

    n = count_frames(source, stride)
    if n is not None and max_frames is not None:
        n = min(n, max_frames)
    return n


def check_device(value: str, flag: str, auto: bool = True, here: bool = True) -> None:
    """Refuse, in one line and before any work, a device torch cannot name or (``here``) this
    machine lacks. ``auto``: the word auto is accepted too."""
    if auto and value == "auto":
        return
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{flag} {value!r} is not a device: use {'auto, ' if auto else ''}cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and here:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{flag} {value} was asked for but no CUDA device is available")
        if (dev.index or 0) >= count:
            raise ConfigError(f"{flag} {value}: this machine has {count} CUDA device(s)")


def check_rate(value: float, flag: str) -> None:
    """A frame rate: positive and finite (timestamps are frame / rate)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be positive and finite, got {value}")


def _guard(fn):
    """Run fn; on Ctrl-C/SIGTERM report what was kept, and exit 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(
            "interrupted: the frames finalised so far were kept (status 'interrupted')",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


@dataclass
class Run:
    """Reconstruct a video file or an image folder."""

    input: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="INPUT")]]
    """A video file or a folder of images (sorted naturally: 2 before 10)."""
    output_dir: Annotated[Path, tyro.conf.arg(metavar="DIR")] = DEFAULT_OUTPUT_DIR
    """Where the run directory is written. Default: outputs/NAME (the input's name without its
    extension), or outputs/NAME-2, -3, ... when that holds anything but a run of this input."""
    model: Annotated[str, tyro.conf.arg(metavar="NAME")] = "pi3"
    """Backend: pi3, vggt, synthetic, or any registered in the laser_plugin.models entry points."""
    weights: Annotated[str | None, tyro.conf.arg(metavar="FILE|HUB-ID")] = None
    """Checkpoint: a local file, or a model-hub id when online. Default: the backend's own."""
    device: Annotated[str, tyro.conf.arg(metavar="DEVICE")] = "auto"
    """Device for the network: auto (cuda if available), cuda, cuda:N or cpu."""
    devices: Annotated[str | None, tyro.conf.arg(metavar="DEVICES")] = None
    """Several devices for the network, e.g. cuda:0,cuda:1, or all (every visible GPU): windows
    are predicted on one model replica per device at once; same output as one device."""
    # Single flags, not tyro's --x/--no-x pairs: --no-fast is its own field (the fast path's
    # default depends on the device, so "not --fast" and "--no-fast" differ).
    fast: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Use the fast path on the CPU too (on a GPU it is the default for π³ and VGGT; --no-fast
    turns it off there). The streaming speed path: π³/VGGT in their fast form (bf16 trunk, cached overlap tokens;
    compiled and CUDA-graphed on a GPU: tens of seconds of warm-up), frames sent as shared uint8
    and resized on the device. On a GPU the first device's network runs in a thread of this
    process beside the alignment (one CUDA context), every further device's in a worker process;
    on the CPU every device gets a worker process. Alignment stays here, in order. Works with
    --devices, --resume and loop closure."""
    no_fast: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """The plain path on a GPU (fp32 under autocast, eager, no worker thread): what the fast
    path's numerics are checked against."""
    laser: RunLaserConfig = field(default_factory=RunLaserConfig)
    viewers: Annotated[Viewers, tyro.conf.OmitArgPrefixes] = field(default_factory=Viewers)
    overwrite: bool = False
    """Replace an existing run in output_dir (only the run's own files are removed; anything
    else there refuses the overwrite)."""
    resume: bool = False
    """Continue the interrupted run in output_dir from its last finished window (same input and
    settings); gives the same result as an uninterrupted run."""
    checkpoint_interval: float = 10.0
    """Seconds between saves of the state --resume continues from (0: after every window)."""
    max_frames: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """Stop after this many frames."""
    stride: int = 1
    """Keep every n-th frame of the input."""
    fps: float = 30.0
    """Frame rate for the timestamps of image folders."""
    outputs: Annotated[str, tyro.conf.arg(metavar="LIST")] = "compact"
    """What the run directory holds: compact (images, depth, conf, points: ~0.3-0.5 MB per frame
    at 518x294), full (also layers and source), or a comma list of images, depth, conf, layers,
    source, points and presets, e.g. compact,layers. Without source, the original frames are
    read again from the input video or folder when a nerfstudio/COLMAP export needs them."""
    quiet: bool = False
    """No progress bar or summary."""
    loop_closure: bool = True
    """Close loops (place recognition, verification, Sim(3) pose graph; corrected frames are
    rewritten) when the backend gives place descriptors (all do: π³ and VGGT pool them from
    their own encoder tokens). Works with --fast, --devices and --resume."""

    def main(self) -> int:
        import torch

        from laser_plugin.io.lock import release as release_output_dir
        from laser_plugin.io.run_dir import format_outputs, parse_outputs
        from laser_plugin.models import load_model
        from laser_plugin.resume import input_fingerprint
        from laser_plugin.sources import open_source

        device = self.device
        check_device(device, "--device")
        check_device(self.laser.device, "--align-device")
        self.viewers.check()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.fast and self.no_fast:
            raise ConfigError("--fast and --no-fast contradict each other: give one")
        # A user should not need to know --fast: on a GPU it is the default for the networks
        # that have a fast form (issue 23); elsewhere it stays opt-in (worker processes).
        fast = self.fast or (
            not self.no_fast and device.startswith("cuda") and self.model in ("pi3", "vggt")
        )
        if self.laser.device == "auto":
            first = (self.devices or device).split(",")[0]
            self.laser.device = device if first in ("all", "") else first
            if not self.laser.device.startswith("cuda"):
                self.laser.device = "cpu"
        self.laser.validate()
        outputs = parse_outputs(self.outputs)  # a bad --outputs in one line, before any work
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues a run; --overwrite replaces it: give one")
        if self.stride < 1:
            raise ConfigError(f"--stride must be at least 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be at least 1, got {self.max_frames}")
        check_rate(self.fps, "--fps")
        if not (math.isfinite(self.checkpoint_interval) and self.checkpoint_interval >= 0):
            raise ConfigError(
                f"--checkpoint-interval must be 0 or a positive number of seconds, got "
                f"{self.checkpoint_interval}"
            )
        source = Path(self.input).expanduser()
        if not source.exists():
            raise InputError(f"input not found: {source}")
        if self.output_dir == DEFAULT_OUTPUT_DIR:
            self.output_dir = default_output_dir(source, reuse=self.resume or self.overwrite)
            if not self.quiet:
                print(f"laser: writing the run to {self.output_dir}", file=sys.stderr)
        from laser_plugin.io.ownership import check_input_outside_output

        check_input_outside_output(source, self.output_dir)  # replacing would delete the input
        # Fail on unreadable input now, in one line, before anything is loaded or written (the
        # run itself reports skipped files).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = open_source(source, fps=self.fps, stride=self.stride)
            try:
                next(frames, None)
            finally:
                frames.close()
        predictor = None
        pool = None
        if fast:  # worker processes, one per device (laser_plugin.worker)
            from laser_plugin.multi_device import parse_devices
            from laser_plugin.predictors import Workers
            from laser_plugin.worker import WorkerPool, model_factory

            devices = parse_devices(self.devices) if self.devices is not None else [device]
            device = ",".join(devices)
            kw = {}
            if self.model in ("pi3", "vggt"):
                # One encoder shape (the window stride): no compile in the middle of the run.
                stride = self.laser.window_size - self.laser.overlap
                kw = {"fast": True, "fast_options": {"encode_batch": stride}}
            # The first GPU in this process: alignment and network then share one CUDA context
            # instead of time-slicing two, faster on one GPU and on two (benchmarks/DECISIONS.md,
            # "the first GPU's network as a thread of the aligning process").
            pool = WorkerPool(
                model_factory(self.model, self.weights, **kw),
                devices,
                in_process_first=devices[0].startswith("cuda"),
            )

            if not self.quiet and devices[0].startswith("cuda"):
                # Otherwise the progress bar sits at zero with no explanation while it compiles.
                print(
                    "laser: the fast path compiles the network on its first windows "
                    "(tens of seconds on a GPU, once per run; --no-fast skips it)",
                    file=sys.stderr,
                )

            # Sinks in this thread: the resume state saver must see the state of its window.
            predictor = Workers(pool, sink_thread=False)

            model = pool
        elif self.devices is not None:  # one replica per device (laser_plugin.multi_device)
            from laser_plugin.multi_device import load_replicas, parse_devices
            from laser_plugin.predictors import Replicas

            devices = parse_devices(self.devices)
            device = ",".join(devices)
            replicas = load_replicas(self.model, devices, weights=self.weights)

            predictor = Replicas(replicas)

            model = replicas[0]
        else:
            model = load_model(self.model, weights=self.weights, device=device)

        settings = {
            "command": "run",
            "input": str(source.resolve()),
            "input_digest": input_fingerprint(source),  # --resume refuses a changed input
            "model": self.model,
            "weights": self.weights,
            "device": device,
            "laser": dataclasses.asdict(self.laser),
            "stride": self.stride,
            "fps": self.fps,
            "max_frames": self.max_frames,
            "outputs": format_outputs(outputs),
            **session_loop_settings(self.loop_closure),  # in what a resumed run must match
        }
        if fast:  # other numerics (bf16): a run is resumed only on the same path
            settings["fast"] = True

        if self.resume and (Path(self.output_dir).expanduser() / "summary.json").is_file():
            from laser_plugin.resume import read_settings

            # Not in the resume fingerprint (the device may change): the fast path's numerics
            # differ (bf16), so a run is continued only on the path it started on.
            saved = read_settings(Path(self.output_dir).expanduser(), strict=True)
            was = bool(saved.get("fast", False))
            if was != fast:
                if pool is not None:
                    pool.close()
                raise ConfigError(
                    f"cannot resume: the run was made {'with' if was else 'without'} the fast "
                    f"path; resume it with {'--fast' if was else '--no-fast'} (or --overwrite)"
                )
        if self.resume and resume_is_done(self.output_dir, settings):
            if pool is not None:
                pool.close()
            return 0

        def go():
            engine, writer = execute(
                model,
                source,
                self.laser,
                self.output_dir,
                overwrite=self.overwrite,
                settings=settings,
                viewers=self.viewers,
                max_frames=self.max_frames,
                total=_progress_total(source, self.stride, self.max_frames),
                fps=self.fps,
                stride=self.stride,
                outputs=format_outputs(outputs),
                quiet=self.quiet,
                resume=self.resume,
                predictor=predictor,
                checkpoint_interval=self.checkpoint_interval,
                loop_closure=self.loop_closure,
            )
            print_summary(engine, writer, quiet=self.quiet)

        try:
            if pool is not None:
                pool.start()  # model errors (e.g. missing weights) before the run dir is written
            _guard(go)
        finally:
            if pool is not None:
                pool.close()
            release_output_dir(self.output_dir)  # held since prepare_output_dir (one writer)
        return 0


@dataclass
class Demo:
    """Run the whole pipeline on the built-in synthetic scene (no weights, no GPU) and score it."""

    output_dir: Path = Path("laser_demo_output")
    """Where the run directory is written. An earlier demo run there is replaced (and said so);
    anything else needs --overwrite, and files laser did not write are never removed."""
    scene: Annotated[str, tyro.conf.arg(metavar="NAME")] = "demo"
    """Synthetic sequence: demo, lateral, forward, turn, pure_rotation, low_parallax, loop, figure8."""
    frames: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """Frames in the sequence (default: the scene's own length)."""
    height: int = 128
    """Frame height in pixels."""
    width: int = 224
    """Frame width in pixels."""
    seed: int = 0
    """Random seed of the synthetic scene's objects."""
    outputs: Annotated[str, tyro.conf.arg(metavar="LIST")] = "compact,layers"
    """What the run directory holds (as for laser run --outputs; the demo shows its layers)."""
    device: Annotated[str, tyro.conf.arg(metavar="DEVICE")] = "auto"
    """Where the network runs: auto, cpu, cuda or cuda:N (the synthetic model computes on the
    CPU whatever this says). The alignment's device is --align-device."""
    laser: AlignLaserConfig = field(default_factory=AlignLaserConfig)
    viewers: Annotated[Viewers, tyro.conf.OmitArgPrefixes] = field(default_factory=Viewers)
    quiet: bool = False
    """No progress bar or summary table."""
    overwrite: bool = False
    """Replace a run of any laser command in output_dir (only the run's own files)."""

    def main(self) -> int:
        import numpy as np

        from laser_plugin.io import ownership
        from laser_plugin.io.lock import release as release_output_dir
        from laser_plugin.io.run_dir import format_outputs, parse_outputs
        from laser_plugin.models.synthetic import make_model, make_scene
        from laser_plugin.models.synthetic.evaluate import evaluate_depths_poses

        self.laser.validate()
        check_device(self.device, "--device")
        check_device(self.laser.device, "--align-device", auto=False)
        self.viewers.check()
        if self.device != "auto" and not self.quiet:
            print(DEVICE_NOTE, file=sys.stderr)
        scene = make_scene(self.scene, self.frames, self.height, self.width, seed=self.seed)
        model = make_model(scene=scene)
        settings = {
            "command": "demo",
            "model": "synthetic",
            "scene": self.scene,
            "frames": scene.num_frames,
            "size": [self.height, self.width],
            "laser": dataclasses.asdict(self.laser),
        }
        depths: list = []
        poses: list = []
        indices: list = []

        class _Collect:  # keeps only what scoring needs
            def on_frame(self, f):
                depths.append(f.depth)
                poses.append(f.cam_to_world)
                indices.append(f.index)

            def close(self):
                pass

        # Re-running the demo replaces its own earlier output without a flag, but never silently.
        overwrite = self.overwrite
        if not overwrite and ownership.run_command(self.output_dir) == "demo":
            overwrite = True
            if not self.quiet:
                print(
                    f"laser: replacing the earlier demo run in {self.output_dir}", file=sys.stderr
                )

        def go():
            engine, writer = execute(
                model,
                scene.frames(),
                self.laser,
                self.output_dir,
                overwrite=overwrite,
                settings=settings,
                viewers=self.viewers,
                total=scene.num_frames,
                fps=scene.fps,
                quiet=self.quiet,
                extra_sinks=[_Collect()],
                outputs=format_outputs(parse_outputs(self.outputs)),
            )
            acc = evaluate_depths_poses(depths, np.stack(poses), scene, indices) if indices else {}
            writer.extra["accuracy"] = acc
            writer._write_summary("complete")
            rows = {
                "depth AbsRel": f"{acc.get('abs_rel', float('nan')):.4f}  (δ<1.25 {acc.get('delta_1_25', float('nan')):.3f})",
                "ATE (Sim(3))": f"{acc.get('ate', float('nan')):.4f} m",
                "RPE": f"{acc.get('rpe_trans', float('nan')):.4f} m, {acc.get('rpe_rot_deg', float('nan')):.3f} deg",
                "layer consistency": f"{acc.get('consistency', float('nan')):.4f} (spread of object log-scale; 0 = consistent)",
            }
            print_summary(engine, writer, rows, quiet=self.quiet)

        try:
            _guard(go)
        finally:
            release_output_dir(self.output_dir)  # after the scored summary is written
        return 0
