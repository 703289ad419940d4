"""`robaudit compare before.json after.json`: what changed, and did robustness regress?"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import GateFailed, UsageError
from ..outputs import check_outputs
from ._common import error_boundary, make_console


def compare(
    before: Path = typer.Argument(..., help="The reference results.json."),
    after: Path = typer.Argument(..., help="The new results.json."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="PATH", help="Also write the comparison as a self-contained HTML file."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Exit 1 if clean.accuracy or any robust_acc.* metric dropped by more than this (absolute fraction, e.g. 0.01 = 1 point)."),
    force: bool = typer.Option(False, "--force", help="Compare even if the data or threat model differ."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only regressions."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Per-metric deltas (after − before), largest drops first. Refuses mismatched data or threat models (exit 2)."""
    from ..compare import compare_results, is_accuracy_metric
    from ..results import ScanResult

    with error_boundary(debug):
        if max_drop is not None and not max_drop >= 0:
            raise UsageError(f"--max-drop must be a number >= 0 (a fraction, 0.01 = 1 point), got {max_drop}")
        check_outputs(files={"--output": output}, inputs={"BEFORE": before, "AFTER": after})
        comparison = compare_results(
            ScanResult.read_json(before), ScanResult.read_json(after), force=force,
            before_label=str(before), after_label=str(after),
        )
        console = make_console()
        regressions = comparison.regressions(max_drop) if max_drop is not None else ()
        for problem in comparison.problems:
            console.print(Text(f"  warning (--force): {problem}", style="yellow"))
        if not quiet:
            _print_table(console, comparison, {d.metric for d in regressions}, is_accuracy_metric)
        if output is not None:
            from ..report.html import write_compare_html

            write_compare_html(comparison, output, max_drop)
            if not quiet:
                console.print(f"  comparison written to {output}")
        if regressions:
            for d in regressions:
                console.print(Text(f"  REGRESSION {d.metric}: {d.before:.4f} → {d.after:.4f} (drop {d.drop:.4f} > {max_drop:g})", style="red"))
            raise GateFailed(f"{len(regressions)} accuracy metric(s) dropped by more than --max-drop {max_drop:g}")


def _print_table(console: Console, comparison, regressed: set[str], is_accuracy) -> None:
    table = Table(title=f"{comparison.before_label} → {comparison.after_label} (Δ = after − before)", title_justify="left")
    for col, just in (("metric", "left"), ("before", "right"), ("after", "right"), ("Δ", "right"), ("", "left")):
        table.add_column(col, justify=just)
    for d in comparison.deltas:
        fmt = (lambda v: "—" if v is None else f"{100 * v:.2f}%") if is_accuracy(d.metric) else (lambda v: "—" if v is None else f"{v:.4g}")
        if d.delta is None:
            delta = Text("—")
        elif is_accuracy(d.metric):
            delta = Text(f"{100 * d.delta:+.2f} pp", style="red" if d.delta < 0 else ("green" if d.delta > 0 else ""))
        else:
            delta = Text(f"{d.delta:+.4g}")
        mark = Text("REGRESSION", style="bold red") if d.metric in regressed else Text("")
        table.add_row(Text(d.metric), Text(fmt(d.before)), Text(fmt(d.after)), delta, mark)
    console.print(table)
    if comparison.only_before or comparison.only_after:
        console.print(Text(f"  only before: {', '.join(comparison.only_before) or '—'} · only after: {', '.join(comparison.only_after) or '—'}", style="dim"))
