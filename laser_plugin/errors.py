"""Exceptions with messages meant for users: the CLI prints them as one line and exits non-zero."""


class LaserError(Exception):
    """Base class: a problem the user can fix (bad input, config, weights or output path)."""


class InputError(LaserError):
    """The input stream cannot be read."""


class ConfigError(LaserError, ValueError):
    """An invalid setting."""


class WeightsError(LaserError):
    """A checkpoint is missing, truncated, unsafe or of the wrong model."""


class OutputError(LaserError):
    """The output directory cannot be written."""
