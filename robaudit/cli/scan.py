"""`robaudit scan CHECKPOINT --dataset NAME`: load, check it fits, run the battery, summarize."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from ..config import DEFAULT_CHECKS, ScanConfig
from ..errors import UsageError
from ..outputs import check_outputs
from ..report.terminal import print_summary
from ..results import ScanResult
from ._common import command_line, dataset_file, error_boundary, make_console, parse_floats, parse_shape
from .gate_options import evaluate, finish, gate_file_option, junit_option, load_gates, require_option


def scan(
    checkpoint: Path = typer.Argument(..., help="Model file: .safetensors, .pt2 (torch.export), TorchScript, or a pickled state dict."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="cifar10, cifar100, mnist, fashion-mnist, svhn, demo, imagefolder:PATH, or a .npz/.safetensors/.pt tensor file."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the dataset lives (also $ROBAUDIT_DATA)."),
    download: bool = typer.Option(False, "--download", help="Download the dataset if it is missing (needs internet)."),
    split: str = typer.Option("test", "--split", help="test or train."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Use the first N samples in the dataset's order."),
    train_n: Optional[int] = typer.Option(None, "--train-n", help="Also compute margins and loss on the first N training samples (train/test loss gap)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="imagefolder: resize short side + centre crop."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture: a built-in name, torchvision:NAME, or path/to/net.py:Class."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", help="JSON object or k=v,k=v for the architecture."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes of the model (default: metadata, else the dataset's)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W the model expects (default: metadata, else the dataset's)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel normalization mean the model expects, e.g. 0.4914,0.4822,0.4465."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel normalization std."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickles that can run code. Only for files you trust."),
    norm: str = typer.Option("linf", "--norm", help="Threat model: linf or l2."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radii on the [0,1] pixel scale: 0.1,0.2 or 8/255 (default: 0.1 for 1-channel data, 8/255 for colour)."),
    attacks: str = typer.Option("quick", "--attacks", help="Preset (quick, standard, paper) or a list, e.g. pgd:steps=50:restarts=2,fgsm."),
    ensemble: Optional[str] = typer.Option(None, "--ensemble", help="independent (every attack on every sample) or cascade (skip samples already broken); default: cascade for standard, else independent."),
    checks: str = typer.Option(",".join(DEFAULT_CHECKS), "--checks", help="Checks to run, or 'all' (see `robaudit list checks`)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    batch_size: int = typer.Option(256, "--batch-size", help="Batch size; halves automatically on out-of-memory."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random draw (attack starts); same seed + device → same result."),
    json_path: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the ScanResult as JSON here."),
    html_path: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Write the self-contained HTML report here."),
    csv_dir: Optional[str] = typer.Option(None, "--csv", metavar="DIR", help="Write samples.csv and robust_accuracy.csv into this folder."),
    gate_file: Optional[Path] = gate_file_option(),
    require: Optional[List[str]] = require_option(),
    junit: Optional[str] = junit_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Audit a checkpoint: clean accuracy, robust accuracy under attacks, margins."""
    from ..report.tables import CSV_FILES

    with error_boundary(debug):
        # usage errors (thresholds, output paths) before any heavy work
        gates = load_gates(gate_file, require, junit=junit)
        check_outputs(
            files={"--json": json_path, "--html": html_path, "--junit": junit},
            folders={"--csv": (csv_dir, CSV_FILES)},
            inputs={"CHECKPOINT": checkpoint, "--dataset": dataset_file(dataset), "--gate": gate_file},
        )
        result = scan_command(
            checkpoint=checkpoint, dataset=dataset, data_dir=data_dir, download=download, split=split, n=n, train_n=train_n,
            image_size=image_size, arch=arch, arch_kwargs=arch_kwargs, num_classes=num_classes,
            input_shape=input_shape, mean=mean, std=std, trust_checkpoint=trust_checkpoint, norm=norm, eps=eps,
            attacks=attacks, ensemble=ensemble, checks=checks, device=device, batch_size=batch_size, seed=seed, quiet=quiet,
        )
        if json_path is not None:
            result.write_json(json_path)
        outcome = evaluate(result, gates)
        if html_path is not None:
            from ..report.html import write_html

            write_html(result, html_path, outcome)
        if csv_dir is not None:
            from ..report.tables import write_csv

            write_csv(result, csv_dir)
        console = make_console()
        if not quiet:
            print_summary(result, console)
            if json_path is not None:
                console.print(Text(f"  result written to {json_path}", style="dim"))
            if html_path is not None:
                console.print(Text(f"  report written to {html_path}", style="dim"))
        finish(outcome, junit, console, quiet=quiet)


def scan_command(
    *, checkpoint, dataset, data_dir=None, download=False, split="test", n=None, train_n=None, image_size=None, arch=None,
    arch_kwargs=None, num_classes=None, input_shape=None, mean=None, std=None, trust_checkpoint=False,
    norm="linf", eps=None, attacks="quick", ensemble=None, checks=",".join(DEFAULT_CHECKS), device="auto", batch_size=256,
    seed=0, quiet=True,
) -> ScanResult:
    """Parse every option first (usage errors before any heavy work), then load and scan."""
    from ..data import DataRequest, load_dataset  # torch-heavy: imported when a scan runs, not for --help
    from ..engine import run_scan
    from ..models import check_fits, load_model, parse_arch_kwargs

    if n is not None and n < 1:
        raise UsageError("--n must be >= 1")
    if train_n is not None and train_n < 1:
        raise UsageError("--train-n must be >= 1")
    config = ScanConfig.parse(norm=norm, eps=eps, attacks=attacks, ensemble=ensemble, checks=checks, seed=seed,
                              device=device, batch_size=batch_size)
    kwargs = parse_arch_kwargs(arch_kwargs) if arch_kwargs else None
    shape = parse_shape(input_shape)
    mean_t, std_t = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    if (mean_t is None) != (std_t is None):
        raise UsageError("--mean and --std go together; give both or neither")
    data = load_dataset(
        dataset,
        DataRequest(split=split, n=n, data_dir=str(data_dir) if data_dir else None, download=download, seed=seed, image_size=image_size),
    )
    config.radii(data.input_shape)  # ℓ2 radii against the data's dimension, before the model loads
    loaded = load_model(
        str(checkpoint), arch=arch, arch_kwargs=kwargs, num_classes=num_classes or None, input_shape=shape,
        mean=mean_t, std=std_t, trust_checkpoint=trust_checkpoint,
        default_num_classes=data.num_classes, default_input_shape=data.input_shape,
    )
    check_fits(loaded, input_shape=data.input_shape, num_classes=data.num_classes, dataset_name=data.name)
    train = None
    if train_n is not None:
        train = load_dataset(
            dataset,
            DataRequest(split="train", n=train_n, data_dir=str(data_dir) if data_dir else None, download=download, seed=seed, image_size=image_size),
        )
    return run_scan(loaded, data, config, quiet=quiet, command_line=command_line(), train_data=train)


