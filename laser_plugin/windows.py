"""Window scheduling: consecutive windows of L frames sharing O frames, held in bounded memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Window(Generic[T]):
    index: int
    items: list[T]
    """All frames of the window, in stream order."""
    num_overlap: int
    """How many leading items were finalised by earlier windows."""

    @property
    def new_items(self) -> list[T]:
        return self.items[self.num_overlap :]


def schedule_windows(stream: Iterable[T], window_size: int, overlap: int) -> Iterator[Window[T]]:
    """Group a stream into windows of ``window_size`` with ``overlap`` shared frames.

    Only the last ``window_size`` items are held. A stream shorter than one window gives one
    window of all its frames. At the end, the frames after the last full window form a final
    window made of the last ``window_size`` frames, so the model still sees a full window and the
    overlap grows instead of the window shrinking.
    """
    if window_size < 1 or not 0 <= overlap < window_size:
        raise ValueError("need window_size >= 1 and 0 <= overlap < window_size")
    stride = window_size - overlap
    buf: deque[T] = deque(maxlen=window_size)
    pending = 0  # frames in buf not yet finalised
    k = 0
    for item in stream:
        buf.append(item)
        pending += 1
        need = window_size if k == 0 else stride
        if pending == need:
            yield Window(k, list(buf), len(buf) - pending)
            k += 1
            pending = 0
    if pending:
        yield Window(k, list(buf), len(buf) - pending)
