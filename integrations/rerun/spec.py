"""Parse the ``--rerun`` option: where a run's recording goes (no rerun import here).

Accepted forms, the same for ``laser run`` and ``laser view``::

    spawn                 start a native viewer and stream to it
    save:PATH | save PATH write an .rrd recording to PATH
    serve                 host a gRPC server (plus the web viewer) that viewers connect to
    connect[:URL]         stream to a running viewer (default rerun+http://127.0.0.1:9876/proxy)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from laser_plugin.errors import ConfigError

RerunMode = Literal["spawn", "save", "serve", "connect"]
MODES: tuple[str, ...] = ("spawn", "save", "serve", "connect")
SPEC_HELP = "spawn | save:PATH | serve | connect[:URL]"


@dataclass(frozen=True)
class RerunTarget:
    """Where the recording goes."""

    mode: RerunMode
    """spawn a viewer, save an .rrd file, serve over gRPC, or connect to a running viewer."""
    path_or_url: str | None = None
    """The .rrd path for ``save`` (required), the gRPC URL for ``connect`` (optional)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown Rerun mode {self.mode!r}; use {SPEC_HELP}")
        if self.mode == "save" and not self.path_or_url:
            raise ConfigError("--rerun save needs a file path, e.g. --rerun save:run.rrd")
        if self.mode in ("spawn", "serve") and self.path_or_url:
            raise ConfigError(f"--rerun {self.mode} takes no argument (got {self.path_or_url!r})")


def parse_rerun_spec(spec: str | Sequence[str]) -> RerunTarget:
    """``"save:out.rrd"``, ``"save out.rrd"``, ``["save", "out.rrd"]``, ``"spawn"``, ... -> target.

    Only the first ``:`` or blank separates the mode, so Windows paths and URLs keep theirs.
    """
    if isinstance(spec, str):
        text = spec.strip()
    else:
        text = " ".join(str(s) for s in spec).strip()
    if not text:
        raise ConfigError(f"empty --rerun value; use {SPEC_HELP}")
    cut = [i for i in (text.find(":"), text.find(" ")) if i >= 0]
    if cut:
        i = min(cut)
        mode, arg = text[:i].strip().lower(), text[i + 1 :].strip()
    else:
        mode, arg = text.lower(), ""
    if mode not in MODES:
        raise ConfigError(f"unknown --rerun value {spec!r}; use {SPEC_HELP}")
    return RerunTarget(mode, arg or None)  # type: ignore[arg-type]
