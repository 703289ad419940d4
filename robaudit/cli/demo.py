"""`robaudit demo`: the whole loop on the embedded Fashion-MNIST model and data, offline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from ..config import ScanConfig, parse_attack_list
from ..errors import UsageError
from ..outputs import check_outputs
from ..report.terminal import print_summary
from ..threat import Norm, parse_eps_list
from . import _options as opt
from ._common import command_line, error_boundary, make_console

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "assets" / "demo_fashion_mnist_small_cnn.safetensors"
DEMO_FILES = ("results.json", "report.html")  # written into --out


def demo(
    n: int = typer.Option(500, "--num-samples", "--n", "-n", help="How many of the 1,000 embedded test images to scan."),
    eps: str = typer.Option("0.05,0.1", "--eps", help="ℓ∞ radii on the [0,1] pixel scale."),
    out: Path = typer.Option(Path("robaudit-demo"), "--out", help="Folder for results.json and report.html."),
    device: str = typer.Option("auto", "--device"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    debug: bool = opt.DEBUG,
) -> None:
    """Scan the embedded naturally trained Fashion-MNIST CNN on embedded test images (no network)."""
    from ..data import DataRequest, load_dataset  # torch-heavy: imported when the demo runs
    from ..engine import run_scan
    from ..models import check_fits, load_model

    with error_boundary(debug):
        # usage errors (radii, output folder) before any work
        if n < 1:
            raise UsageError("--num-samples (-n) must be >= 1")
        config = ScanConfig(
            norm=Norm.LINF, eps=tuple(parse_eps_list(eps)), attacks=parse_attack_list("quick"), seed=seed, device=device
        )
        check_outputs(folders={"--out": (out, DEMO_FILES)})
        data = load_dataset("demo", DataRequest(n=n))
        loaded = load_model(str(DEMO_MODEL))
        loaded = check_fits(loaded, input_shape=data.input_shape, num_classes=data.num_classes, dataset_name=data.name)
        result = run_scan(loaded, data, config, quiet=quiet, command_line=command_line())
        from .gate_options import write_reports

        write_reports(result, None, str(out / DEMO_FILES[1]), None, json_path=str(out / DEMO_FILES[0]))  # all or none
        if not quiet:
            console = make_console()
            print_summary(result, console)
            console.print(Text(f"  written: {out / DEMO_FILES[0]}, {out / DEMO_FILES[1]}", style="dim"))
