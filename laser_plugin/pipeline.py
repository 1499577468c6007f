"""Pipelined streaming: decoding, the network and the alignment run at the same time.

``StreamingReconstructor.run`` does everything in turn: decode and preprocess a frame, run the
network on a full window, align it, hand the frames to the sinks. Here each stage has its own
thread, joined by bounded queues (so memory stays flat):

- decode: frames from the source, resized to the model size (``StreamingReconstructor``'s own
  preprocessing);
- network: ``predict`` of window k+1 (on its own CUDA stream when the model is on a GPU) while the
  caller's thread runs ``align`` of window k, which must see windows in order;
- sinks: ``on_frame`` / ``on_window`` calls, in order, off the critical path.

The frames are the same as ``StreamingReconstructor.run``'s (the same predict/align calls in the
same order); ``tests/test_pipeline.py`` checks that on the synthetic scene.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from laser_plugin.engine import StreamingReconstructor
from laser_plugin.sources import open_source
from laser_plugin.stream_threads import END, Failure, Feeder, SinkCaller, put_until
from laser_plugin.types import ReconstructedFrame
from laser_plugin.windows import schedule_windows

if TYPE_CHECKING:
    from laser_plugin.resume import EngineState


class PipelinedReconstructor:
    """Runs a :class:`StreamingReconstructor` with its stages overlapped (see module doc)."""

    def __init__(
        self,
        reconstructor: StreamingReconstructor,
        *,
        prefetch_windows: int = 1,
        sink_thread: bool = True,
        device: str | torch.device | None = None,
        align_priority: bool = True,
        switch_interval: float | None = 0.0005,
    ) -> None:
        """``prefetch_windows``: predicted windows that may wait for alignment (memory bound).
        ``device``: where the model runs (default: the model's ``device`` attribute, else CPU);
        a CUDA device gets a dedicated stream for the network. ``align_priority``: align on a
        high-priority CUDA stream (when alignment runs on the GPU). ``switch_interval``: the
        interpreter's thread switch interval while streaming (seconds; None keeps Python's 5 ms):
        shorter, the network and alignment threads get the interpreter back sooner between their
        many small GPU calls (faster end to end, though the measurements are noisy:
        benchmarks/DECISIONS.md, "interpreter switch interval 0.5 ms instead of 5 ms")."""
        if prefetch_windows < 1:
            raise ValueError("prefetch_windows must be at least 1")
        self.rec = reconstructor
        self.prefetch_windows = prefetch_windows
        self.switch_interval = switch_interval
        self.sink_thread = sink_thread
        dev = device if device is not None else getattr(reconstructor.model, "device", "cpu")
        self.model_device = torch.device(dev)
        self.align_stream = None
        align_dev = torch.device(reconstructor.config.device)
        if align_priority and self.model_device.type == "cuda" and align_dev.type == "cuda":
            # Alignment is a chain of small kernels and host syncs: a high-priority stream lets
            # them run between the network's large kernels instead of queueing behind them.
            self.align_stream = torch.cuda.Stream(device=align_dev, priority=-1)
        self.timings: dict[str, float] = {}
        """Seconds per stage, summed over the stream: decode, predict, align, sinks, and
        wait_predict (the caller waiting for the network: > 0 means the network is the bottleneck)."""

    def _add(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def run(
        self,
        source: str | Path | Iterable,
        sinks: Sequence = (),
        *,
        max_frames: int | None = None,
        fps: float = 30.0,
        stride: int = 1,
        resume: EngineState | None = None,
    ) -> Iterator[ReconstructedFrame]:
        """Like :meth:`StreamingReconstructor.run`: yields each final frame once, in order."""
        rec = self.rec
        cfg = rec.config
        done = rec.start_stream(resume)
        # A hook's own model calls (loop verification) come from the aligning thread while the
        # network thread predicts: one call at a time, so a model never runs re-entrantly.
        model_lock = threading.Lock()

        def side_model(images):
            with model_lock:
                return rec.model(images)

        rec.set_side_model(side_model)
        feeder = Feeder(
            lambda: rec._prepared(
                open_source(source, fps=fps, stride=stride, max_frames=max_frames)
            ),
            2 * cfg.window_size,
            lambda seconds: self._add("decode", seconds),
        )
        stop = feeder.stop  # one event stops both threads
        pred_q: queue.Queue = queue.Queue(maxsize=self.prefetch_windows)

        def predict() -> None:
            stream = None
            if self.model_device.type == "cuda":
                stream = torch.cuda.Stream(device=self.model_device)
            try:
                for window in schedule_windows(iter(feeder), cfg.window_size, cfg.overlap):
                    if stop.is_set():
                        return
                    if window.index < done:  # finalised before the interruption
                        continue
                    t = time.perf_counter()
                    if stream is not None:
                        with torch.cuda.stream(stream), model_lock:
                            pred = rec.predict(window)
                        # The caller's thread reads and frees these on its own stream.
                        stream.synchronize()
                        pred.record_stream(self.align_stream)
                    else:
                        with model_lock:
                            pred = rec.predict(window)
                    self._add("predict", time.perf_counter() - t)
                    if not put_until(pred_q, (window, pred), stop):
                        return
                put_until(pred_q, END, stop)
            except BaseException as exc:
                put_until(pred_q, Failure(exc), stop)

        predictor = threading.Thread(target=predict, name="laser-predict", daemon=True)
        feeder.start()
        predictor.start()
        calls = SinkCaller(
            rec,
            sinks,
            self.sink_thread,
            lambda seconds: self._add("sinks", seconds),
            8 * cfg.window_size,
        )
        ok = False
        old_interval = sys.getswitchinterval()
        if self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        try:
            while True:
                t = time.perf_counter()
                item = pred_q.get()  # the predictor always ends with END or a Failure
                self._add("wait_predict", time.perf_counter() - t)
                if item is END:
                    break
                if isinstance(item, Failure):
                    raise item.exc
                window, pred = item
                t = time.perf_counter()
                with torch.cuda.stream(self.align_stream):  # a no-op for None
                    finals, stats = rec.align(window, pred)
                self._add("align", time.perf_counter() - t)
                yield from calls.window(finals, stats)
            yield from calls.held()  # "later" mode: the last window's overlap frames
            calls.finish()  # the last frames' sink calls must succeed too
            ok = True
        except BaseException as exc:
            calls.interrupt(exc)
            raise
        finally:
            sys.setswitchinterval(old_interval)
            feeder.close()
            predictor.join(timeout=30)
            rec.set_side_model(None)
            calls.close(ok)

    def reconstruct(self, source, sinks: Sequence = (), **kw) -> list[ReconstructedFrame]:
        """Run to completion and return all frames (for short streams; ``run`` streams)."""
        return list(self.run(source, sinks, **kw))
