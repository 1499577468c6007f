"""Shared by the runner tests: a sink that records the calls it gets, in order."""

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
