"""The run writer's background machinery: encoder threads and one ordered committer.

Encoding a frame (JPEG, deflate) and writing its files takes several milliseconds of CPU per
frame; on the aligning thread it would cap the whole run. Pillow, zlib and file writes release the
GIL, so a few threads encode frames side by side. One committer thread then makes them part of
the run in stream order, a window at a time (see :class:`laser_plugin.io.run_dir.RunWriter`).

Memory stays flat: :class:`Slots` bounds the frames taken in but not yet committed, and the
caller blocks (back-pressure) when the bound is reached, instead of queueing without limit.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def default_threads() -> int:
    """Encoder threads: enough to keep up with ~150 frames/s at 518x294 (about 8 ms of encoding
    per frame), never more than the machine's cores."""
    return max(1, min(4, os.cpu_count() or 1))


class Slots:
    """A counting bound on frames in flight that an interrupt can wake (``threading.Semaphore``
    would do, but a waiter must also notice that the committer failed and is no longer freeing
    slots)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._cond = threading.Condition()
        self._broken = False

    def acquire(self) -> bool:
        """Take a slot (blocking); False once :meth:`break_` was called."""
        with self._cond:
            while self._free == 0 and not self._broken:
                # A timeout so Ctrl-C reaches the main thread promptly.
                self._cond.wait(0.1)
            if self._broken:
                return False
            self._free -= 1
            return True

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._free += n
            self._cond.notify_all()

    def break_(self) -> None:
        with self._cond:
            self._broken = True
            self._cond.notify_all()


class Committer:
    """One thread calling ``handle(item)`` for each item in the order they were put.

    The first exception ``handle`` raises is kept (:attr:`error`); later items are then passed to
    ``drop(item)`` instead, so resources they hold are released and :meth:`wait` never hangs.
    """

    def __init__(
        self,
        handle: Callable[[Any], None],
        drop: Callable[[Any], None],
        name: str,
        maxsize: int = 0,
    ) -> None:
        self._handle = handle
        self._drop = drop
        # Bounded (maxsize > 0): put() then waits, passing back-pressure to whoever feeds it.
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):  # a barrier: everything before it is handled
                item.set()
                continue
            if self.error is not None:
                self._drop(item)
                continue
            try:
                self._handle(item)
            except BaseException as exc:
                self.error = exc
                self._drop(item)

    def wait(self) -> None:
        """Return once every item put so far has been handled (or dropped)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(0.1):  # a timeout so Ctrl-C still reaches the main thread
            if not self._thread.is_alive():
                return

    def stop(self) -> None:
        """Handle what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def encoder_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="laser-encode")


__all__ = ["Committer", "Future", "Slots", "default_threads", "encoder_pool"]
