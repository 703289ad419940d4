"""What every command shares: the error boundary and option parsing helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from ..console import PIPE_WIDTH, make_console, one_line, styled  # noqa: F401  (re-exported for the commands)
from ..errors import RobauditError, UsageError

# Errors and notes on stderr; like every console of robaudit's, it prints strings as text, not markup.
err_console = make_console(stderr=True, highlight=False)


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
        err_console.print(styled(("error:", "bold red"), " " + one_line(str(exc).strip())), soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - an internal error still gets one line and exit 4
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if _lost_peer(exc):
            err_console.print(
                styled(
                    ("error:", "bold red"),
                    f" another process of this torchrun run failed or was lost "
                    f"({type(exc).__name__}: {one_line(first)[:200]}); torchrun's summary names it",
                ),
                soft_wrap=True,
            )
            raise typer.Exit(4) from None
        err_console.print(
            styled(
                ("internal error:", "bold red"),
                f" {type(exc).__name__}: {one_line(first)} (rerun with --debug for the traceback)",
            ),
            soft_wrap=True,
        )
        raise typer.Exit(4) from None


def _lost_peer(exc: BaseException) -> bool:
    """A torch.distributed error (a peer's connection closed, a collective timed out, the store gone)."""
    dist = sys.modules.get("torch.distributed")
    error = getattr(dist, "DistError", None) if dist is not None else None
    return isinstance(error, type) and isinstance(exc, error)


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
    return shape


def command_line() -> str:
    import shlex

    return shlex.join(["robaudit", *sys.argv[1:]])


def dataset_file(dataset: str | None) -> Path | None:
    """``--dataset`` as a path when it names an existing file (a tensor file), else None (a name)."""
    if not dataset:
        return None
    path = Path(dataset)
    return path if path.is_file() else None
