"""`robaudit scan CHECKPOINT --dataset NAME`: load, check it fits, run the battery, summarize."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from ..config import DEFAULT_CHECKS, ScanConfig, predict_metric_names
from ..errors import UsageError
from ..gating import check_metric_names
from ..outputs import check_outputs
from ..report.terminal import print_summary
from ..results import ScanResult
from . import _options as opt
from ._common import command_line, dataset_file, error_boundary, make_console, parse_floats, parse_shape
from .gate_options import (
    evaluate,
    finish,
    gate_file_option,
    junit_option,
    load_gates,
    print_metric_names,
    require_option,
    write_reports,
)


def scan(
    checkpoint: Path | None = typer.Argument(
        None,
        help="Model file: .safetensors, a pickled state dict, .onnx, TorchScript or .pt2 (torch.export). Omit it for published weights named by --arch/--weights.",
    ),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        "-d",
        help="cifar10, cifar100, mnist, fashion-mnist, svhn, demo, imagefolder:PATH, or a .npz/.safetensors/.pt tensor file.",
    ),
    data_dir: Path | None = opt.DATA_DIR,
    download: bool = opt.DOWNLOAD,
    split: str = typer.Option("test", "--split", help="test or train."),
    n: int | None = typer.Option(
        None,
        "--num-samples",
        "--n",
        "-n",
        help="Scan N samples (see --sample). Under torchrun write --num-samples (or -n): torchrun's own parser takes --n for an abbreviation of its options and stops.",
    ),
    sample: str | None = typer.Option(
        None,
        "--sample",
        help="How --num-samples chooses: first (the first N, RobustBench's convention; default for built-in datasets and tensor files) or stratified (a seeded class-stratified subset; default for imagefolder:).",
    ),
    train_n: int | None = typer.Option(
        None,
        "--train-n",
        help="Also compute margins and loss on N training samples, chosen as --sample chooses (train/test loss gap).",
    ),
    image_size: int | None = opt.IMAGE_SIZE,
    resize: int | None = typer.Option(
        None,
        "--resize",
        help="imagefolder: short side before the --image-size centre crop (ImageNet: --resize 256 --image-size 224).",
    ),
    class_map: Path | None = typer.Option(
        None,
        "--class-map",
        help="imagefolder: folder name → model class index (JSON object, JSON list, or one folder per line, e.g. LOC_synset_mapping.txt).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Processes decoding images of a lazy dataset (default: one per core beyond the first, at most 4).",
    ),
    arch: str | None = opt.ARCH,
    weights: str | None = opt.WEIGHTS,
    arch_kwargs: str | None = opt.ARCH_KWARGS,
    num_classes: int | None = opt.NUM_CLASSES,
    input_shape: str | None = opt.INPUT_SHAPE,
    mean: str | None = opt.MEAN,
    std: str | None = opt.STD,
    trust_checkpoint: bool = opt.TRUST_CHECKPOINT,
    norm: str = typer.Option("linf", "--norm", help="Threat model: linf or l2."),
    eps: str | None = typer.Option(
        None,
        "--eps",
        help="Radii on the [0,1] pixel scale: 0.1,0.2 or 8/255 (default: 0.1 for 1-channel data, 8/255 for colour).",
    ),
    attacks: str = typer.Option(
        "quick", "--attacks", help="Preset (quick, standard, paper) or a list, e.g. pgd:steps=50:restarts=2,fgsm."
    ),
    ensemble: str | None = typer.Option(
        None,
        "--ensemble",
        help="independent (every attack on every sample) or cascade (skip samples already broken); default: cascade for standard, else independent.",
    ),
    checks: str = typer.Option(
        ",".join(DEFAULT_CHECKS), "--checks", help="Checks to run, or 'all' (see `robaudit list checks`)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    batch_size: int = typer.Option(256, "--batch-size", help="Batch size; halves automatically on out-of-memory."),
    compute_block: int | None = typer.Option(
        None,
        "--compute-block",
        help="Run the model on blocks of exactly this many rows (padding the last) so per-sample results are bit-identical at any --batch-size, shard or process count (costs up to N-1 padded rows per call).",
    ),
    precision: str = typer.Option(
        "float32",
        "--precision",
        help="dtype of the attacks' forward passes: float32, bfloat16 (CPU or CUDA) or float16 (CUDA only), under torch.autocast; clean accuracy, margins and geometry stay float32, and every adversarial example is re-checked in float32 before it counts.",
    ),
    channels_last: bool | None = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="Run the model and its image batches in torch.channels_last memory format (same values, other convolution kernels: logits equal up to float rounding) / in the default format. Neither: chosen at scan start by timing a few passes of both on a probe batch (channels_last when ≥5% faster with the same decisions; the default format under --compute-block and --shard); the choice is in the summary and provenance.memory_format.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for every random draw (attack starts); same seed + device → same result."
    ),
    json_path: str | None = typer.Option(
        None, "--json", metavar="PATH", help="Write the ScanResult as JSON here (with --shard: this shard's part file)."
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="K/N: scan only shard K (0-based) of N (samples p with p % N == K) and write a part file with --json; combine the N parts with `robaudit merge`.",
    ),
    html_path: str | None = typer.Option(None, "--html", metavar="PATH", help="Write the self-contained HTML report here."),
    csv_dir: str | None = typer.Option(
        None, "--csv", metavar="DIR", help="Write samples.csv and robust_accuracy.csv into this folder."
    ),
    gate_file: Path | None = gate_file_option(),
    require: list[str] | None = require_option(),
    junit: str | None = junit_option(),
    list_metrics: bool = typer.Option(
        False,
        "--list-metrics",
        help="Print the metric names this scan would produce (for --require / --gate) and exit; loads the data and model but runs nothing.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary."),
    debug: bool = opt.DEBUG,
) -> None:
    """Audit a checkpoint: clean accuracy, robust accuracy under attacks, margins.

    Under `torchrun --nproc_per_node=N -m robaudit scan ...` every process scans its share of the
    samples and rank 0 writes the one result. With --shard K/N this job scans a share and writes a
    part file; `robaudit merge` combines the parts into the result a single scan would have given."""
    from ..report.tables import CSV_FILES

    with error_boundary(debug):
        from ..distributed import parse_shard

        part = parse_shard(shard)  # usage errors before any heavy work
        if part is not None:
            _check_shard_outputs(json_path, html_path, csv_dir, gate_file, require, junit)
        # usage errors (thresholds, output paths) before any heavy work
        gates = load_gates(gate_file, require, junit=junit)
        check_outputs(
            files={"--json": json_path, "--html": html_path, "--junit": junit},
            folders={"--csv": (csv_dir, CSV_FILES)},
            inputs={"CHECKPOINT": checkpoint, "--dataset": dataset_file(dataset), "--gate": gate_file},
        )

        def before_scan(config, data, loaded) -> bool:
            """Gate names checked against the names this scan will produce; --list-metrics prints them."""
            predicted = predict_metric_names(
                config, input_shape=data.input_shape, num_classes=data.num_classes, model=loaded.model, train_n=train_n
            )
            if list_metrics:
                print_metric_names(predicted, make_console())
                return False
            check_metric_names(gates, predicted, "`robaudit scan ... --list-metrics`")
            return True

        result = scan_command(
            checkpoint=checkpoint,
            dataset=dataset,
            data_dir=data_dir,
            download=download,
            split=split,
            n=n,
            train_n=train_n,
            sample=sample,
            resize=resize,
            class_map=class_map,
            workers=workers,
            image_size=image_size,
            arch=arch,
            weights=weights,
            arch_kwargs=arch_kwargs,
            num_classes=num_classes,
            input_shape=input_shape,
            mean=mean,
            std=std,
            trust_checkpoint=trust_checkpoint,
            norm=norm,
            eps=eps,
            attacks=attacks,
            ensemble=ensemble,
            checks=checks,
            device=device,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            compute_block=compute_block,
            shard=part,
            before_scan=before_scan,
            precision=precision,
            channels_last=channels_last,
        )
        if result is None:  # --list-metrics, or a torchrun rank other than 0: rank 0 writes and prints
            return
        if part is not None:
            from ..distributed import write_part

            assert json_path is not None and isinstance(result, dict)  # _check_shard_outputs; a shard's payload
            write_part(json_path, result)
            if not quiet:
                make_console().print(
                    f"  shard {part.index}/{part.count}: part written to {json_path}; combine all "
                    f"{part.count} with `robaudit merge`",
                    markup=False,
                    highlight=False,
                )
            return
        assert isinstance(result, ScanResult)
        outcome = evaluate(result, gates)
        write_reports(result, outcome, html_path, csv_dir, json_path=json_path, junit=junit)
        console = make_console()
        if not quiet:
            print_summary(result, console)
            if json_path is not None:
                console.print(Text(f"  result written to {json_path}", style="dim"))
            if html_path is not None:
                console.print(Text(f"  report written to {html_path}", style="dim"))
        finish(outcome, None, console, quiet=quiet)  # --junit is written with the other outputs


_DEFAULT_CHECKS_TEXT = ",".join(DEFAULT_CHECKS)


def scan_command(
    *,
    checkpoint,
    dataset,
    data_dir=None,
    download=False,
    split="test",
    n=None,
    train_n=None,
    image_size=None,
    arch=None,
    sample=None,
    resize=None,
    class_map=None,
    workers=None,
    compute_block=None,
    shard=None,
    weights=None,
    arch_kwargs=None,
    num_classes=None,
    input_shape=None,
    mean=None,
    std=None,
    trust_checkpoint=False,
    norm="linf",
    eps=None,
    attacks="quick",
    ensemble=None,
    checks=_DEFAULT_CHECKS_TEXT,
    device="auto",
    batch_size=256,
    seed=0,
    quiet=True,
    before_scan=None,
    precision="float32",
    channels_last=None,
) -> ScanResult | dict[str, Any] | None:
    """Parse every option first (usage errors before any heavy work), then load and scan.

    ``before_scan(config, data, loaded)``, when given, runs after loading the data and the model and
    before any forward pass (the fit check included); if it returns False nothing else runs and the
    result is None. With ``shard`` the result is the shard's payload (:func:`robaudit.distributed.run_shard`)."""
    from ..data import DataRequest, load_dataset  # torch-heavy: imported when a scan runs, not for --help
    from ..engine import run_scan
    from ..models import align_labels, check_fits, open_model, parse_arch_kwargs

    if n is not None and n < 1:
        raise UsageError("--num-samples (-n) must be >= 1")
    if train_n is not None and train_n < 1:
        raise UsageError("--train-n must be >= 1")
    config = ScanConfig.parse(
        norm=norm,
        eps=eps,
        attacks=attacks,
        ensemble=ensemble,
        checks=checks,
        seed=seed,
        device=device,
        batch_size=batch_size,
        workers=workers,
        compute_block=compute_block,
        precision=precision,
        channels_last=channels_last,
    )
    kwargs = parse_arch_kwargs(arch_kwargs) if arch_kwargs else None
    shape = parse_shape(input_shape)
    mean_t, std_t = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    if (mean_t is None) != (std_t is None):
        raise UsageError("--mean and --std go together; give both or neither")
    opened = open_model(
        str(checkpoint) if checkpoint is not None else None,
        arch=arch,
        weights=weights,
        arch_kwargs=kwargs,
        num_classes=num_classes or None,
        input_shape=shape,
        mean=mean_t,
        std=std_t,
        trust_checkpoint=trust_checkpoint,
        download=download,
    )
    request = DataRequest(
        split=split,
        n=n,
        data_dir=str(data_dir) if data_dir else None,
        download=download,
        seed=seed,
        image_size=model_image_size(opened, image_size),
        sample=sample,
        resize=model_resize(opened, resize),
        class_map=str(class_map) if class_map else None,
    )
    data = load_dataset(dataset, request)
    config.radii(data.input_shape)  # ℓ2 radii against the data's dimension, before the model is built
    loaded = opened.build(default_num_classes=data.num_classes, default_input_shape=data.input_shape)
    if class_map is None:  # a class map already numbers the folders by the model's classes
        data = align_labels(data, loaded.info)
    if before_scan is not None and not before_scan(config, data, loaded):
        return None
    loaded = check_fits(loaded, input_shape=data.input_shape, num_classes=data.num_classes, dataset_name=data.name)
    train = None
    if train_n is not None:
        train = load_dataset(dataset, replace(request, split="train", n=train_n))
        if class_map is None:
            train = align_labels(train, loaded.info)
    from ..distributed import run_shard, torchrun_env
    from ..torchrun import run_torchrun

    if shard is not None:
        if torchrun_env() is not None:
            raise UsageError("--shard and torchrun both split the samples; use one of them")
        return run_shard(
            loaded,
            data,
            config,
            shard,
            quiet=quiet,
            command_line=command_line(),
            train_data=train,
            label=f"[shard {shard.index}/{shard.count}]",
        )
    if torchrun_env() is not None:
        return run_torchrun(loaded, data, config, quiet=quiet, command_line=command_line(), train_data=train)
    return run_scan(loaded, data, config, quiet=quiet, command_line=command_line(), train_data=train)


def model_image_size(opened, image_size: int | None) -> int | None:
    """The image side to ask the data for: ``--image-size``, else the model's own (its weights' crop
    size or square input shape). Both given and different is a usage error."""
    wanted = opened.image_size
    if image_size is not None and wanted is not None and image_size != wanted:
        source = opened.preprocessing.source if opened.preprocessing is not None else "the model's input shape"
        raise UsageError(f"--image-size {image_size} conflicts with the {wanted}-pixel input from {source}; drop --image-size")
    return image_size if image_size is not None else wanted


def model_resize(opened, resize: int | None) -> int | None:
    """The short side image folders are resized to before the centre crop: ``--resize``, else the
    weights' own (torchvision's ``resize_size``, e.g. 232 or 256 before a 224 crop; timm's from its
    crop fraction). Both given and different is a usage error."""
    pre = opened.preprocessing
    wanted = getattr(pre, "resize_size", None) if pre is not None else None
    if resize is not None and wanted is not None and resize != wanted:
        raise UsageError(f"--resize {resize} conflicts with the {wanted}-pixel resize from {pre.source}; drop --resize")
    return resize if resize is not None else wanted


def _check_shard_outputs(json_path, html_path, csv_dir, gate_file, require, junit) -> None:
    """A shard writes a part file, not a result: --json is needed, result outputs are for merge."""
    if json_path is None:
        raise UsageError("--shard needs --json PART_FILE (the shard's part; `robaudit merge` combines the parts)")
    given = [
        name
        for name, value in (
            ("--html", html_path),
            ("--csv", csv_dir),
            ("--gate", gate_file),
            ("--require", require),
            ("--junit", junit),
        )
        if value
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)}: outputs of the merged result; give them to `robaudit merge`, not to a --shard scan"
        )
