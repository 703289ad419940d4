"""What every command shares: the error boundary and option parsing helpers."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import RobauditError, UsageError

err_console = Console(stderr=True, highlight=False)

# Width when the output is not a terminal (CI logs, pipes): Rich's default of 80 columns truncates
# the tables' headers and numbers; $COLUMNS still wins.
PIPE_WIDTH = 120


def make_console(stderr: bool = False) -> Console:
    """The console every command prints through: a terminal's own width, 120 columns in a pipe."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


@contextmanager
def error_boundary(debug: bool) -> Iterator[None]:
    """Turn library errors into one line on stderr plus the documented exit code.

    0 ok · 1 gate failed · 2 usage · 3 input · 4 runtime. ``--debug`` (or ROBAUDIT_DEBUG=1)
    re-raises so the traceback shows.
    """
    debug = debug or os.environ.get("ROBAUDIT_DEBUG") == "1"
    try:
        yield
    except typer.Exit:
        raise
    except RobauditError as exc:
        if debug:
            raise
        if getattr(exc, "reported_elsewhere", False):  # a torchrun rank whose error rank 0 prints
            raise typer.Exit(exc.exit_code) from None
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - an internal error still gets one line and exit 4
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}: {escape(first)} (rerun with --debug for the traceback)",
            soft_wrap=True,
        )
        raise typer.Exit(4) from None


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--input-shape must be C,H,W (e.g. 3,32,32), got {text!r}")
    return shape  # type: ignore[return-value]


def command_line() -> str:
    import shlex

    return shlex.join(["robaudit", *sys.argv[1:]])
