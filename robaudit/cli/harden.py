"""`robaudit harden CHECKPOINT --method cure --dataset NAME --out hardened.safetensors`.

A thin layer over :func:`robaudit.harden.harden`: parse options, show Rich progress per epoch,
print the per-epoch table and the before/after comparison. Ctrl-C saves ``<out>.ckpt`` and
exits 130 with the command that resumes. Under torchrun only rank 0 prints (progress, tables,
errors) and writes ``--json``; every rank exits with the same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..errors import RobauditError, UsageError
from ..outputs import atomic_write, check_outputs
from . import _options as opt
from ._common import command_line, dataset_file, err_console, error_boundary, make_console, parse_floats, parse_shape, styled

__all__ = ["harden_cli", "RichReporter"]


def harden_cli(
    checkpoint: Path | None = typer.Argument(
        None,
        help="Model to fine-tune: .safetensors or pickled weights whose architecture robaudit can rebuild. Omit it for published weights named by --arch/--weights, or to train --arch from a random initialisation (seeded by --seed).",
    ),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        "-d",
        help="fashion-mnist, mnist, cifar10, ..., or a .npz/.safetensors/.pt tensor file. Training uses the train split.",
    ),
    out: str = typer.Option(..., "--out", "-o", metavar="PATH", help="Where to write the hardened model (safetensors)."),
    method: str = typer.Option(
        "cure", "--method", "-m", help="cure, jacobian, ce-grad, pgd-at, ibp or crown-ibp (see `robaudit harden --help`)."
    ),
    data_dir: Path | None = opt.DATA_DIR,
    download: bool = opt.DOWNLOAD,
    image_size: int | None = opt.IMAGE_SIZE,
    eval_dataset: str | None = typer.Option(
        None, "--eval-dataset", help="Evaluate on this dataset's test split instead (default: --dataset)."
    ),
    arch: str | None = opt.ARCH,
    weights: str | None = opt.WEIGHTS,
    arch_kwargs: str | None = opt.ARCH_KWARGS,
    num_classes: int | None = opt.NUM_CLASSES,
    input_shape: str | None = opt.INPUT_SHAPE,
    mean: str | None = opt.MEAN,
    std: str | None = opt.STD,
    trust_checkpoint: bool = opt.TRUST_CHECKPOINT,
    train_n: int | None = typer.Option(None, "--train-n", help="Train on the first N training samples (default: all)."),
    eval_n: int = typer.Option(
        500, "--eval-n", help="Held-out test samples for the per-epoch evaluation and the before/after scan."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Training epochs (default 2; ibp/crown-ibp: 10; more epochs keep improving: docs/harden.md)."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Adam learning rate at each epoch's peak (default 3e-3): every epoch holds it for 80% of its steps, then anneals (cosine) to lr/100, and each epoch peaks at half the previous one's, so an epoch's schedule does not depend on --epochs. ibp/crown-ibp: a constant 1e-3 by default.",
    ),
    batch_size: int = typer.Option(
        128, "--batch-size", help="Training batch size; per process under torchrun (the global batch is N × this)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, attack starts and projections."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    norm: str = typer.Option("linf", "--norm", help="Threat model of the evaluation and of pgd-at: linf or l2."),
    eps: str | None = typer.Option(
        None,
        "--eps",
        help="Radius on the [0,1] pixel scale for evaluation and pgd-at (default 0.1 for 1-channel data, 8/255 for colour).",
    ),
    gamma: float | None = typer.Option(None, "--gamma", help="cure: weight γ of ‖∇ℓ(x+hz) − ∇ℓ(x)‖² (default 1.0)."),
    h: float | None = typer.Option(
        None,
        "--h",
        help="cure: finite-difference step, ℓ2 on the [0,1] pixel scale (default ε·√d, the ε-ball's corner: 2.8 for ε=0.1 on 28×28; the paper's 1.5 on [0,255] is 0.0059).",
    ),
    h_ramp_epochs: float | None = typer.Option(
        None, "--h-ramp-epochs", help="cure: ramp h linearly from 0 over this many epochs (default 1)."
    ),
    reg_weight: float | None = typer.Option(
        None, "--reg-weight", help="jacobian: c (default 0.014); ce-grad: λ (default 10)."
    ),
    reg_norm: str | None = typer.Option(
        None, "--reg-norm", help="jacobian: l1 (default) or l2 (squared) norm of ∂L/∂x, per sample."
    ),
    projections: int | None = typer.Option(
        None,
        "--projections",
        help="jacobian: k random projections (Hoffman et al. 2019) of the full logit Jacobian instead of the margin gradient.",
    ),
    pgd_steps: int | None = typer.Option(
        None, "--pgd-steps", help="pgd-at / --combine pgd-at: PGD steps per batch (default 10)."
    ),
    combine: str | None = typer.Option(
        None, "--combine", help="pgd-at: add PGD adversarial training to the regularizer (Yu et al. 'Ours+AdvTrain')."
    ),
    warmup_epochs: float | None = typer.Option(
        None, "--warmup-epochs", help="ibp/crown-ibp: epochs of natural training (ε = 0) before the ramp (default 1)."
    ),
    ramp_epochs: float | None = typer.Option(
        None,
        "--ramp-epochs",
        help="ibp/crown-ibp: epochs over which ε grows linearly from 0 to its full value, κ from 1 to --kappa-end and (crown-ibp) β from 1 to 0 (default 5).",
    ),
    kappa_end: float | None = typer.Option(
        None,
        "--kappa-end",
        help="ibp/crown-ibp: weight of the natural CE after the ramp; the verified CE has 1 − κ (default 0.5).",
    ),
    train_eps_scale: float | None = typer.Option(
        None, "--train-eps-scale", help="ibp/crown-ibp: train the bounds at this × --eps (default 1)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from <out>.ckpt (same options); bit-identical to an uninterrupted run on CPU. Under torchrun any process count with the same global batch (processes × --batch-size).",
    ),
    no_scan: bool = typer.Option(False, "--no-scan", help="Skip the before/after scan of the held-out slice."),
    json_path: str | None = typer.Option(
        None, "--json", metavar="PATH", help="Write the per-epoch history and the comparison as JSON here."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no tables."),
    debug: bool = opt.DEBUG,
) -> None:
    """Fine-tune a checkpoint (or train --arch from scratch) for robustness (CURE, Jacobian, CE-gradient
    regularization, PGD-AT, certified training with IBP / CROWN-IBP) and compare.

    Methods, in [0,1] pixel units: cure = CE + γ‖∇ℓ(x+hz) − ∇ℓ(x)‖², z = sign(∇ℓ)/‖sign(∇ℓ)‖₂
    (Moosavi-Dezfooli et al. 2019); jacobian = CE + c·R(∂L/∂x) on the margin L = Z_y − max_{i≠y} Z_i
    (Yu et al. 2018, Eq. 11–12); ce-grad = CE + λ‖∇ₓCE‖² (Ross & Doshi-Velez 2018); pgd-at =
    PGD adversarial training (Madry et al. 2018); ibp / crown-ibp = κ·CE + (1 − κ)·CE of the
    worst-case logits from the IBP / CROWN-IBP lower bounds of the margins over the ε-ball
    (Gowal et al. 2018; Zhang et al. 2020), ε ramped from 0; the before/after scan then includes
    the certify check.

    Under `torchrun --nproc_per_node=N -m robaudit harden ...` it trains data-parallel
    (DistributedDataParallel): --batch-size per process, rank 0 prints and writes the files.
    """
    from ..distributed import torchrun_env
    from ..harden import HardenInterrupted, harden
    from ..harden.checkpointing import ckpt_path_for

    rank = (torchrun_env() or (0, 1, 0))[0]
    with error_boundary(debug), _rank0_reports(rank):
        check_outputs(
            files={"--out": out, "--out (resume file)": ckpt_path_for(out) if out.strip() else None, "--json": json_path},
            inputs={
                "CHECKPOINT": checkpoint,
                "--dataset": dataset_file(dataset),
                "--eval-dataset": dataset_file(eval_dataset),
            },
        )
        shape = parse_shape(input_shape)
        mean_t, std_t = parse_floats(mean, "--mean"), parse_floats(std, "--std")
        if (mean_t is None) != (std_t is None):
            raise UsageError("--mean and --std go together; give both or neither")
        from ..models import parse_arch_kwargs  # torch-heavy: imported when hardening runs

        kwargs = parse_arch_kwargs(arch_kwargs) if arch_kwargs else None
        checkpoint, arch, mean_t, std_t = published_weights(checkpoint, arch, weights, mean_t, std_t, download)
        console = make_console()
        quiet = quiet or rank != 0  # under torchrun rank 0 alone prints
        reporter = (
            None
            if quiet
            else RichReporter(make_console(stderr=True), method, "parent" if checkpoint is not None else "random init")
        )
        try:
            result = harden(
                checkpoint,
                dataset,
                out,
                method=method,
                data_dir=str(data_dir) if data_dir else None,
                download=download,
                image_size=image_size,
                eval_dataset=eval_dataset,
                arch=arch,
                arch_kwargs=kwargs,
                num_classes=num_classes,
                input_shape=shape,
                mean=mean_t,
                std=std_t,
                trust_checkpoint=trust_checkpoint,
                train_n=train_n,
                eval_n=eval_n,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                device=device,
                norm=norm,
                eps=eps,
                gamma=gamma,
                h=h,
                h_ramp_epochs=h_ramp_epochs,
                reg_weight=reg_weight,
                reg_norm=reg_norm,
                projections=projections,
                pgd_steps=pgd_steps,
                combine=combine,
                warmup_epochs=warmup_epochs,
                ramp_epochs=ramp_epochs,
                kappa_end=kappa_end,
                train_eps_scale=train_eps_scale,
                resume=resume,
                scan=not no_scan,
                reporter=reporter,
                log=None if quiet else (lambda msg: err_console.print(Text(msg, style="dim"), soft_wrap=True)),
            )
        except HardenInterrupted as exc:
            if rank != 0:  # rank 0 saved the state and prints where
                raise typer.Exit(130) from None
            err_console.print(f"{exc}", soft_wrap=True)
            if exc.checkpoint.exists():
                resume_cmd = command_line()
                if "--resume" not in resume_cmd.split():
                    resume_cmd += " --resume"
                if torchrun_env() is not None:  # the worker's arguments; torchrun's own are not known here
                    resume_cmd = f"torchrun ... -m {resume_cmd}   (any process count with the same global batch)"
                err_console.print(f"resume with:  {resume_cmd}", soft_wrap=True)
            raise typer.Exit(130) from None
        if result is None:  # a torchrun rank other than 0: rank 0 writes and prints
            return
        if json_path is not None:
            atomic_write(json_path, json.dumps(result.to_dict(), indent=1, allow_nan=False))
        if not quiet:
            print_history(result, console)
            print_comparison(result, console)
            from ..models.architectures import is_file_spec

            # a typed file.py:Class is never read back from metadata; a registry, torchvision: or timm: name is
            again = f" --arch {arch}" if arch and is_file_spec(arch) else ""
            console.print(
                Text(
                    f"  hardened model written to {result.out} (sha256:{result.sha256[:12]}); "
                    f"scan it with: robaudit scan {result.out} --dataset {dataset}{again}",
                    style="dim",
                ),
                soft_wrap=True,
            )


@contextmanager
def _rank0_reports(rank: int) -> Iterator[None]:
    """Under torchrun, an error every rank raises alike (an option, an output path) is printed by rank 0 only."""
    try:
        yield
    except RobauditError as exc:
        if rank != 0:
            exc.reported_elsewhere = True  # type: ignore[attr-defined]
        raise


def published_weights(checkpoint, arch, weights, mean, std, download):
    """Resolve ``--weights`` / ``--arch torchvision:NAME:WEIGHTS`` to the cached file, the bare
    architecture and the weights' own mean/std (a conflicting --mean/--std is a usage error)."""
    from ..models import open_model, parse_arch

    if weights is None and not (arch and parse_arch(arch).weights):
        if checkpoint is None and not arch:
            raise UsageError(
                "no model: give a CHECKPOINT file, published weights with --arch torchvision:NAME --weights NAME, "
                "or --arch NAME alone to train from a random initialisation"
            )
        return checkpoint, arch, mean, std  # no checkpoint: --arch from a random initialisation
    opened = open_model(checkpoint, arch=arch, weights=weights, mean=mean, std=std, download=download)
    return opened.path, opened.settings.arch, opened.settings.mean, opened.settings.std


# --- rendering -------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return fmt.format(v)


def _pct(v: Any) -> str:
    return _f(v if v is None else 100 * v, "{:.1f}%")


class RichReporter:
    """Per-step progress bar (loss, penalty) and one line per epoch (clean / PGD-10 acc, measure)."""

    def __init__(self, console: Console, method: str, parent_label: str = "parent"):
        self.console = console
        self.parent_label = parent_label
        self.method = method
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.epochs = 0
        self.measure_name = ""
        self.penalty_name = "penalty"

    def start(self, info: dict[str, Any]) -> None:
        self.epochs = int(info["epochs"])
        self.method = info.get("method", self.method)
        self.measure_name = info.get("measure_name", "measure")
        self.penalty_name = info.get("penalty_name", "penalty")
        resumed = info.get("resumed_at")
        note = f" · resumed at epoch {resumed[0] + 1}, step {resumed[1]}" if resumed else ""
        bn = " · BN/dropout: regularizer passes in eval mode" if info.get("separate_eval") else ""
        procs = int(info.get("processes", 1))
        ddp = f" · {procs} processes × batch {info.get('batch_size')} (DDP)" if procs > 1 else ""
        self.console.print(
            styled(
                ("robaudit harden", "bold"),
                f" {self.method}: {info['n_train']} training samples, "
                f"{info['steps_per_epoch']} steps/epoch, {self.epochs} epochs{ddp}{bn}{note}",
            )
        )
        self.progress = Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()

    def step(self, epoch: int, step: int, steps: int, running: dict[str, float]) -> None:
        if self.progress is None:
            return
        stats = f"loss {_f(running['loss'])} · CE {_f(running['ce'])} · {self.penalty_name} {_f(running['penalty'])}"
        stats += _schedule(running)
        if self.task is None:
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, stats=stats)
        self.progress.update(self.task, completed=step, stats=stats, description=f"epoch {epoch + 1}/{self.epochs}")

    def epoch(self, row: dict[str, Any]) -> None:
        if self.task is not None and self.progress is not None:
            self.progress.remove_task(self.task)
            self.task = None
        label = self.parent_label if row["epoch"] == 0 else f"epoch {row['epoch']}/{self.epochs}"
        parts = [
            f"clean {_pct(row['clean_acc'])}",
            f"PGD-10 {_pct(row['robust_acc'])}",
            f"{self.measure_name} {_f(row['measure'])}",
        ]
        if row["epoch"]:
            parts = (
                [f"loss {_f(row['loss'])}", f"{self.penalty_name} {_f(row['penalty'])}"] + parts + [f"{row['seconds']:.0f}s"]
            )
            line_end = _schedule(row)
            if line_end:
                parts[-1] += line_end
        line = f"  {label}: " + " · ".join(parts)
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            self.console.print(line, highlight=False)

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _schedule(values: dict[str, Any]) -> str:
    """ " · ε 0.05 · κ 0.75 · β 0.5" for the certified methods' schedule values present in ``values``."""
    names = (("eps", "ε"), ("kappa", "κ"), ("beta", "β"))
    return "".join(f" · {label} {values[k]:.3g}" for k, label in names if isinstance(values.get(k), (int, float)))


def print_history(result, console: Console) -> None:
    measure_name = result.measure_name
    eps = result.hyperparameters.get("eps")
    t = Table(
        title=f"robaudit harden {result.method} · per epoch (quick eval: PGD-10 at "
        f"{result.hyperparameters.get('norm')} ε={eps:g} on the held-out slice; ε and train ε in pixel space [0,1]; "
        f"loss to adv CE: means over the epoch's batches, the cross-entropies in nats)",
        title_justify="left",
    )
    ramp = any("eps" in r for r in result.history)  # certified training: the training radius of each epoch's end
    for col in (
        "epoch",
        "loss",
        "CE",
        result.penalty_name,
        "adv CE",
        measure_name,
        "clean acc",
        "PGD-10 acc",
        "peak lr",  # each epoch's; all anneal to the same floor
        *(("train ε",) if ramp else ()),
        "time",
    ):
        t.add_column(col, justify="right")
    for r in result.history:
        t.add_row(
            result.parent_label if r["epoch"] == 0 else str(r["epoch"]),
            _f(r["loss"]),
            _f(r["ce"]),
            _f(r["penalty"]),
            _f(r.get("adv_ce")),
            _f(r["measure"]),
            _pct(r["clean_acc"]),
            _pct(r["robust_acc"]),
            _f(r["lr"], "{:.1e}"),
            *((_f(r.get("eps"), "{:.3g}"),) if ramp else ()),
            _f(r["seconds"], "{:.0f}s"),
        )
    console.print(t)


def print_comparison(result, console: Console) -> None:
    rows = result.comparison()
    if not rows:
        return
    t = Table(title=f"before → after · robaudit scan, {result.before.provenance.n} test samples", title_justify="left")
    for col in ("metric", result.parent_label, "hardened", "change"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key, b, a in rows:
        is_acc = "acc" in key
        fmt = _pct if is_acc else _f
        change = None if b is None or a is None else a - b
        ch = "—" if change is None else (f"{100 * change:+.1f} pts" if is_acc else f"{change:+.4f}")
        t.add_row(key, fmt(b), fmt(a), ch)
    console.print(t)
