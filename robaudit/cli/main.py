"""The `robaudit` Typer app. Exit codes: 0 ok · 1 gate failed · 2 usage · 3 input · 4 runtime."""

from __future__ import annotations

import typer

from .._version import __version__
from .compare import compare
from .demo import demo
from .gate_options import gate
from .harden import harden_cli
from .listing import list_command
from .merge import merge
from .plugins import plugins_command
from .report import report
from .scan import scan

app = typer.Typer(
    name="robaudit",
    help="How robust is an image classifier, why, and did a change make it better?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"robaudit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", "-V", is_eager=True, callback=_print_version, help="Print robaudit's version and exit."
    ),
) -> None:
    """How robust is an image classifier, why, and did a change make it better?"""


app.command("scan")(scan)
app.command("demo")(demo)
app.command("harden")(harden_cli)
app.command("list")(list_command)
app.command("plugins")(plugins_command)
app.command("report")(report)
app.command("compare")(compare)
app.command("gate")(gate)
app.command("merge")(merge)


@app.command("version")
def version() -> None:
    """Print robaudit's version."""
    typer.echo(__version__)


def run() -> None:
    _stop_on_sigterm()
    app()


def _stop_on_sigterm() -> None:
    """SIGTERM ends robaudit as Ctrl-C does: torchrun sends it to the other workers when one fails,
    schedulers (Slurm) before they kill a job, ``timeout`` when time is up. So temporary files are
    removed, ``harden`` saves OUT.ckpt, and the exit is 130 — instead of dying mid-write."""
    import signal

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):  # not the main thread, or a platform without SIGTERM
        pass
