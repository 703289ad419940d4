"""`robaudit compare before.json after.json`: what changed, and did robustness regress?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..errors import GateFailed, UsageError
from ..outputs import check_outputs
from . import _options as opt
from ._common import error_boundary, make_console


def compare(
    before: Path = typer.Argument(..., help="The reference results.json."),
    after: Path = typer.Argument(..., help="The new results.json."),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="PATH", help="Also write the comparison as a self-contained HTML file."
    ),
    max_drop: float | None = typer.Option(
        None,
        "--max-drop",
        help="Exit 1 if clean.accuracy or any robust_acc.* metric dropped by more than this (absolute fraction, e.g. 0.01 = 1 point).",
    ),
    significant: bool = typer.Option(
        False,
        "--significant",
        help="With --max-drop: count a drop only when it is significant at 0.05 (exact McNemar test on the per-sample results).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Compare even if the data, threat model or samples differ (no paired test then)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only regressions."),
    debug: bool = opt.DEBUG,
) -> None:
    """Per-metric deltas (after − before): accuracies first (largest drop first) with the exact McNemar
    test on their per-sample results, then the other metrics. Refuses mismatched data, threat models or
    samples (exit 2)."""
    from ..compare import compare_results, is_accuracy_metric
    from ..results import ScanResult

    with error_boundary(debug):
        if max_drop is not None and not max_drop >= 0:
            raise UsageError(f"--max-drop must be a number >= 0 (a fraction, 0.01 = 1 point), got {max_drop}")
        if significant and max_drop is None:
            raise UsageError("--significant qualifies --max-drop; give both, e.g. --max-drop 0 --significant")
        check_outputs(files={"--output": output}, inputs={"BEFORE": before, "AFTER": after})
        comparison = compare_results(
            ScanResult.read_json(before),
            ScanResult.read_json(after),
            force=force,
            before_label=str(before),
            after_label=str(after),
        )
        console = make_console()
        regressions = comparison.regressions(max_drop, significant) if max_drop is not None else ()
        for problem in comparison.problems:
            console.print(Text(f"  warning (--force): {problem}", style="yellow"))
        if not quiet:
            _print_table(console, comparison, {d.metric for d in regressions}, is_accuracy_metric)
        if output is not None:
            from ..report.html import write_compare_html

            write_compare_html(comparison, output, max_drop, significant)
            if not quiet:
                console.print(f"  comparison written to {output}")
        if regressions:
            why = " and significant at 0.05 (McNemar)" if significant else ""
            for d in regressions:
                p = f", McNemar p = {d.paired.p_value:.3g}" if d.paired is not None else ""
                console.print(
                    Text(
                        f"  REGRESSION {d.metric}: {d.before:.4f} → {d.after:.4f} (drop {d.drop:.4f} > {max_drop:g}{p})",
                        style="red",
                    )
                )
            raise GateFailed(f"{len(regressions)} accuracy metric(s) dropped by more than --max-drop {max_drop:g}{why}")


def _print_table(console: Console, comparison, regressed: set[str], is_accuracy) -> None:
    from ..report.terminal import pct_ci

    title = f"{comparison.before_label} → {comparison.after_label} (Δ = after − before; accuracies with n and 95% interval)"
    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("metric", "left"),
        ("before", "right"),
        ("after", "right"),
        ("Δ", "right"),
        ("McNemar p", "right"),
        ("", "left"),
    )
    for col, just in columns:
        table.add_column(col, justify=just)
    ib, ia = comparison.before.intervals(), comparison.after.intervals()
    for d in comparison.deltas:
        acc = is_accuracy(d.metric)
        if acc:
            before, after = Text(pct_ci(d.before, ib.get(d.metric))), Text(pct_ci(d.after, ia.get(d.metric)))
        else:
            before, after = (Text("—" if v is None else f"{v:.4g}") for v in (d.before, d.after))
        if d.delta is None:
            delta = Text("—")
        elif acc:
            delta = Text(f"{100 * d.delta:+.2f} pp", style="red" if d.delta < 0 else ("green" if d.delta > 0 else ""))
        else:
            delta = Text(f"{d.delta:+.4g}")
        p = (
            Text("—")
            if d.paired is None
            else Text(f"{d.paired.p_value:.3g}" + (" *" if d.significant else ""), style="bold" if d.significant else "")
        )
        mark = Text("REGRESSION", style="bold red") if d.metric in regressed else Text("")
        table.add_row(Text(d.metric), before, after, delta, p, mark)
    console.print(table)
    console.print(
        Text(
            "  * significant at 0.05: exact McNemar test on the samples whose outcome changed "
            "(two-sided; — where a metric has no per-sample results)",
            style="dim",
        )
    )
    if comparison.unpaired:
        console.print(Text(f"  no paired test: {comparison.unpaired}", style="yellow"))
    if comparison.only_before or comparison.only_after:
        console.print(
            Text(
                f"  only before: {', '.join(comparison.only_before) or '—'} · only after: {', '.join(comparison.only_after) or '—'}",
                style="dim",
            )
        )
