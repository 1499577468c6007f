"""``laser view RUN_DIR --rerun SPEC | --viser``: show a finished (or interrupted) run again."""

from __future__ import annotations

from dataclasses import dataclass

from tyro.conf import Positional

from laser_plugin.errors import ConfigError, OutputError


@dataclass
class View:
    """Replay a run directory written by ``laser run`` / ``laser demo`` into Rerun or viser."""

    run_dir: Positional[str]
    """Run directory (holds summary.json and frames.jsonl)."""
    rerun: str | None = None
    """Replay into Rerun: spawn | save:PATH | serve | connect[:URL]."""
    viser: bool = False
    """Serve the run in a viser viewer (blocks until Ctrl-C)."""
    host: str = "127.0.0.1"
    """viser: address to listen on (0.0.0.0 for other machines)."""
    port: int = 8080
    """viser: port to listen on."""

    def main(self) -> int:
        if self.rerun is None and not self.viser:
            raise ConfigError(
                "choose a viewer: --rerun spawn|save:PATH|serve|connect[:URL], or --viser"
            )
        if self.rerun is not None:
            from laser_plugin.integrations.rerun import parse_rerun_spec

            target = parse_rerun_spec(self.rerun)  # bad values fail before any work
        from laser_plugin.io.run_dir import load_run

        load_run(self.run_dir)  # a damaged run in one line, before any viewer starts
        if self.rerun is not None:
            from laser_plugin.integrations.rerun import replay
            from laser_plugin.integrations.rerun.config import RerunConfig

            config = RerunConfig()
            check_rerun_target(target)
            sink = replay(self.run_dir, target, config)
            if target.mode == "spawn":
                # The viewer may still fail after it started (no GPU, a broken driver).
                _require_listener(f"127.0.0.1:{config.spawn_port}", "spawn")
            if target.mode == "save":
                print(f"wrote {sink.url}")
            if target.mode == "serve" and not self.viser:
                _serve_until_interrupted(sink.url)
                sink.shutdown()
        if self.viser:
            from laser_plugin.integrations.viser import replay as viser_replay

            viser_replay(self.run_dir, self.host, self.port)
        return 0


PROBE_TIMEOUT_S = 3.0


def check_rerun_target(target) -> None:
    """Refuse, in one line and before any work, a Rerun target that can show nothing: ``spawn``
    without a display, ``connect`` with nothing listening (``laser view`` and ``laser run``)."""
    if target.mode == "connect":
        _require_listener(target.path_or_url, "connect")
    elif target.mode == "spawn":
        _require_display()


def _require_display() -> None:
    """``spawn`` opens a window: on Linux without a display it cannot, and the viewer exits at
    once while the replay waits for it. Refuse up front, in one line."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    if any(os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET")):
        return
    raise OutputError(
        "nothing was shown: --rerun spawn opens a viewer window, but there is no display "
        "(DISPLAY and WAYLAND_DISPLAY are unset); use --rerun save:run.rrd and open the file "
        "where there is a screen, or --rerun serve and connect to it"
    )


def _require_listener(url: str | None, mode: str) -> None:
    """Refuse (one line, within :data:`PROBE_TIMEOUT_S`) when no viewer listens at ``url``
    (a Rerun gRPC URL, or HOST:PORT): otherwise the replay would stream into nothing and exit 0."""
    import socket
    from urllib.parse import urlsplit

    from laser_plugin.integrations.rerun.sink import DEFAULT_CONNECT_URL

    url = url or DEFAULT_CONNECT_URL
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return  # not a URL we can read: leave it to the Rerun SDK
    if not host:
        return
    if port is None:
        port = 443 if parts.scheme.endswith("https") else 80
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    if mode == "spawn":
        raise OutputError(
            f"nothing was shown: the spawned Rerun viewer is not running (nothing listens on "
            f"port {port}: {why}); use --rerun save:run.rrd, or run `rerun` yourself and "
            "--rerun connect"
        )
    raise OutputError(
        f"nothing was shown: no Rerun viewer listens at {url} ({why}); start one with "
        "`rerun`, or use --rerun spawn or --rerun save:run.rrd"
    )


def _serve_until_interrupted(url: str | None) -> None:
    """A served recording lives as long as this process: wait for Ctrl-C."""
    import time

    print(f"serving the recording at {url}; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
