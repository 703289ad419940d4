"""`robaudit merge part_*.json -o result.json`: one ScanResult from the part files of a sharded scan."""

from __future__ import annotations

from pathlib import Path

import typer

from . import _options as opt
from ._common import error_boundary, make_console
from .gate_options import evaluate, finish, gate_file_option, junit_option, load_gates, require_option, write_reports


def merge(
    parts: list[Path] = typer.Argument(..., help="The part files of every shard (robaudit scan --shard K/N --json PART)."),
    output: str = typer.Option(..., "--output", "-o", metavar="PATH", help="Where to write the merged ScanResult (JSON)."),
    html_path: str | None = typer.Option(None, "--html", metavar="PATH", help="Also write the HTML report here."),
    csv_dir: str | None = typer.Option(
        None, "--csv", metavar="DIR", help="Also write samples.csv and robust_accuracy.csv into this folder."
    ),
    gate_file: Path | None = gate_file_option(),
    require: list[str] | None = require_option(),
    junit: str | None = junit_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
    debug: bool = opt.DEBUG,
) -> None:
    """Combine the part files of a `--shard K/N` scan (e.g. a Slurm job array) into one result.

    Refuses parts of different runs (checkpoint, data, seed, settings) and incomplete sets; every
    section is recomputed from the merged per-sample records, so the result equals the
    single-process scan's.
    """
    with error_boundary(debug):
        from ..distributed import merge_part_files
        from ..outputs import check_outputs
        from ..report.tables import CSV_FILES
        from ..report.terminal import print_summary

        spec = load_gates(gate_file, require, junit=junit)
        check_outputs(  # usage errors (output paths) before reading the parts
            files={"--output": output, "--html": html_path, "--junit": junit},
            folders={"--csv": (csv_dir, CSV_FILES)},
            inputs={f"part {i + 1}": part for i, part in enumerate(parts)} | {"--gate": gate_file},
        )
        result = merge_part_files(parts)  # combined and checked as a result file is (exit 3 if inconsistent)
        outcome = evaluate(result, spec)
        write_reports(result, outcome, html_path, csv_dir, json_path=output, junit=junit)  # all or none
        console = make_console()
        if not quiet:
            print_summary(result, console)
            console.print(f"  merged {len(parts)} parts into {output}", markup=False, highlight=False)
        finish(outcome, None, console, quiet=quiet)  # --junit is written with the other outputs
