"""Entry point of the ``laser`` command: a tyro app with one subcommand per module."""

from __future__ import annotations

import sys
from typing import Annotated, Union

import tyro

from laser_plugin.cli.batch import Batch
from laser_plugin.cli.eval import Eval
from laser_plugin.cli.export import Export
from laser_plugin.cli.run import Demo, Run
from laser_plugin.cli.view import View
from laser_plugin.errors import LaserError

# name -> dataclass with a ``main()`` method. Each subcommand lives in its own module and imports
# heavy or optional packages (integrations, nerfstudio, ray) inside ``main()`` only.
COMMANDS: dict[str, type] = {
    "demo": Demo,
    "run": Run,
    "export": Export,
    "eval": Eval,
    "view": View,
    "batch": Batch,
}


def _command_union():
    items = tuple(Annotated[cls, tyro.conf.subcommand(name=name)] for name, cls in COMMANDS.items())
    return Union[items]  # noqa: UP007 - tyro needs a runtime Union of the annotated types


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; user errors become one line and exit 2."""
    try:
        command = tyro.cli(_command_union(), args=argv)
        result = command.main()
    except LaserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: partial results were kept", file=sys.stderr)
        raise SystemExit(130) from None
    except (MemoryError, RuntimeError) as exc:
        # torch.cuda.OutOfMemoryError is a RuntimeError; matched by name so no torch import here.
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        print(
            f"error: out of memory ({_one_line(exc, first_only=True)}): try a smaller --window-size or another --device;"
            " the frames finalised so far were kept",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return int(result or 0)


def _one_line(exc: BaseException, first_only: bool = False) -> str:
    """The message on one line (a multi-line message would read as several errors)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if first_only else " ".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
