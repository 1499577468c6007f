"""Rerun integration: live logging (``RerunSink``), ``--rerun`` parsing and run replay.

Importing this package does not import ``rerun``; ``RerunSink`` and ``replay`` load it on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from laser_plugin.errors import ConfigError

from .config import RerunConfig as RerunConfig
from .spec import SPEC_HELP as SPEC_HELP
from .spec import RerunTarget as RerunTarget
from .spec import parse_rerun_spec as parse_rerun_spec

if TYPE_CHECKING:
    from .playback import replay as replay
    from .sink import RerunSink as RerunSink

__all__ = [
    "SPEC_HELP",
    "RerunConfig",
    "RerunSink",
    "RerunTarget",
    "make_rerun_sink",
    "parse_rerun_spec",
    "replay",
]


def _require_rerun() -> None:
    try:
        import rerun  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Rerun output needs the rerun-sdk package: pip install 'laser-plugin[rerun]'"
        ) from None


def make_rerun_sink(spec: str | Sequence[str], config: RerunConfig | None = None) -> RerunSink:
    """The sink for a ``--rerun`` value: ``spawn``, ``save:PATH`` (or ``save PATH``), ``serve``,
    ``connect[:URL]``. Bad values raise :class:`ConfigError` with a one-line message."""
    target = parse_rerun_spec(spec)
    _require_rerun()
    from .sink import RerunSink

    return RerunSink(target.mode, target.path_or_url, config)


def __getattr__(name: str) -> Any:
    if name == "RerunSink":
        _require_rerun()
        from .sink import RerunSink

        return RerunSink
    if name == "replay":
        _require_rerun()
        from .playback import replay

        return replay
    raise AttributeError(name)
