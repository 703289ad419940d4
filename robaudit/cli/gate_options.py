"""Gate options shared by `scan`, `report` and `gate`: --gate FILE, --require EXPR, --junit PATH.

Parse first (:func:`load_gates`, before any heavy work), evaluate on the result (:func:`evaluate`),
then :func:`finish`: JUnit file, a table of the gates, and exit 1 (GateFailed) if any failed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..errors import GateFailed, UsageError
from ..gating import GateOutcome, GateSpec, evaluate_gates, find_gate_file, junit_xml, load_gate_file, parse_requires
from ..outputs import atomic_write, atomic_write_all, check_outputs
from . import _options as opt

__all__ = [
    "gate_file_option",
    "require_option",
    "junit_option",
    "load_gates",
    "evaluate",
    "finish",
    "print_outcome",
    "print_metric_names",
]


def gate_file_option():
    return typer.Option(
        None,
        "--gate",
        help="Thresholds file: robaudit.toml (table 'gate') or pyproject.toml (table 'tool.robaudit.gate').",
    )


def require_option():
    return typer.Option(
        None,
        "--require",
        help="Threshold '<metric> <op> <number>', e.g. 'robust_acc.pgd.linf@8/255 >= 0.40' or 'lower(robust_acc.ensemble.linf@8/255) >= 0.40' (the 95% interval's lower bound); repeatable.",
    )


def junit_option():
    return typer.Option(
        None, "--junit", metavar="PATH", help="Write the gate outcomes as JUnit XML here (one testcase per gate)."
    )


def load_gates(
    gate_file: Path | None, requires: list[str] | None, *, junit: str | None = None, discover: bool = False
) -> GateSpec | None:
    """The gates asked for, or None. With ``discover`` and nothing given, look for robaudit.toml /
    pyproject.toml in the current directory; finding none is a usage error. ``--junit`` without
    gates is a usage error."""
    spec = parse_requires(requires or [])
    if gate_file is not None:
        spec = load_gate_file(gate_file).merged(spec)
    elif discover and not spec:
        found = find_gate_file(Path.cwd())
        if found is None:
            raise UsageError(
                "no thresholds: give --require '<metric> <op> <number>' or --gate FILE, or put a [gate] table in "
                "./robaudit.toml ([tool.robaudit.gate] in ./pyproject.toml)"
            )
        spec = load_gate_file(found)
    if junit is not None and not spec:
        raise UsageError("--junit needs gates: give --require '<metric> <op> <number>' or --gate FILE")
    return spec if spec else None


def print_metric_names(source, console: Console) -> None:
    """One metric name per line, ready to paste into --require or a [gate] file: from a
    PredictedMetrics (before a scan; names only) or a ScanResult (with values and, for accuracies,
    k/n and the 95% interval usable as lower(...) / upper(...))."""
    from ..metric_names import has_interval

    if hasattr(source, "provenance"):
        values, intervals, names = source.metrics(), source.intervals(), source.metric_names()
    else:
        values, intervals, names = {}, {}, source.names
    width = max((len(n) for n in names), default=0)
    for name in names:
        line = name.ljust(width)
        if values or intervals:
            v = values.get(name)
            line += "  " + ("no value" if v is None else f"{v:.6g}")
            p = intervals.get(name)
            if p is not None:
                line += f"  ({p.k}/{p.n}; 95% interval {p.lower:.4g}–{p.upper:.4g}: lower(...), upper(...))"
        elif has_interval(name):
            line += "  (accuracy: also lower(...), upper(...))"
        console.print(Text(line.rstrip()), soft_wrap=True)
    for check in getattr(source, "unpredictable", ()):
        console.print(
            Text(f"# check {check!r} names its metrics only when it runs (see the result's --list-metrics)"), soft_wrap=True
        )
    console.print(Text(f"# {len(names)} metrics; use as --require '<metric> >= <number>' or in a [gate] file"), soft_wrap=True)


def evaluate(result, spec: GateSpec | None) -> GateOutcome | None:
    return evaluate_gates(result, spec) if spec else None


def write_reports(
    result,
    outcome: GateOutcome | None,
    html_path: str | None,
    csv_dir: str | None,
    *,
    json_path: str | None = None,
    junit: str | None = None,
) -> list:
    """Every output asked for — the result JSON, the HTML report (with the gate outcome in its
    verdict), the CSV tables, the gates' JUnit XML — rendered first, then written all or none
    (:func:`robaudit.outputs.atomic_write_all`): an error while rendering or a full disk leaves
    every previous file as it was."""
    files: dict = {}
    if json_path is not None:
        files[json_path] = result.to_json()
    if html_path is not None:
        from ..report.html import render_html

        files[html_path] = render_html(result, outcome)
    if csv_dir is not None:
        from ..report.tables import csv_texts

        files.update({Path(csv_dir) / name: text for name, text in csv_texts(result).items()})
    if junit is not None and outcome is not None:
        files[junit] = junit_xml(outcome)
    atomic_write_all(files)
    return list(files)


def print_outcome(outcome: GateOutcome, console: Console, *, failures_only: bool = False) -> None:
    rows = outcome.failures if failures_only else outcome.results
    title = "Failed gates" if failures_only else "Gates"
    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("gate", "left"),
        ("actual", "right"),
        ("threshold", "right"),
        ("result", "left"),
        ("source", "left"),
    )
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        threshold = f"{r.op} {r.threshold:.6g}" if r.threshold is not None else "absent"
        actual = "—" if r.actual is None else f"{r.actual:.6g}"
        status = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
        table.add_row(Text(r.expression), Text(actual), Text(threshold), status, Text(r.source, style="dim"))
    console.print(table)
    if not outcome.passed:
        for r in outcome.failures:
            console.print(Text(f"  {r.message}"))


def finish(outcome: GateOutcome | None, junit: str | None, console: Console, *, quiet: bool = False) -> None:
    """Write JUnit, show the gates (only failures when quiet), raise GateFailed (exit 1) on failure."""
    if outcome is None:
        return
    if junit is not None:
        atomic_write(junit, junit_xml(outcome))
    if outcome.passed:
        if not quiet:
            print_outcome(outcome, console)
            console.print(f"  all {len(outcome.results)} gates passed")
        return
    print_outcome(outcome, console, failures_only=quiet)
    raise GateFailed(f"{len(outcome.failures)} of {len(outcome.results)} gates failed")


def gate(
    results: Path = typer.Argument(..., help="A results.json written by `robaudit scan --json`."),
    gate_file: Path | None = gate_file_option(),
    require: list[str] | None = require_option(),
    junit: str | None = junit_option(),
    list_metrics: bool = typer.Option(
        False, "--list-metrics", help="Print the result's metric names, values and 95% intervals, and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Show only failed gates."),
    debug: bool = opt.DEBUG,
) -> None:
    """Check an existing result against thresholds; exit 1 if any gate fails.

    Without --require/--gate, reads the 'gate' table of ./robaudit.toml or 'tool.robaudit.gate' of ./pyproject.toml.
    """
    from ..results import ScanResult
    from ._common import error_boundary, make_console

    with error_boundary(debug):
        if list_metrics:
            print_metric_names(ScanResult.read_json(results), make_console())
            return
        spec = load_gates(gate_file, require, junit=junit, discover=True)
        check_outputs(files={"--junit": junit}, inputs={"RESULTS": results, "--gate": gate_file})
        result = ScanResult.read_json(results)
        finish(evaluate(result, spec), junit, make_console(), quiet=quiet)
