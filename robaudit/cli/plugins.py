"""`robaudit plugins [--check]`: the installed plugin entry points, read from package metadata.

Listing imports no plugin (nor torch for their sake); ``--check`` imports each one and verifies its
object against its group's interface (docs/plugins.md). Built-ins are listed by `robaudit list`.
"""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from . import _options as opt
from ._common import error_boundary, make_console, styled


def plugins_command(
    check: bool = typer.Option(False, "--check", help="Import every plugin and check its interface; exit 1 if one fails."),
    debug: bool = opt.DEBUG,
) -> None:
    """List installed plugins (entry points of the robaudit.* groups) with distribution and version."""
    from ..registry import GROUPS, discover

    with error_boundary(debug):
        console = make_console()
        infos, collisions = discover()
        if not infos:
            console.print(f"no robaudit plugins installed (entry-point groups: {', '.join(GROUPS)}); see docs/plugins.md")
            return
        t = Table(title="robaudit plugins", title_justify="left")
        for col in ("group", "name", "distribution", "version"):
            t.add_column(col, no_wrap=True)
        t.add_column("target", overflow="fold")
        if check:
            t.add_column("check")
        from ..plugins import check_plugin

        failures = 0
        for info in infos:
            row = [
                Text(v)
                for v in (info.group.removeprefix("robaudit."), info.name, info.distribution, info.version, info.target)
            ]
            if check:
                problem = check_plugin(info)
                failures += problem is not None
                row.append(Text("ok", style="green") if problem is None else Text(problem, style="red"))
            t.add_row(*row)
        console.print(t)
        for msg in collisions:
            console.print(styled(("collision:", "red"), f" {msg}; uninstall one of them"))
        if check and (failures or collisions):
            console.print(Text(f"{failures} plugin(s) failed to load or do not fit their interface", style="red"))
            raise typer.Exit(1)
