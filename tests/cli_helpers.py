"""Shared by the CLI tests: the `laser` command run in-process."""

from __future__ import annotations

from laser_plugin.cli.main import main


def laser(capsys, *argv: str) -> tuple[int, str]:
    """`laser ARGV` in-process: (exit code, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err
