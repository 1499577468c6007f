"""``laser view RUN_DIR --rerun SPEC | --viser``: show a finished (or interrupted) run again."""

from __future__ import annotations

from dataclasses import dataclass

from tyro.conf import Positional

from laser_plugin.errors import ConfigError


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
            from laser_plugin.integrations.rerun import replay

            sink = replay(self.run_dir, target)
            if target.mode == "save":
                print(f"wrote {sink.url}")
            if target.mode == "serve" and not self.viser:
                _serve_until_interrupted(sink.url)
                sink.shutdown()
        if self.viser:
            from laser_plugin.integrations.viser import replay as viser_replay

            viser_replay(self.run_dir, self.host, self.port)
        return 0


def _serve_until_interrupted(url: str | None) -> None:
    """A served recording lives as long as this process: wait for Ctrl-C."""
    import time

    print(f"serving the recording at {url}; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
