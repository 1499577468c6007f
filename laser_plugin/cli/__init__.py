"""The ``laser`` command line."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``laser`` script (imports the commands only when called)."""
    from laser_plugin.cli.main import main as _main

    return _main(argv)


__all__ = ["main"]
