"""One stream, the network in worker processes (one per device), alignment in this process.

:class:`ProcessReconstructor` is a :class:`StreamingReconstructor` whose network calls go to a
:class:`~laser_plugin.worker.WorkerPool`. This process only decodes frames (a thread), copies
each window's uint8 frames into a shared slot, aligns the predictions in stream order as they come
back (a bounded reorder buffer of ``max_pending`` windows, as in
:mod:`laser_plugin.multi_device`) and feeds the sinks (optionally from a thread). Resizing,
normalising and the network run in the workers, so the network no longer shares this
interpreter's GIL with alignment, decoding and the sinks, and N devices serve one stream. With
``WorkerPool(in_process_first=True)`` (what ``laser run --fast`` uses on GPUs) the first device's
network is a thread of this process instead, so it shares one CUDA context with the alignment.

The predictions and the order of alignment are those of a single-device run, so the frames are
the plain engine's: bit for bit with CPU workers (tests/test_worker_*.py), up to floating-point
noise of the device's kernels on GPUs.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.errors import ConfigError
from laser_plugin.prepare import prepare_window
from laser_plugin.sources import open_source
from laser_plugin.stream_threads import Feeder, SinkCaller
from laser_plugin.types import ReconstructedFrame
from laser_plugin.windows import Window, schedule_windows
from laser_plugin.worker import WorkerError, WorkerPool, from_payload

if TYPE_CHECKING:
    from laser_plugin.resume import EngineState


@dataclass
class _Frame:
    """A frame waiting in the window buffer (what ``align`` reads of the engine's items, plus the
    source frame for the worker); ``image`` arrives with the window's prediction."""

    index: int
    timestamp: float
    frame: np.ndarray  # (H0, W0, 3) uint8, as decoded
    source: np.ndarray | None
    image: np.ndarray | None = None  # (H, W, 3) uint8, model size
    tensor: None = None


class ProcessReconstructor(StreamingReconstructor):
    """LASER with the network in worker processes (see module doc).

    ``pool``: the workers (started on the first run if not yet). ``max_pending``: windows sent
    ahead of the alignment (default two per worker, so each has the next window queued).
    ``sink_thread``: call the sinks from a thread, off the alignment's path (sinks then see the
    engine state of a later window: keep it off when a sink reads the state, e.g. resume's saver).
    ``align_priority``: align on a high-priority CUDA stream. ``switch_interval``: this
    interpreter's thread switch interval while streaming (None keeps Python's).
    ``prepare``: which workers also prepare their windows (sanitise, rank, segment:
    :mod:`laser_plugin.prepare`) so this process only registers and layer-aligns them: "all",
    "processes" (the default: every worker but an in-process first one, whose GPU also runs this
    process's alignment) or "none". Workers prepare between windows (preparing during the next
    window's network was measured slower and removed: benchmarks/DECISIONS.md, "workers prepare
    concurrently with the next network").
    """

    def __init__(
        self,
        pool: WorkerPool,
        config: LaserConfig | None = None,
        *,
        keep_source_images: bool = True,
        input_size: tuple[int, int] | None = None,
        max_pending: int | None = None,
        sink_thread: bool = True,
        align_priority: bool = True,
        switch_interval: float | None = 0.0005,
        prepare: str = "processes",
        hooks: Sequence = (),
    ) -> None:
        super().__init__(
            pool,
            config,
            keep_source_images=keep_source_images,
            input_size=input_size,
            hooks=hooks,
        )
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
        self.max_buffered = 0
        """Most windows in flight or waiting for alignment at once (<= max_pending)."""
        self._stream_id = 0
        self._align_stream = None

    @property
    def windows_per_worker(self) -> list[int]:
        return list(self.pool.windows_per_worker)

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.close()

    def _set_prepare(self) -> None:
        n = len(self.pool.devices)
        ranks = {
            "all": list(range(n)),
            "processes": [r for r in range(n) if r > 0 or not self.pool.in_process_first],
            "none": [],
        }[self.prepare]
        fn = functools.partial(prepare_window, config=self.config) if ranks else None
        self.pool.set_prepare(fn, ranks)

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
        """As :meth:`StreamingReconstructor.run`, with the network in the worker processes."""
        cfg = self.config
        self.pool.start()
        self._set_prepare()
        done = self.start_stream(resume)
        self._stream_id += 1
        stream_id = self._stream_id
        if self._align_stream is None and self.align_priority and self.device.type == "cuda":
            # Alignment is a chain of small kernels and host syncs: a high-priority stream lets
            # them run between other work's kernels instead of queueing behind them.
            self._align_stream = torch.cuda.Stream(device=self.device, priority=-1)
        keep = self.keep_source_images

        def frames() -> Iterator[_Frame]:
            src = open_source(source, fps=fps, stride=stride, max_frames=max_frames)
            for i, f in enumerate(src):
                yield _Frame(i, f.timestamp, f.image, f.image if keep else None)

        feeder = Feeder(frames, 2 * cfg.window_size, lambda seconds: self._add("decode", seconds))
        feeder.start()
        calls = SinkCaller(
            self,
            sinks,
            self.sink_thread,
            lambda seconds: self._add("sinks", seconds),
            8 * cfg.window_size,
        )
        old_interval = sys.getswitchinterval()
        if self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        pending: deque[Window[_Frame]] = deque()
        ok = False
        try:
            windows = schedule_windows(self._sized(iter(feeder)), cfg.window_size, cfg.overlap)
            exhausted = False
            while True:
                t = time.perf_counter()
                while not exhausted and len(pending) < self.max_pending:
                    window = next(windows, None)
                    if window is None:
                        exhausted = True
                        break
                    if window.index < done:  # finalised before the interruption
                        continue
                    self._submit(window, stream_id)
                    pending.append(window)
                    self.max_buffered = max(self.max_buffered, len(pending))
                self._add("dispatch", time.perf_counter() - t)
                if not pending:
                    break
                window = pending.popleft()
                t = time.perf_counter()
                payload = self.pool.result(window.index)
                self._add("wait_predict", time.perf_counter() - t)
                self._add("model", payload["seconds"])
                images = payload["images"].numpy()
                for j, it in enumerate(window.items):
                    if it.image is None:
                        it.image = images[j]
                if "prepare_seconds" in payload:
                    self._add("worker_prepare", payload["prepare_seconds"])
                t = time.perf_counter()
                with torch.cuda.stream(self._align_stream):  # a no-op for None
                    # Packed tensors from another device cross in one copy, on the align stream.
                    pred = from_payload(payload, self.device)
                    if pred.depth.shape[0] != len(window.items):
                        raise WorkerError(
                            f"a worker returned {pred.depth.shape[0]} frames for window "
                            f"{window.index} of {len(window.items)}"
                        )
                    if payload["local"]:  # made on the in-process worker's stream, freed on ours
                        s = self._align_stream
                        pred.record_stream(
                            s if s is not None and s.device == pred.depth.device else None
                        )
                    finals, stats = self.align(window, pred, {"model": payload["seconds"]})
                del pred, payload
                self._add("align", time.perf_counter() - t)
                yield from calls.window(finals, stats)
            yield from calls.held()
            calls.finish()
            ok = True
        except BaseException as exc:
            calls.interrupt(exc)
            raise
        finally:
            sys.setswitchinterval(old_interval)
            feeder.stop.set()
            # Predictions still in flight are collected (and dropped) so the workers stay usable.
            for window in pending:
                try:
                    self.pool.result(window.index, timeout=600)
                except Exception:
                    continue
            feeder.close()
            calls.close(ok)

    def _sized(self, frames: Iterator[_Frame]) -> Iterator[_Frame]:
        """Fix the model size at the first frame (as ``StreamingReconstructor._prepared``)."""
        for f in frames:
            h0, w0 = f.frame.shape[:2]
            first = self.stream.model_size is None
            self.fix_size(f.index, h0, w0, self.pool.input_size)
            if first:
                self.pool.ensure_slots(self.max_pending, self.config.window_size, h0, w0)
            yield f

    def _submit(self, window: Window[_Frame], stream_id: int) -> None:
        keys = [(stream_id, it.index) for it in window.items]
        self.pool.submit(window.index, [it.frame for it in window.items], self._model_size, keys)
