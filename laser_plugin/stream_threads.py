"""The run loop's threads: a feeder that decodes ahead into a bounded queue (the pipelined and
worker predictors, :mod:`laser_plugin.predictors`), and a sink caller that hands the frames to the
sinks in stream order, inline or from its own thread (every run). A failure in a thread reaches
the caller; an essential sink's failure stops the stream at the next window; every sink is closed
at the end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from laser_plugin.types import ReconstructedFrame, WindowStats

if TYPE_CHECKING:
    from laser_plugin.engine import StreamingReconstructor

END = object()
"""The last item a feeder's queue carries."""


class Failure:
    """An exception raised in a thread, carried to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def put_until(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into a bounded queue unless ``stop`` is set first (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class Feeder:
    """Runs ``produce()`` (an iterator factory) on a thread of its own, ``maxsize`` items ahead of
    the consumer. Iterating yields the items and raises the thread's failure; ``timed(seconds)``
    is told how long each item took to produce."""

    def __init__(
        self,
        produce: Callable[[], Iterator],
        maxsize: int,
        timed: Callable[[float], None] | None = None,
        name: str = "laser-decode",
    ) -> None:
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.timed = timed
        self._produce = produce
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Feeder:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            items = self._produce()
            while not self.stop.is_set():
                t = time.perf_counter()
                item = next(items, END)
                if self.timed is not None:
                    self.timed(time.perf_counter() - t)
                if item is END or not put_until(self.queue, item, self.stop):
                    break
            put_until(self.queue, END, self.stop)
        except BaseException as exc:
            put_until(self.queue, Failure(exc), self.stop)

    def __iter__(self) -> Iterator:
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is END:
                return
            if isinstance(item, Failure):
                raise item.exc
            yield item

    def close(self, timeout: float = 30.0) -> None:
        """Stop producing (the thread ends within its current item) and wait for it."""
        self.stop.set()
        self.thread.join(timeout=timeout)


class SinkCaller:
    """Calls a runner's sinks in stream order: inline (the engine's own ``run``), or
    (``threaded``) from a thread of its own, off the aligning thread's path. Threaded, the sinks see the engine state of a later window,
    and an essential sink's failure stops the stream at the next window.

    The frames pass through :meth:`window` and :meth:`held` (which yield them to the caller),
    then :meth:`finish` on success or :meth:`interrupt` on a failure, and :meth:`close` always.
    """

    def __init__(
        self,
        rec: StreamingReconstructor,
        sinks: Sequence,
        threaded: bool = False,
        timed: Callable[[float], None] | None = None,
        maxsize: int = 0,
    ) -> None:
        self.rec = rec
        self.live = list(sinks)
        self.threaded = threaded
        self.timed = timed
        self.errors: list[BaseException] = []
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.thread = None
        if threaded:
            self.thread = threading.Thread(target=self._run, name="laser-sinks", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is END:
                return
            if item[0] == "_drained":  # drain()'s marker: every earlier call is made
                item[1].set()
                continue
            if self.errors:
                continue  # keep draining, so the caller never blocks on a full queue
            t = time.perf_counter()
            try:
                self.live = self.rec._emit(self.live, *item)
            except BaseException as exc:  # an essential sink failed (e.g. the run writer)
                self.errors.append(exc)
            self._timed(t)

    def _raise_failure(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _call(self, method: str, arg: Any) -> None:
        if self.threaded:
            self.queue.put((method, arg))
            return
        t = time.perf_counter()
        self.live = self.rec._emit(self.live, method, arg)  # an essential sink's failure raises
        self._timed(t)

    def _timed(self, start: float) -> None:
        if self.timed is not None:
            self.timed(time.perf_counter() - start)

    def window(
        self, finals: list[ReconstructedFrame], stats: WindowStats
    ) -> Iterator[ReconstructedFrame]:
        """One aligned window: the disagreement check, then the earlier frames a hook corrected
        (``on_correction``), its frames and stats, and the stream state to a sink that saves it
        (``on_state``; captured here, in the aligning thread, so it is this window's state even
        when the sinks run in a thread of their own)."""
        self._raise_failure()
        self.rec.check_agreement(stats)
        if self.rec.has_corrections():
            # A hook may read the frames it corrects back from a sink's files (loop closure
            # from the run directory): every frame emitted so far must have reached the sinks.
            self.drain()
        for chunk in self.rec.take_corrections():
            self._call("on_correction", chunk)
        for frame in finals:
            self._call("on_frame", frame)
            yield frame
        self._call("on_window", stats)
        if any(getattr(s, "wants_state", False) and s.due() for s in self.live):
            from laser_plugin.resume import capture

            self._call("on_state", capture(self.rec))

    def drain(self) -> None:
        """Wait until the sinks' thread has made every call queued so far (inline: at once)."""
        if self.thread is None or not self.thread.is_alive():
            return
        done = threading.Event()
        self.queue.put(("_drained", done))
        while not done.wait(0.1):
            if not self.thread.is_alive():
                break
        self._raise_failure()

    def held(self) -> Iterator[ReconstructedFrame]:
        """At the end of a stream: the frames "later" mode held back for a next window."""
        self._raise_failure()
        for frame in self.rec.take_held():
            self._call("on_frame", frame)
            yield frame

    def finish(self) -> None:
        """Wait until the sinks have had every call; raise an essential sink's failure."""
        self._join()
        self._raise_failure()

    def interrupt(self, exc: BaseException) -> None:
        """The stream stopped early: the sinks get ``on_interrupt`` (after their queued calls)."""
        self._join()
        self.rec._emit(self.live, "on_interrupt", exc)

    def close(self, ok: bool) -> None:
        """Close every sink (the engine's rules: an essential one failing fails a finished run)."""
        self._join()
        self.rec._end_stream(self.live, ok, self.errors[0] if self.errors else None)

    def _join(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(END)
            self.thread.join()
