"""The streaming engine: windows -> model -> Sim(3) -> layers -> layer scales -> final frames.

Memory does not grow with the stream: the scheduler holds at most one window of images and the
engine caches the final estimates of the last L-1 frames, the only ones a later window can
overlap.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from laser_plugin.config import LaserConfig
from laser_plugin.errors import ConfigError
from laser_plugin.geometry.layers import Layers, mul_upsampled_
from laser_plugin.geometry.lsa import align_layers
from laser_plugin.geometry.sim3 import (
    RegistrationResult,
    Sim3,
    camera_anchor_points,
    register_overlap,
    weighted_procrustes,
)
from laser_plugin.predictors import Predictor
from laser_plugin.prepare import (
    UNUSABLE,
    UNUSABLE_HINT,
    ModelOutputError,
    PreparedWindow,
    non_finite_model_error,
    prepare_window,
)
from laser_plugin.sources import SourceFrame, open_source
from laser_plugin.stream_threads import SinkCaller
from laser_plugin.types import (
    ReconstructedFrame,
    ReconstructionModel,
    WindowPrediction,
    WindowStats,
)
from laser_plugin.windows import Window, schedule_windows

if TYPE_CHECKING:
    from laser_plugin.resume import EngineState


@dataclass
class _Item:
    """A frame waiting in the window buffer."""

    index: int
    timestamp: float
    tensor: Tensor  # (3, H, W) float32 in [0, 1], model size
    image: np.ndarray  # (H, W, 3) uint8, model size
    source: np.ndarray | None  # (H0, W0, 3) uint8


@dataclass
class _Final:
    """Final estimate of a frame, kept while a later window may overlap it."""

    index: int
    depth: Tensor  # (H, W), 0 = invalid
    confident: Tensor  # (H, W) bool
    cam_to_world: Tensor  # (4, 4)
    intrinsics: Tensor  # (3, 3)
    labels: Tensor | None  # (h, w) strided layer labels
    depth_strided: Tensor | None  # (h, w)
    conf_strided: Tensor | None = None  # (h, w) the model's own confidence (layer_fusion)


def _frame_span(window) -> str:
    first, last = window.items[0].index, window.items[-1].index
    return f"frames {first}-{last}"


def _stop_on_unusable(window, messages) -> None:
    """Stop the run, in one line naming the window, on a prediction that is not finite as a
    whole (:func:`laser_plugin.prepare.unusable_output`): every runner aligns through here."""
    for m in messages:
        if m.startswith(UNUSABLE):
            raise ModelOutputError(
                f"window {window.index} ({_frame_span(window)}): the model's output is not "
                f"finite ({m[len(UNUSABLE) :]}): {UNUSABLE_HINT}"
            )


def _layer_readout(num_layers: Tensor, prep: PreparedWindow) -> tuple[float, float, float]:
    """(mean layers per frame, mean fraction of pixels in a layer, median measured depth noise)
    of a window, read back to the host together (one sync on a GPU)."""
    vals = [num_layers.float().mean()]
    if prep.labels is not None:
        vals.append((prep.labels >= 0).float().mean().to(vals[0].device))
        if prep.layer_noise is not None:
            vals.append(prep.layer_noise.float().median().to(vals[0].device))
    out = [*torch.stack(vals).tolist(), 0.0, 0.0]
    return out[0], out[1], out[2]


@dataclass
class StreamState:
    """Everything one window hands to the next: what a resume saves and restores
    (:mod:`laser_plugin.resume`), and nothing else of the stream lives between windows (hooks
    keep their own, e.g. loop closure's pose graph)."""

    cache: dict[int, _Final] = field(default_factory=dict)
    """index -> final estimate of the last L-1 frames (the only ones a later window overlaps)."""
    held: list[ReconstructedFrame] = field(default_factory=list)
    """Frames the next window finalises in "later" mode (emitted at the end if none follows)."""
    model_size: tuple[int, int] | None = None
    """(H, W) the network sees, fixed by the first frame."""
    first_source_size: tuple[int, int] | None = None
    """(H0, W0) of the first decoded frame."""
    sizes_warned: bool = False


class StreamingReconstructor:
    """Turns a frozen window model into a streaming reconstructor (LASER)."""

    def __init__(
        self,
        model: ReconstructionModel,
        config: LaserConfig | None = None,
        *,
        keep_source_images: bool = True,
        input_size: tuple[int, int] | None = None,
        hooks: Sequence = (),
        predictor: Predictor | None = None,
    ):
        """``hooks``: called after every aligned window, whatever runs the network (e.g.
        :class:`~laser_plugin.loop.closure.LoopClosure`); see :meth:`align`. ``predictor``:
        where the network runs (:mod:`laser_plugin.predictors`; default inline)."""
        if not callable(model):
            raise ConfigError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.config = (config or LaserConfig()).validate()
        self.keep_source_images = keep_source_images
        self.input_size = input_size
        self.device = torch.device(self.config.device)
        self.timings: dict[str, float] = {}
        self.window_stats: deque[WindowStats] = deque(maxlen=64)
        self.num_frames = 0
        self.num_windows = 0
        self.warnings: list[str] = []
        self.hooks = list(hooks)
        self._side_model = None
        self.stream = StreamState()
        self.predictor = predictor if predictor is not None else Predictor()

    # The stream state under the names the stages (and benchmarks) use.
    _cache = property(
        lambda self: self.stream.cache, lambda self, v: setattr(self.stream, "cache", v)
    )
    _held = property(lambda self: self.stream.held, lambda self, v: setattr(self.stream, "held", v))
    _model_size = property(
        lambda self: self.stream.model_size,
        lambda self, v: setattr(self.stream, "model_size", v),
    )
    _first_source_size = property(
        lambda self: self.stream.first_source_size,
        lambda self, v: setattr(self.stream, "first_source_size", v),
    )
    _sizes_warned = property(
        lambda self: self.stream.sizes_warned,
        lambda self, v: setattr(self.stream, "sizes_warned", v),
    )

    def take_held(self) -> list[ReconstructedFrame]:
        """At the end of a stream: the frames "later" mode held back, now final (counted)."""
        held, self.stream.held = self.stream.held, []
        self.num_frames += len(held)
        return held

    def fix_size(self, index: int, h0: int, w0: int, default) -> tuple[int, int]:
        """The model size for a decoded (h0, w0) frame: fixed by the first frame (``input_size``,
        else ``default(h0, w0)``, else the frame's own); later frames of another size are resized
        to it, with one warning."""
        st = self.stream
        if st.model_size is None:
            size = self.input_size or (default(h0, w0) if default is not None else None)
            st.model_size = tuple(size) if size else (h0, w0)
            st.first_source_size = (h0, w0)
        elif (h0, w0) != st.first_source_size and not st.sizes_warned:
            self._warn(
                f"frame {index} is {w0}x{h0} but the stream started at "
                f"{st.first_source_size[1]}x{st.first_source_size[0]}; resizing every frame to the model size"
            )
            st.sizes_warned = True
        return st.model_size

    @property
    def loop(self):
        """The loop-closure hook, if this engine has one."""
        return next((h for h in self.hooks if getattr(h, "name", None) == "loop"), None)

    def side_model_call(self, images: Tensor) -> WindowPrediction:
        """A model call outside the window stream (a hook's, e.g. loop verification). Strategies
        that run the network elsewhere route it there (:meth:`set_side_model`)."""
        return (self._side_model or self.model)(images)

    def set_side_model(self, call=None) -> None:
        """Where :meth:`side_model_call` goes (None: this engine's own model)."""
        self._side_model = call

    def has_corrections(self) -> bool:
        """Whether a hook has frames to correct (:meth:`take_corrections` would yield some)."""
        return any(h.has_corrections() for h in self.hooks)

    def take_corrections(self) -> Iterator[list[ReconstructedFrame]]:
        """Frames emitted earlier that a hook changed since the last call (e.g. a closed loop),
        in chunks; the run loop sends them to the sinks' ``on_correction`` after each window."""
        for hook in self.hooks:
            yield from hook.corrections()

    # -- public ------------------------------------------------------------------------------
    def run(
        self,
        source: str | Path | Iterable,
        sinks: Sequence = (),
        *,
        max_frames: int | None = None,
        fps: float = 30.0,
        stride: int = 1,
        resume: EngineState | None = None,
        predictor: Predictor | None = None,
    ) -> Iterator[ReconstructedFrame]:
        """Reconstruct a stream; yields each frame once it is final and passes it to ``sinks``.

        The one run loop: source -> windows -> predictor -> align -> hooks -> sinks.
        ``source``: a video file, an image folder, or an iterable of HxWx3 uint8 arrays.
        Sinks are closed at the end; if the run stops early they first get ``on_interrupt``.
        A sink whose ``essential`` attribute is true (the run writer) stops the run when it fails;
        any other failing sink is detached with a warning.
        ``resume``: a state saved after some window of the same stream and settings
        (:mod:`laser_plugin.resume`); the windows it covers are skipped without a model call.
        ``predictor``: where the network runs for this stream (default: the engine's own,
        :mod:`laser_plugin.predictors`); the frames are the same whichever it is.
        """
        p = predictor if predictor is not None else self.predictor
        cfg = self.config
        done = self.start_stream(resume)
        calls = SinkCaller(
            self,
            sinks,
            p.sink_thread,
            (lambda seconds: p.add("sinks", seconds)) if p.timed_stages else None,
            8 * cfg.window_size if p.sink_thread else 0,
        )
        pending: deque[Window] = deque()  # submitted, not yet aligned (stream order)
        old_interval = sys.getswitchinterval()
        ok = False
        try:
            p.open(self)
            if p.switch_interval:
                sys.setswitchinterval(p.switch_interval)
            items = p.frames(
                lambda: open_source(source, fps=fps, stride=stride, max_frames=max_frames)
            )
            windows = schedule_windows(items, cfg.window_size, cfg.overlap)
            exhausted = False
            while True:
                # Fill first, so a concurrent predictor has work while this thread aligns.
                t = time.perf_counter()
                while not exhausted and len(pending) < p.max_pending:
                    window = next(windows, None)
                    if window is None:
                        exhausted = True
                    elif window.index >= done:  # else finalised before the interruption
                        p.submit(window)
                        pending.append(window)
                        p.max_buffered = max(p.max_buffered, len(pending))
                if p.timed_stages:
                    p.add("dispatch", time.perf_counter() - t)
                if not pending:
                    break
                window = pending.popleft()
                with torch.cuda.stream(p.align_stream):  # a no-op for None
                    pred, times = p.result(window)
                    t = time.perf_counter()
                    finals, stats = self.align(window, pred, times)
                    del pred
                if p.timed_stages:
                    p.add("align", time.perf_counter() - t)
                yield from calls.window(finals, stats)
            yield from calls.held()  # "later" mode: the last window's overlap frames
            calls.finish()  # the last frames' sink calls must succeed too
            ok = True
        except BaseException as exc:
            calls.interrupt(exc)
            raise
        finally:
            sys.setswitchinterval(old_interval)
            try:
                p.close(list(pending))
            finally:
                calls.close(ok)

    def _end_stream(self, live: list, ok: bool, failed: BaseException | None = None) -> None:
        """Close every sink; on a run that finished (``ok``), raise the first failure of an
        essential sink (``failed``, or one in ``close``): the results are incomplete."""
        for sink in live:
            try:
                sink.close()
            except Exception as exc:  # a sink failing must not lose the others' files
                if getattr(sink, "essential", False):
                    failed = failed or exc
                else:
                    self._warn(f"sink {type(sink).__name__} failed to close: {exc}")
        if ok and self.num_frames == 0:
            self._warn("the stream had no frames")
        if ok and failed is not None:
            raise failed

    def start_stream(self, resume: EngineState | None = None) -> int:
        """Reset the per-stream state (or restore a saved one); return the windows already done.

        :meth:`run` calls it first; so does a benchmark that drives :meth:`predict` and
        :meth:`align` itself.
        """
        self.stream = StreamState()
        saved = {} if resume is None else dict(resume.hooks)
        names = {h.name for h in self.hooks}
        if resume is not None and set(saved) != names:
            # E.g. a state saved with loop closure resumed without it: the result would differ.
            raise ConfigError(
                f"cannot resume: the saved state has {sorted(saved) or 'no hooks'}, this run "
                f"{sorted(names) or 'no hooks'} (use the same settings)"
            )
        for hook in self.hooks:
            hook.start(saved.get(hook.name))
        if resume is None:
            return 0
        from laser_plugin.resume import restore

        restore(self, resume)
        return resume.num_windows

    def reconstruct(self, source, sinks: Sequence = (), **kw) -> list[ReconstructedFrame]:
        """Run to completion and return all frames (for short streams; ``run`` streams)."""
        return list(self.run(source, sinks, **kw))

    # -- stages ------------------------------------------------------------------------------
    def _prepared(self, frames: Iterator[SourceFrame]) -> Iterator[_Item]:
        for i, f in enumerate(frames):
            h0, w0 = f.image.shape[:2]
            self.fix_size(i, h0, w0, getattr(self.model, "input_size", None))
            t = (
                torch.tensor(f.image).permute(2, 0, 1).float().div_(255.0)
            )  # copies: sources may be read-only
            h, w = self._model_size
            if (h0, w0) != (h, w):
                t = F.interpolate(
                    t[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False
                )[0]
                t = t.clamp_(0, 1)
            image = (t.permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).numpy()
            src = f.image if self.keep_source_images else None
            yield _Item(i, f.timestamp, t, image, src)

    def _timed(self, name: str, start: float, stats: dict) -> float:
        now = time.perf_counter()
        stats[name] = stats.get(name, 0.0) + now - start
        self.timings[name] = self.timings.get(name, 0.0) + now - start
        return now

    def predict(
        self, window: Window[_Item], model: ReconstructionModel | None = None
    ) -> WindowPrediction:
        """Run the network on a window (the stage a pipelined or multi-GPU runner overlaps).

        Stateless with respect to the stream, so windows may be predicted ahead, in any order and
        on any device; :meth:`align` must then see them in order.
        """
        images = torch.stack([it.tensor for it in window.items])
        with torch.inference_mode():
            try:
                pred = (model or self.model)(images)
            except torch.linalg.LinAlgError as exc:
                err = non_finite_model_error(exc, f"window {window.index} ({_frame_span(window)})")
                if err is None:
                    raise
                raise err from None
        if not isinstance(pred, WindowPrediction):
            raise TypeError(f"model returned {type(pred).__name__}, expected WindowPrediction")
        pred.validate(len(window.items))
        return pred

    def align(
        self,
        window: Window[_Item],
        pred: WindowPrediction | PreparedWindow,
        times: dict[str, float] | None = None,
    ) -> tuple[list[ReconstructedFrame], WindowStats]:
        """Register and layer-align a predicted window (windows must come in stream order).

        ``pred`` may already be prepared (:func:`laser_plugin.prepare.prepare_window`, e.g. by a
        worker where the window was predicted); otherwise it is prepared here."""
        cfg = self.config
        times = {} if times is None else times
        warns: list[str] = []
        t = time.perf_counter()

        with torch.inference_mode():
            if isinstance(pred, PreparedWindow):
                prep = pred.to(self.device)
            else:
                prep = prepare_window(pred.to(self.device), cfg)
                t = self._timed("prepare", t, times)
            del pred
            _stop_on_unusable(window, prep.messages)
            poses, intr, conf_n, confident = (
                prep.cam_to_world,
                prep.intrinsics,
                prep.conf_n,
                prep.confident,
            )
            warns += [f"window {window.index}: {m}" for m in prep.messages]
            n_o = window.num_overlap
            prev = [self._cache[it.index] for it in window.items[:n_o]]
            reg = self._register(prev, prep.depth, poses, intr, confident, warns, window.index)
            sim3 = reg.sim3
            depth = prep.depth * sim3.scale
            poses = sim3.apply_poses(poses)
            t = self._timed("registration", t, times)

            labels_full = None
            node_scale = None
            num_layers = torch.zeros(len(window.items))
            spread = 0.0
            n_inter = n_intra = 0
            layers = None
            conf_strided = prep.conf_strided
            if cfg.layer_alignment:
                stride = prep.stride
                # Segmented at the model's scale (scale-invariant): bring its depth to the run's.
                layers = Layers(
                    prep.labels, prep.num_layers, prep.depth_strided * sim3.scale, stride
                )
                num_layers = layers.num_layers
                labels_full = prep.labels_full
                if n_o and all(p.labels is not None for p in prev):
                    k_s = intr.clone()
                    k_s[:, :2] /= stride
                    fuse = cfg.layer_fusion != "previous" and all(
                        p.conf_strided is not None for p in prev
                    )
                    la = align_layers(
                        layers.labels,
                        layers.depth,
                        torch.stack([p.labels for p in prev]),
                        torch.stack([p.depth_strided for p in prev]),
                        poses,
                        k_s,
                        cfg.iou_threshold,
                        cfg.intra_edges,
                        cfg.intra_warp,
                        cfg.huber_delta,
                        cfg.irls_iterations,
                        cfg.min_layer_pixels,
                        conf_prev=torch.stack([p.conf_strided for p in prev]) if fuse else None,
                        conf_new=conf_strided if fuse else None,
                        intra_hops=cfg.intra_hops,
                        fill_radius=cfg.scale_fill_radius,
                    )
                    t = self._timed("layer_graph", t, times)
                    # Overlap frames keep the earlier estimate unless they are re-emitted ("later").
                    first = 0 if cfg.overlap_estimate == "later" else n_o
                    # ``depth`` is this window's own tensor (scaled above): rescale it in place.
                    mul_upsampled_(depth[first:], la.pixel_scale[first:], stride)  # a view
                    strided_scale = torch.ones_like(la.pixel_scale)
                    strided_scale[first:] = la.pixel_scale[first:]
                    layers = layers._replace(depth=layers.depth * strided_scale)
                    node_scale = la.node_scale
                    if cfg.layer_fusion == "accumulated" and la.node_prior is not None:
                        # The fused estimate is as reliable as both estimates together (precisions
                        # add): the next window's fusion weighs it with the sum.
                        lab = layers.labels.clamp_min(0).reshape(len(window.items), -1)
                        prior = torch.gather(la.node_prior, 1, lab).view_as(conf_strided)
                        conf_strided = conf_strided + torch.where(
                            layers.labels >= 0, prior, torch.zeros_like(prior)
                        )
                    n_inter, n_intra = la.num_inter_edges, la.num_intra_edges
                    new_reached = la.reached[n_o:]
                    if new_reached.any():
                        spread = float(
                            torch.log(la.node_scale[n_o:][new_reached]).std(unbiased=False)
                        )
                    t = self._timed("layer_scaling", t, times)

            finals = self._finalise(
                window,
                depth,
                conf_n,
                confident,
                poses,
                intr,
                labels_full,
                node_scale,
                layers,
                conf_strided,
            )
            self._timed("finalise", t, times)
            if self.hooks:
                # In "later" mode the window also built the frames it holds back: hooks see all.
                ids = {id(f) for f in finals}
                held = [f for f in self._held if f.window == window.index and id(f) not in ids]
                for hook in self.hooks:
                    hook.after_window(window, prep.descriptors, finals + held, times, self)

        # Layers per frame, the labelled fraction and the measured noise: one read-back.
        mean_layers, coverage, noise = _layer_readout(num_layers, prep)
        stats = WindowStats(
            window=window.index,
            frame_indices=[it.index for it in window.items],
            new_frame_indices=[f.index for f in finals],
            scale=float(sim3.scale),
            depth_residual=reg.depth_residual,
            pose_residual=reg.pose_residual,
            overlap_pixels=reg.num_pixels,
            num_layers=mean_layers,
            layer_scale_spread=spread,
            num_inter_edges=n_inter,
            num_intra_edges=n_intra,
            layer_coverage=coverage,
            depth_noise=noise,
            timings=times,
            warnings=warns,
        )
        for m in warns:
            self._warn(m)
        self.num_windows += 1
        self.num_frames += len(finals)
        self.window_stats.append(stats)
        return finals, stats

    def _register(self, prev, depth, poses, intr, confident, warns, k) -> RegistrationResult:
        cfg = self.config
        n_o = len(prev)
        if n_o == 0:
            # The global frame is the first frame's camera (its pose becomes the identity).
            r0, t0 = poses[0, :3, :3], poses[0, :3, 3]
            sim3 = Sim3(torch.ones((), dtype=depth.dtype, device=depth.device), r0.T, -r0.T @ t0)
            return RegistrationResult(sim3, 0.0, 0.0, 0, False)
        reg = register_overlap(
            torch.stack([p.depth for p in prev]),
            torch.stack([p.cam_to_world for p in prev]),
            torch.stack([p.intrinsics for p in prev]),
            torch.stack([p.confident for p in prev]),
            depth[:n_o],
            poses[:n_o],
            intr[:n_o],
            confident[:n_o],
            method=cfg.registration,
            huber_delta=cfg.huber_delta,
            iterations=cfg.irls_iterations,
        )
        if reg.num_pixels == 0:
            # No depth to compare: the scale from the overlap cameras' baseline, R and t from the
            # cameras' centres and axes (centres alone leave the rotation free when collinear).
            pose_prev = torch.stack([p.cam_to_world for p in prev])
            c_new, c_prev = poses[:n_o, :3, 3], pose_prev[:, :3, 3]
            base_new = float((c_new - c_new.mean(0)).norm(dim=-1).max())
            base_prev = float((c_prev - c_prev.mean(0)).norm(dim=-1).max())
            scale = torch.ones((), dtype=depth.dtype, device=depth.device)
            if n_o >= 2 and base_new > 1e-9 and base_prev > 1e-9:
                s = weighted_procrustes(c_new, c_prev).scale
                if torch.isfinite(s) and s > 0:
                    scale = s.to(depth.dtype)
            else:
                warns.append(
                    "no baseline in the overlap either: the window's scale is unknown (kept 1)"
                )
            # Anchor length ~ the scene depth, so the camera axes (reliable) outweigh the centres
            # (noisy over a short baseline) in the rotation.
            d_prev = torch.stack([p.depth for p in prev])
            d_prev = d_prev[d_prev > 0]
            length = float(d_prev.median()) if d_prev.numel() else max(10.0 * base_prev, 1.0)
            src = scale * camera_anchor_points(poses[:n_o], length / scale)
            rt = weighted_procrustes(src, camera_anchor_points(pose_prev, length), scale=1.0)
            fit = Sim3(scale, rt.rotation, rt.translation)
            warns.append("no valid overlap depth; registered on the overlap cameras only")
            reg = RegistrationResult(fit, float("nan"), 0.0, 0, True)
        elif reg.degenerate:
            warns.append(
                f"only {reg.num_pixels} usable overlap pixels after the confidence cut; used all valid pixels"
            )
        return reg

    def _finalise(
        self,
        window,
        depth,
        conf_n,
        confident,
        poses,
        intr,
        labels_full,
        node_scale,
        layers,
        conf_strided=None,
    ):
        """Build the frames this window finalises and update the overlap cache.

        "earlier": frames not seen before are final now. "later": the frames held back from the
        previous window are final now with this window's estimate, and this window's last O
        frames are held back in turn (emitted at the end of the stream if no window follows).
        """
        cfg = self.config
        n_o = window.num_overlap
        later = cfg.overlap_estimate == "later"
        held = {f.index for f in self._held}
        first = (
            next((j for j, it in enumerate(window.items) if it.index in held), n_o)
            if later
            else n_o
        )
        self._held = []
        built = []
        # One device->host copy per output array for the whole window (on a GPU, per-frame
        # copies cost a synchronisation each); on the CPU these are views, no copies.
        h_depth = depth[first:].float().cpu().numpy()
        h_conf = conf_n[first:].float().cpu().numpy()
        h_poses = poses[first:].double().cpu().numpy()
        h_intr = intr[first:].double().cpu().numpy()
        h_labels = (
            None if labels_full is None else labels_full[first:].to(torch.int16).cpu().numpy()
        )
        h_scales = None if node_scale is None else node_scale[first:].float().cpu().numpy()
        h_num = None if layers is None else layers.num_layers[first:].tolist()
        for j in range(len(window.items)):
            it = window.items[j]
            if j >= first or later:
                self._cache[it.index] = _Final(
                    it.index,
                    depth[j],
                    confident[j],
                    poses[j],
                    intr[j],
                    None if layers is None else layers.labels[j],
                    None if layers is None else layers.depth[j],
                    None if conf_strided is None else conf_strided[j],
                )
            if j < first:
                continue
            k = j - first
            labels = None
            layer_scales = None
            if h_labels is not None:
                labels = h_labels[k]
                m = int(h_num[k])
                layer_scales = h_scales[k, :m] if h_scales is not None else np.ones(m, np.float32)
            frame = ReconstructedFrame(
                index=it.index,
                timestamp=float(it.timestamp),
                image=it.image,
                cam_to_world=h_poses[k],
                intrinsics=h_intr[k],
                depth=h_depth[k],
                conf=h_conf[k],
                window=window.index,
                layers=labels,
                layer_scales=layer_scales,
                source_image=it.source,
            )
            built.append(frame)
        last = window.items[-1].index
        for key in [k for k in self._cache if k <= last - cfg.window_size + 1]:
            del self._cache[key]
        if later:
            self._held = built[-cfg.overlap :]
            built = built[: -cfg.overlap]
        return built

    # -- helpers -----------------------------------------------------------------------------
    # Above these, a window's overlap frames disagree with the previous window's beyond what model
    # noise gives (measured on the synthetic scenes: depth <= 0.16, poses <= 0.03 even with
    # little parallax; a constant-depth window gave 0.41-0.62, reflected rotations 0.14-0.49).
    DEPTH_DISAGREEMENT = 0.25
    POSE_DISAGREEMENT = 0.1

    def check_agreement(self, stats: WindowStats) -> None:
        """Warn when a window disagrees with the previous one on their shared frames.

        Alignment cannot repair a window the model got wrong (a blurred or textureless stretch, a
        reflected pose), so the user is told instead of getting a silently wrong result.
        """
        found = []
        if stats.depth_residual > self.DEPTH_DISAGREEMENT:
            found.append(f"median relative depth residual {stats.depth_residual:.0%}")
        if stats.pose_residual > self.POSE_DISAGREEMENT:
            found.append(f"camera residual {stats.pose_residual:.0%} of the scene depth")
        if found:
            m = (
                f"window {stats.window} disagrees with the previous window on their shared frames "
                f"({', '.join(found)}): frames {stats.new_frame_indices[:1]}.. may be wrong"
            )
            stats.warnings.append(m)
            self._warn(m)

    def _emit(self, sinks: list, method: str, *args) -> list:
        """Call ``method`` on every sink; a sink that raises is warned about once and dropped."""
        alive = []
        for sink in sinks:
            fn = getattr(sink, method, None)
            if fn is None:
                alive.append(sink)
                continue
            t = time.perf_counter()
            try:
                fn(*args)
                alive.append(sink)
            except Exception as exc:
                if method == "on_interrupt":
                    alive.append(sink)
                    continue
                if getattr(sink, "essential", False):
                    raise  # e.g. the run writer on a full disk: going on would lose the results
                self._warn(f"sink {type(sink).__name__} failed in {method} and was detached: {exc}")
                with contextlib.suppress(Exception):
                    sink.close()
            finally:
                # Per sink, so a slow one shows by name ("sink_RunWriter" in the summary).
                key = f"sink_{type(sink).__name__}"
                self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t
        return alive

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if len(self.warnings) > 1000:
            del self.warnings[:500]
        warnings.warn(message, RuntimeWarning, stacklevel=3)
