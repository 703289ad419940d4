"""`robaudit report results.json -o report.html`: re-render a saved result (nothing is recomputed)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..outputs import check_outputs
from . import _options as opt
from ._common import error_boundary, make_console
from .gate_options import evaluate, finish, gate_file_option, junit_option, load_gates, require_option, write_reports


def report(
    results: Path = typer.Argument(..., help="A results.json written by `robaudit scan --json`."),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="PATH", help="HTML file to write (default: next to the JSON, .html)."
    ),
    csv_dir: str | None = typer.Option(
        None, "--csv", metavar="DIR", help="Also write samples.csv and robust_accuracy.csv into this folder."
    ),
    gate_file: Path | None = gate_file_option(),
    require: list[str] | None = require_option(),
    junit: str | None = junit_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and failed gates."),
    debug: bool = opt.DEBUG,
) -> None:
    """Render the self-contained HTML report (and CSV tables) from a saved result.

    With --gate/--require the gate outcomes go into the report's verdict and a failed gate exits 1.
    """
    from ..report.tables import CSV_FILES
    from ..results import ScanResult

    with error_boundary(debug):
        spec = load_gates(gate_file, require, junit=junit)
        out = output if output is not None else str(results.with_suffix(".html"))
        check_outputs(
            files={"--output": out, "--junit": junit},
            folders={"--csv": (csv_dir, CSV_FILES)},
            inputs={"RESULTS": results, "--gate": gate_file},
        )
        result = ScanResult.read_json(results)
        outcome = evaluate(result, spec)
        written = write_reports(result, outcome, out, csv_dir, junit=junit)  # all or none
        console = make_console()
        if not quiet:
            console.print(f"  report written to {out}")
            tables = [str(p) for p in written if Path(p).name in CSV_FILES and str(p) != str(out)]
            if tables:
                console.print("  tables written to " + ", ".join(tables))
        finish(outcome, None, console, quiet=quiet)  # --junit is written with the other outputs
