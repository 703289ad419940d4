"""`robaudit list KIND`: what is registered (built-ins and plugins) for architectures, datasets, attacks,
checks and hardeners. Plugins are listed from their metadata, without importing them."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import UsageError
from ._common import error_boundary


def _registries():
    from ..attacks import ATTACKS
    from ..checks import CHECKS
    from ..data import DATASETS
    from ..harden import HARDENERS
    from ..models import ARCHITECTURES

    return {"architectures": ARCHITECTURES, "datasets": DATASETS, "attacks": ATTACKS, "checks": CHECKS,
            "hardeners": HARDENERS}


def list_command(
    kind: str = typer.Argument("all", help="architectures, datasets, attacks, checks, hardeners, or all."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail (architectures: every model source with an example and its kwargs)."),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """List the registered architectures, datasets, attacks, checks and hardeners, with where each comes from."""
    with error_boundary(debug):
        regs = _registries()
        if kind != "all" and kind not in regs:
            raise UsageError(f"unknown kind {kind!r}; use one of: all, {', '.join(regs)}")
        console = Console()
        for name, reg in regs.items():
            if kind not in ("all", name):
                continue
            t = Table(title=name, title_justify="left")
            t.add_column("name")
            t.add_column("from")
            t.add_column("version")
            for e in reg.entries():
                t.add_row(e.name, e.distribution, e.version)
            console.print(t)
            if name == "architectures":
                print_model_sources(console, verbose)
            for msg in reg.load_errors:
                console.print(f"[yellow]plugin failed to load:[/yellow] {msg}")


def print_model_sources(console: Console, verbose: bool) -> None:
    """Where models come from (``robaudit.models.model_sources``): a table; with ``-v`` each source's
    example command, what is read and the kwargs it takes."""
    from ..models.sources import describe, model_sources

    if verbose:
        console.print(Text("model sources", style="bold"))
        for source in model_sources():
            d = describe(source)
            console.print(Text(f"  {d['name']}", style="bold").append(f"  ({d['trust']}; {d['installed']})", style="dim"))
            for key in ("example", "reads", "kwargs"):
                console.print(Text(f"      {key}: {d[key]}"), soft_wrap=True)
        return
    t = Table(title="model sources", title_justify="left")
    for col in ("source", "data or code", "installed"):
        t.add_column(col)
    for source in model_sources():
        d = describe(source)
        t.add_row(Text(d["name"]), Text(d["trust"]), Text(d["installed"]))
    console.print(t)
    console.print(Text("  (robaudit list architectures -v: an example command, what is read and the kwargs of each source)", style="dim"))
