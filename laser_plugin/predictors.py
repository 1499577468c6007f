"""Where a window's network call runs: the prediction strategies of the one run loop.

:meth:`StreamingReconstructor.run <laser_plugin.engine.StreamingReconstructor.run>` is the only
run loop: source -> windows -> **predictor** -> align (stream order) -> hooks -> sinks. A
predictor only decides where and when :meth:`~laser_plugin.engine.StreamingReconstructor.predict`
runs. The loop submits up to ``max_pending`` windows ahead of the alignment and takes their
predictions back in stream order, so resume, hooks (loop closure), sinks and warnings behave the
same whatever the predictor, and alignment sees the same predictions in the same order: the frames
are those of the inline run (bit for bit where the numerics are the same, e.g. every predictor on
the CPU: ``tests/test_feature_matrix.py``).

- :class:`Inline`: predict when the loop asks; nothing runs concurrently (the default).
- :class:`Pipelined`: decode on a thread, the network on another (its own CUDA stream), sinks on a
  third, alignment on a high-priority stream.
- :class:`Replicas`: one model per device, each window to whichever replica is free.
- :class:`Workers`: the network (and, optionally, window preparation) in worker processes
  (:class:`~laser_plugin.worker.WorkerPool`); this process decodes, aligns and writes.

A hook's own model calls (loop verification) go through the predictor too
(:meth:`~laser_plugin.engine.StreamingReconstructor.side_model_call`), so a model never runs two
calls at once.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from laser_plugin.errors import ConfigError
from laser_plugin.sources import SourceFrame
from laser_plugin.stream_threads import Feeder
from laser_plugin.types import ReconstructionModel, WindowPrediction
from laser_plugin.windows import Window

if TYPE_CHECKING:
    from laser_plugin.engine import StreamingReconstructor
    from laser_plugin.worker import WorkerPool


class Predictor:
    """Inline prediction, and the interface every strategy fills in (see module doc).

    The run loop calls :meth:`open`, then :meth:`frames` once, :meth:`submit` for each window
    (at most ``max_pending`` ahead of the alignment), :meth:`result` for each in stream order,
    and :meth:`close` always (with the windows submitted but not taken back).
    """

    max_pending: int = 1
    """Windows submitted and not yet aligned, at most (bounds memory)."""
    sink_thread: bool = False
    """Call the sinks from a thread of their own (they then see the engine state of a later
    window: a state-saving sink captures its state in the aligning thread, see SinkCaller)."""
    switch_interval: float | None = None
    """The interpreter's thread switch interval while streaming (None: Python's 5 ms)."""
    timed_stages: bool = False
    """Record the loop's stages (dispatch, wait_predict, align, sinks) in the timings."""
    align_stream: Any = None
    """The CUDA stream alignment runs on (None: the current one)."""
    engine: StreamingReconstructor
    """The engine of the current stream (set by :meth:`open`)."""

    def __init__(self, timings: dict[str, float] | None = None) -> None:
        """``timings``: where stage times go (default: the engine's ``timings``)."""
        self.own_timings = timings
        self.max_buffered = 0
        """Most windows submitted and not yet aligned at once (<= max_pending)."""
        self._waiting: deque[Window] = deque()

    @property
    def timings(self) -> dict[str, float]:
        if self.own_timings is not None:
            return self.own_timings
        engine = getattr(self, "engine", None)
        return engine.timings if engine is not None else {}

    def add(self, name: str, seconds: float) -> None:
        timings = self.timings
        timings[name] = timings.get(name, 0.0) + seconds

    def open(self, engine: StreamingReconstructor) -> None:
        """A stream starts (after the engine's state was reset or restored)."""
        self.engine = engine

    def frames(self, open_frames: Callable[[], Iterator[SourceFrame]]) -> Iterator:
        """The window items (what ``schedule_windows`` groups) of the source ``open_frames()``."""
        return self.engine._prepared(open_frames())

    def submit(self, window: Window) -> None:
        self._waiting.append(window)

    def result(self, window: Window) -> tuple[Any, dict[str, float]]:
        """The prediction of ``window`` (the oldest submitted) and its times for WindowStats."""
        assert self._waiting.popleft() is window
        t0 = time.perf_counter()
        pred = self.engine.predict(window)
        times: dict[str, float] = {}
        self.engine._timed("model", t0, times)
        return pred, times

    def close(self, pending: Sequence[Window]) -> None:
        """The stream ended (or stopped early with ``pending`` windows not taken back)."""
        self._waiting.clear()


Inline = Predictor


class Pipelined(Predictor):
    """Decoding, the network and the sinks each on a thread of their own (see module doc)."""

    timed_stages = True

    def __init__(
        self,
        *,
        prefetch_windows: int = 1,
        sink_thread: bool = True,
        device: str | torch.device | None = None,
        align_priority: bool = True,
        switch_interval: float | None = 0.0005,
        timings: dict[str, float] | None = None,
    ) -> None:
        """``prefetch_windows``: predicted windows that may wait for alignment (memory bound;
        one more is being predicted). ``device``: where the model runs (default: the model's
        ``device`` attribute, else the CPU); a CUDA device gets a stream for the network.
        ``align_priority``: align on a high-priority CUDA stream. ``switch_interval``: shorter
        than Python's 5 ms, the network and alignment threads get the interpreter back sooner
        between their many small GPU calls (benchmarks/DECISIONS.md, "interpreter switch
        interval 0.5 ms instead of 5 ms")."""
        super().__init__(timings)
        if prefetch_windows < 1:
            raise ConfigError("prefetch_windows must be at least 1")
        self.prefetch_windows = prefetch_windows
        # The window being aligned's successor is being predicted, `prefetch_windows` more wait.
        self.max_pending = prefetch_windows + 2
        self.sink_thread = sink_thread
        self.switch_interval = switch_interval
        self.device = device
        self.align_priority = align_priority
        self._net_stream = None
        self._futures: deque[Future] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laser-predict")
        self._pool.shutdown()  # a new one per stream (open)
        self._feeder: Feeder | None = None
        self._lock = threading.Lock()

    def open(self, engine: StreamingReconstructor) -> None:
        super().open(engine)
        dev = self.device if self.device is not None else getattr(engine.model, "device", "cpu")
        model_device = torch.device(dev)
        self._net_stream = self.align_stream = None
        if model_device.type == "cuda":
            self._net_stream = torch.cuda.Stream(device=model_device)
            if self.align_priority and engine.device.type == "cuda":
                # Alignment is a chain of small kernels and host syncs: a high-priority stream
                # lets them run between the network's large kernels instead of behind them.
                self.align_stream = torch.cuda.Stream(device=engine.device, priority=-1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laser-predict")

        def side_model(images):  # a hook's call from the aligning thread: one call at a time
            with self._lock:
                return engine.model(images)

        engine.set_side_model(side_model)

    def frames(self, open_frames: Callable[[], Iterator[SourceFrame]]) -> Iterator:
        engine = self.engine
        self._feeder = Feeder(
            lambda: engine._prepared(open_frames()),
            2 * engine.config.window_size,
            lambda seconds: self.add("decode", seconds),
        ).start()
        return iter(self._feeder)

    def _predict(self, window: Window) -> tuple[WindowPrediction, float]:
        t = time.perf_counter()
        stream = self._net_stream
        if stream is not None:
            with torch.cuda.stream(stream), self._lock:
                pred = self.engine.predict(window)
            stream.synchronize()  # the aligning thread reads and frees these on its own stream
            pred.record_stream(self.align_stream)
        else:
            with self._lock:
                pred = self.engine.predict(window)
        seconds = time.perf_counter() - t
        self.add("predict", seconds)
        return pred, seconds

    def submit(self, window: Window) -> None:
        self._futures.append(self._pool.submit(self._predict, window))

    def result(self, window: Window) -> tuple[Any, dict[str, float]]:
        t = time.perf_counter()
        pred, seconds = self._futures.popleft().result()  # re-raises the network's exception
        self.add("wait_predict", time.perf_counter() - t)
        return pred, {"model": seconds}

    def close(self, pending: Sequence[Window]) -> None:
        for future in self._futures:
            future.cancel()
        self._futures.clear()
        if self._feeder is not None:
            self._feeder.close()
        self._pool.shutdown(wait=True, cancel_futures=True)  # no model call outlives the run
        self.engine.set_side_model(None)


class Replicas(Predictor):
    """One model replica per device; each window goes to whichever replica is free.

    The network's work on a window depends on nothing but its images, so windows may be predicted
    in any order on any device; the loop aligns them in stream order. Threads, not processes: the
    network spends its time in device kernels that release the GIL, and threads share the decoded
    frames without copies. On two H100s full-size π³ differed from one GPU by at most 5e-7 in
    poses (floating-point noise of the kernels; benchmarks/speed_multi_gpu.py).
    """

    timed_stages = True

    def __init__(
        self,
        models: Sequence[ReconstructionModel],
        *,
        max_pending: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        """``max_pending``: default two per replica, so every device has the next window queued
        while the previous one is aligned."""
        super().__init__(timings)
        self.replicas = list(models)
        if not self.replicas:
            raise ConfigError("Replicas needs at least one model replica")
        self.max_pending = max_pending if max_pending is not None else 2 * len(self.replicas)
        if self.max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, got {self.max_pending}")
        self.windows_per_replica = [0] * len(self.replicas)
        self.replica_streams = []
        for m in self.replicas:
            dev = torch.device(getattr(m, "device", "cpu"))
            self.replica_streams.append(
                torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
            )
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._futures: deque[Future] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laser-replica")
        self._pool.shutdown()  # a new one per stream (open)

    def open(self, engine: StreamingReconstructor) -> None:
        super().open(engine)
        if self.align_stream is None and engine.device.type == "cuda":
            # On the device it shares with a replica, alignment's small kernels then run
            # between the network's instead of queueing behind a whole window.
            self.align_stream = torch.cuda.Stream(device=engine.device, priority=-1)
        self._free = queue.SimpleQueue()
        for i in range(len(self.replicas)):
            self._free.put(i)
        self._pool = ThreadPoolExecutor(
            max_workers=len(self.replicas), thread_name_prefix="laser-replica"
        )
        engine.set_side_model(self._call_on_free)

    def _call_on_free(self, images: torch.Tensor) -> WindowPrediction:
        """A hook's own model call on the next free replica."""
        replica = self._free.get()
        try:
            model = self.replicas[replica]
            with torch.inference_mode():
                return model(images.to(torch.device(getattr(model, "device", "cpu"))))
        finally:
            self._free.put(replica)

    def _predict_on_free(self, window: Window) -> tuple[WindowPrediction, int, float]:
        """Take a free replica, predict ``window`` on it, give it back (in a pool thread)."""
        engine = self.engine
        replica = self._free.get()
        try:
            start = time.perf_counter()
            stream = self.replica_streams[replica]
            if stream is None:
                # Moved to the alignment device here: this thread waits for the replica's
                # kernels, not the aligning one, and the time below is the device's.
                pred = engine.predict(window, model=self.replicas[replica]).to(engine.device)
            else:
                with torch.cuda.stream(stream):
                    pred = engine.predict(window, model=self.replicas[replica]).to(engine.device)
                stream.synchronize()
                pred.record_stream(self.align_stream)  # read and freed on the align stream
            return pred, replica, time.perf_counter() - start
        finally:
            self._free.put(replica)

    def submit(self, window: Window) -> None:
        self._futures.append(self._pool.submit(self._predict_on_free, window))

    def result(self, window: Window) -> tuple[Any, dict[str, float]]:
        t = time.perf_counter()
        pred, replica, seconds = self._futures.popleft().result()  # re-raises
        self.add("wait_predict", time.perf_counter() - t)
        self.windows_per_replica[replica] += 1
        self.add("model", seconds)
        return pred, {"model": seconds}

    def close(self, pending: Sequence[Window]) -> None:
        # Windows not started are dropped; one already on a device finishes in the background.
        for future in self._futures:
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.set_side_model(None)

    def device_names(self) -> list[str]:
        return [str(getattr(m, "device", f"replica {i}")) for i, m in enumerate(self.replicas)]


@dataclass
class WorkerFrame:
    """A frame waiting in a window for the workers (what ``align`` reads of the engine's items,
    plus the decoded frame the worker resizes); ``image`` arrives with the window's prediction."""

    index: int
    timestamp: float
    frame: np.ndarray  # (H0, W0, 3) uint8, as decoded
    source: np.ndarray | None
    image: np.ndarray | None = None  # (H, W, 3) uint8, model size
    tensor: None = None


class Workers(Predictor):
    """The network in worker processes, one per device (:class:`~laser_plugin.worker.WorkerPool`).

    This process decodes (a thread), copies each window's uint8 frames into a shared slot, and
    aligns the predictions in stream order. Resizing, normalising and the network run in the
    workers, so the network does not share this interpreter's GIL with alignment, decoding and
    the sinks. With ``WorkerPool(in_process_first=True)`` the first device's network is a thread
    of this process, sharing one CUDA context with the alignment.

    ``prepare``: which workers also prepare their windows (sanitise, rank, segment:
    :mod:`laser_plugin.prepare`): "all", "processes" (the default: every worker but an in-process
    first one, whose GPU also runs the alignment) or "none". Workers prepare between windows
    (preparing during the next window's network was measured slower and removed:
    benchmarks/DECISIONS.md, "workers prepare concurrently with the next network").
    """

    timed_stages = True

    def __init__(
        self,
        pool: WorkerPool,
        *,
        max_pending: int | None = None,
        sink_thread: bool = True,
        align_priority: bool = True,
        switch_interval: float | None = 0.0005,
        prepare: str = "processes",
        timings: dict[str, float] | None = None,
    ) -> None:
        super().__init__(timings)
        self.pool = pool
        self.max_pending = max_pending if max_pending is not None else 2 * len(pool.devices)
        if self.max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, got {self.max_pending}")
        if prepare not in ("all", "processes", "none"):
            raise ConfigError(f"prepare must be all, processes or none, got {prepare!r}")
        self.prepare = prepare
        self.sink_thread = sink_thread
        self.align_priority = align_priority
        self.switch_interval = switch_interval
        self._stream_id = 0
        self._feeder: Feeder | None = None

    def open(self, engine: StreamingReconstructor) -> None:
        super().open(engine)
        self.pool.start()
        n = len(self.pool.devices)
        ranks = {
            "all": list(range(n)),
            "processes": [r for r in range(n) if r > 0 or not self.pool.in_process_first],
            "none": [],
        }[self.prepare]
        from laser_plugin.prepare import prepare_window

        fn = functools.partial(prepare_window, config=engine.config) if ranks else None
        self.pool.set_prepare(fn, ranks)
        self._stream_id += 1  # the workers' frame cache is keyed by (stream, frame)
        if self.align_stream is None and self.align_priority and engine.device.type == "cuda":
            self.align_stream = torch.cuda.Stream(device=engine.device, priority=-1)

    def frames(self, open_frames: Callable[[], Iterator[SourceFrame]]) -> Iterator:
        keep = self.engine.keep_source_images

        def decoded() -> Iterator[WorkerFrame]:
            for i, f in enumerate(open_frames()):
                yield WorkerFrame(i, f.timestamp, f.image, f.image if keep else None)

        self._feeder = Feeder(
            decoded, 2 * self.engine.config.window_size, lambda s: self.add("decode", s)
        ).start()
        return self._sized(iter(self._feeder))

    def _sized(self, frames: Iterator[WorkerFrame]) -> Iterator[WorkerFrame]:
        """Fix the model size at the first frame (as the engine's ``_prepared``)."""
        engine = self.engine
        for f in frames:
            h0, w0 = f.frame.shape[:2]
            first = engine.stream.model_size is None
            engine.fix_size(f.index, h0, w0, self.pool.input_size)
            if first:
                self.pool.ensure_slots(self.max_pending, engine.config.window_size, h0, w0)
            yield f

    def submit(self, window: Window) -> None:
        keys = [(self._stream_id, it.index) for it in window.items]
        frames = [it.frame for it in window.items]
        size = self.engine.stream.model_size
        assert size is not None  # fixed by the window's first frame (_sized)
        self.pool.submit(window.index, frames, size, keys)

    def result(self, window: Window) -> tuple[Any, dict[str, float]]:
        from laser_plugin.worker import WorkerError, from_payload

        t = time.perf_counter()
        payload = self.pool.result(window.index)
        self.add("wait_predict", time.perf_counter() - t)
        self.add("model", payload["seconds"])
        if "prepare_seconds" in payload:
            self.add("worker_prepare", payload["prepare_seconds"])
        images = payload["images"].numpy()
        for j, it in enumerate(window.items):
            if it.image is None:
                it.image = images[j]
        # Called on the align stream: packed tensors from another device cross in one copy.
        pred = from_payload(payload, self.engine.device)
        if pred.depth.shape[0] != len(window.items):
            raise WorkerError(
                f"a worker returned {pred.depth.shape[0]} frames for window "
                f"{window.index} of {len(window.items)}"
            )
        if payload["local"]:  # made on the in-process worker's stream, freed on ours
            s = self.align_stream
            pred.record_stream(s if s is not None and s.device == pred.depth.device else None)
        return pred, {"model": payload["seconds"]}

    def close(self, pending: Sequence[Window]) -> None:
        if self._feeder is not None:
            self._feeder.stop.set()
        # Predictions still in flight are collected (and dropped) so the workers stay usable.
        for window in pending:
            try:
                self.pool.result(window.index, timeout=600)
            except Exception:
                continue
        if self._feeder is not None:
            self._feeder.close()


__all__ = ["Inline", "Pipelined", "Predictor", "Replicas", "WorkerFrame", "Workers"]
