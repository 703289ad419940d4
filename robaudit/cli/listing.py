"""`robaudit list KIND`: what is registered (built-ins and plugins) for architectures, datasets, attacks,
checks and hardeners. Plugins are listed from their metadata, without importing them."""
from __future__ import annotations

import typer
from rich.table import Table

from ..errors import UsageError
from ._common import error_boundary, make_console, styled


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
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """List the registered architectures, datasets, attacks, checks and hardeners, with where each comes from."""
    with error_boundary(debug):
        regs = _registries()
        if kind != "all" and kind not in regs:
            raise UsageError(f"unknown kind {kind!r}; use one of: all, {', '.join(regs)}")
        console = make_console()
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
            for msg in reg.load_errors:
                console.print(styled(("plugin failed to load:", "yellow"), f" {msg}"))
