"""The ``laser`` command line."""

from laser_plugin.cli.main import main as main

__all__ = ["main"]
