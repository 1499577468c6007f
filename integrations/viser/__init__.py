"""viser integration: a live web viewer of the streaming reconstruction, and run replay.

``make_viser_sink`` gives an engine sink; ``replay`` shows a finished run directory. Both
import viser only when called, and work with viser 0.2.7 (nerfstudio's pin) and 1.1.x.
"""

from __future__ import annotations

import os
from typing import Any

from laser_plugin.integrations.viser.config import ViserConfig as ViserConfig
from laser_plugin.integrations.viser.sink import ViserSink as ViserSink


def make_viser_sink(host: str = "127.0.0.1", port: int = 8080, **kw: Any) -> ViserSink:
    """A :class:`ViserSink` serving on ``host:port``; ``kw`` are :class:`ViserConfig` fields."""
    return ViserSink(ViserConfig(host=host, port=port, **kw))


def replay(
    run_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    block: bool = True,
    **kw: Any,
) -> ViserSink:
    """Show a finished (or still running) run directory in the viewer.

    Frames are fed in order, so the pause button and the frame scrubber behave as live. With
    ``block`` (the ``laser view`` command) it serves until Ctrl-C; otherwise it returns the
    sink, still serving (call ``stop()``).
    """
    from laser_plugin.io.run_dir import load_run

    run = load_run(run_dir)
    sink = make_viser_sink(host, port, **kw)
    try:
        for i in range(len(run.frames)):
            sink.on_frame(run.load_frame(i))
        sink.close()
    except BaseException:
        sink.stop()
        raise
    if block:
        sink.serve_forever()
    return sink


__all__ = ["ViserConfig", "ViserSink", "make_viser_sink", "replay"]
