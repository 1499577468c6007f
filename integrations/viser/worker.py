"""A pausable, ordered hand-off from a producer thread to one consumer thread.

The producer (the engine) calls :meth:`PausableWorker.put`; one thread handles the items in
order and calls ``tick`` every ``interval`` seconds. While paused, both sides wait: ``put``
callers go through :meth:`wait_if_paused` first, and the consumer holds back what is already
queued, so nothing new happens until :meth:`resume`. The queue is bounded, so a consumer that
falls behind slows the producer instead of growing memory. An exception in ``handle`` is kept
and re-raised to the producer by :meth:`raise_error`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class PausableWorker:
    """One consumer thread behind a bounded queue, with pause/resume and stop."""

    def __init__(
        self,
        handle: Callable[[str, Any], None],
        tick: Callable[[], None],
        interval: float,
        max_queue: int,
        name: str = "worker",
    ) -> None:
        self._handle = handle
        self._tick = tick
        self._interval = max(interval, 0.02)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max_queue)
        self._pending = 0  # put but not yet handled
        self._pending_lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        self.stopped = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; True when work may go on (resumed or stopped), False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Short waits in a loop: Ctrl-C stays responsive and stop() always releases us.
        while not self._resume.wait(0.2):
            if self.stopped.is_set():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def put(self, kind: str, item: Any) -> None:
        """Queue an item (blocks while the queue is full); dropped once stopped."""
        with self._pending_lock:
            self._pending += 1
        while not self.stopped.is_set():
            try:
                self._inbox.put((kind, item), timeout=0.2)
                return
            except queue.Full:
                continue
        with self._pending_lock:
            self._pending -= 1

    def drain(self) -> None:
        """Wait until everything queued has been handled (or the worker stopped)."""
        while self._pending and not self.stopped.is_set():
            time.sleep(0.005)

    def raise_error(self, what: str) -> None:
        """Re-raise a failure of ``handle`` in the caller's thread."""
        if self.error is not None:
            raise RuntimeError(f"{what} failed: {self.error}") from self.error

    def stop(self) -> None:
        """Stop the thread; anyone waiting in ``put`` or ``wait_if_paused`` is released."""
        self.stopped.set()
        self._resume.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        next_tick = time.monotonic() + self._interval
        while not self.stopped.is_set():
            timeout = min(max(next_tick - time.monotonic(), 0.0), 0.2)
            try:
                kind, item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                kind = None
            if kind is not None:
                try:
                    while not self._resume.wait(0.2) and not self.stopped.is_set():
                        pass
                    if not self.stopped.is_set():
                        self._handle(kind, item)
                except Exception as exc:  # reported to the producer at its next call
                    self.error = self.error or exc
                finally:
                    with self._pending_lock:
                        self._pending -= 1
            if time.monotonic() >= next_tick:
                try:
                    self._tick()
                except Exception as exc:
                    self.error = self.error or exc
                next_tick = time.monotonic() + self._interval
