"""Shared by the runner tests: a sink that records the calls it gets, in order, and one that
stops the stream like a Ctrl-C."""

from __future__ import annotations


class Recorder:
    """Records ("frame", index), ("window", index), ("interrupt", exception name) in call order."""

    def __init__(self):
        self.calls = []
        self.closed = False

    def on_frame(self, frame):
        self.calls.append(("frame", frame.index))

    def on_window(self, stats):
        self.calls.append(("window", stats.window))

    def on_interrupt(self, exc):
        self.calls.append(("interrupt", type(exc).__name__))

    def close(self):
        self.closed = True


class StopAfter:
    """Ctrl-C after ``n`` windows (after the sinks before it had the n-th window)."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def on_window(self, stats):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt

    def close(self):
        pass
