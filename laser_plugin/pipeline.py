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

import torch

from laser_plugin.engine import StreamingReconstructor
from laser_plugin.sources import open_source
from laser_plugin.types import ReconstructedFrame
from laser_plugin.windows import schedule_windows

_END = object()


class _Failure:
    """An exception raised in a worker thread, carried to the caller's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


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
        many small GPU calls (π³ on an H100: 102 new fps at 0.5 ms against 72-95 at 5 ms)."""
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
    ) -> Iterator[ReconstructedFrame]:
        """Like :meth:`StreamingReconstructor.run`: yields each final frame once, in order."""
        rec = self.rec
        cfg = rec.config
        rec.start_stream()
        stop = threading.Event()
        frames_q: queue.Queue = queue.Queue(maxsize=2 * cfg.window_size)
        pred_q: queue.Queue = queue.Queue(maxsize=self.prefetch_windows)
        sink_q: queue.Queue = queue.Queue(maxsize=8 * cfg.window_size)
        live = list(sinks)

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def decode() -> None:
            try:
                src = open_source(source, fps=fps, stride=stride, max_frames=max_frames)
                it = rec._prepared(src)
                while True:
                    t = time.perf_counter()
                    item = next(it, _END)
                    self._add("decode", time.perf_counter() - t)
                    if item is _END or not put(frames_q, item):
                        break
                put(frames_q, _END)
            except BaseException as exc:
                put(frames_q, _Failure(exc))

        def frames_from_queue() -> Iterator:
            while not stop.is_set():
                try:
                    item = frames_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item

        def predict() -> None:
            stream = None
            if self.model_device.type == "cuda":
                stream = torch.cuda.Stream(device=self.model_device)
            try:
                for window in schedule_windows(frames_from_queue(), cfg.window_size, cfg.overlap):
                    if stop.is_set():
                        return
                    t = time.perf_counter()
                    if stream is not None:
                        with torch.cuda.stream(stream):
                            pred = rec.predict(window)
                        # The caller's thread reads and frees these on its own stream.
                        stream.synchronize()
                        pred.record_stream(self.align_stream)
                    else:
                        pred = rec.predict(window)
                    self._add("predict", time.perf_counter() - t)
                    if not put(pred_q, (window, pred)):
                        return
                put(pred_q, _END)
            except BaseException as exc:
                put(pred_q, _Failure(exc))

        sink_error: list[BaseException] = []  # an essential sink failed in the sink thread

        def deliver() -> None:
            nonlocal live
            while True:
                item = sink_q.get()
                if item is _END:
                    return
                if sink_error:
                    continue  # keep draining, so the caller never blocks on a full queue
                t = time.perf_counter()
                method, arg = item
                try:
                    live = rec._emit(live, method, arg)
                except BaseException as exc:  # e.g. the run writer on a full disk
                    sink_error.append(exc)
                self._add("sinks", time.perf_counter() - t)

        def emit(method: str, arg) -> None:
            nonlocal live
            if self.sink_thread:
                if sink_error:
                    raise sink_error[0]
                sink_q.put((method, arg))
            else:
                t = time.perf_counter()
                live = rec._emit(live, method, arg)
                self._add("sinks", time.perf_counter() - t)

        workers = [
            threading.Thread(target=decode, name="laser-decode", daemon=True),
            threading.Thread(target=predict, name="laser-predict", daemon=True),
        ]
        sink_worker = threading.Thread(target=deliver, name="laser-sinks", daemon=True)
        for w in workers:
            w.start()
        if self.sink_thread:
            sink_worker.start()
        ok = False
        old_interval = sys.getswitchinterval()
        if self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        try:
            while True:
                t = time.perf_counter()
                item = pred_q.get()  # the workers always end with _END or a _Failure
                self._add("wait_predict", time.perf_counter() - t)
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                window, pred = item
                t = time.perf_counter()
                if self.align_stream is not None:
                    with torch.cuda.stream(self.align_stream):
                        finals, stats = rec.align(window, pred)
                else:
                    finals, stats = rec.align(window, pred)
                self._add("align", time.perf_counter() - t)
                for frame in finals:
                    emit("on_frame", frame)
                    yield frame
                emit("on_window", stats)
            for frame in rec._held:  # "later" mode: the last window's overlap frames
                emit("on_frame", frame)
                yield frame
            rec.num_frames += len(rec._held)
            rec._held = []
            if self.sink_thread:  # the last frames' sink calls must succeed too
                sink_q.put(_END)
                sink_worker.join()
                if sink_error:
                    raise sink_error[0]
            ok = True
        except BaseException as exc:
            if self.sink_thread and sink_worker.is_alive():
                sink_q.put(_END)
                sink_worker.join()
            rec._emit(live, "on_interrupt", exc)
            raise
        finally:
            sys.setswitchinterval(old_interval)
            stop.set()
            for w in workers:
                w.join(timeout=30)
            if self.sink_thread and sink_worker.is_alive():
                sink_q.put(_END)
                sink_worker.join()
            # As the engine: every sink closes; an essential one failing fails a finished run.
            rec._end_stream(live, ok)

    def reconstruct(self, source, sinks: Sequence = (), **kw) -> list[ReconstructedFrame]:
        """Run to completion and return all frames (for short streams; ``run`` streams)."""
        return list(self.run(source, sinks, **kw))
