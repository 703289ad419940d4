"""``robaudit harden``: fine-tune a checkpoint for robustness and show what changed.

    >>> from robaudit.harden import harden
    >>> result = harden("model.safetensors", "fashion-mnist", "hardened.safetensors", method="cure", epochs=3)

Methods (``HARDENERS``; see :mod:`robaudit.harden.regularizers` for the formulas, scales, the
BatchNorm rule and the measured defaults): ``cure``, ``jacobian``, ``ce-grad``, ``pgd-at``
(:mod:`.adversarial`), ``ibp`` and ``crown-ibp`` (:mod:`.certified`: certified training);
``combine="pgd-at"`` adds PGD adversarial training to a regularizer. With ``checkpoint=None`` and
``arch`` the model is trained from a random initialisation seeded by ``seed``.

Data: the TRAIN split (first ``train_n`` samples) for training, the first ``eval_n`` samples
of the TEST split for the per-epoch quick evaluation and the before/after scan (a tensor file
has no splits: the same file serves both unless ``eval_dataset`` is given). Optimizer: Adam
with one learning-rate cycle per epoch (:mod:`.schedule`: ``lr`` for the first ``lr_hold`` of
the epoch, then a half cosine to ``lr · lr_final``; epoch e peaks at ``lr · lr_decay^e``), so
an epoch's schedule does not depend on ``epochs`` and every epoch ends annealed.
The output is a safetensors file with the parent's architecture, class names, input shape and
normalization plus ``robaudit.harden.*`` provenance, so ``robaudit scan OUT --dataset ...``
needs no other flag. Only checkpoints whose architecture robaudit can rebuild (safetensors or
pickled weights + an architecture) can be fine-tuned: TorchScript and torch.export archives are
frozen graphs (their parameters are constants or lifted buffers; train-mode behaviour is fixed
at export time), so they are refused with an InputError.

Under ``torchrun --nproc_per_node=N`` (:mod:`.ddp`) every process calls :func:`harden`: training is
data-parallel (DistributedDataParallel) with ``batch_size`` per process, a global batch of
N × ``batch_size``; rank 0 alone evaluates, writes ``<out>.ckpt`` and ``out`` and runs the
before/after scan, and returns the HardenResult; the other ranks return None once ``out`` is
written. An error on any rank is raised on every rank.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import check_radii
from ..errors import InputError, UsageError
from ..threat import Norm, ThreatModel, parse_eps
from .checkpointing import ckpt_path_for
from .ddp import agreement, start_ddp
from .regularizers import HARDENERS, build_hardener
from .schedule import DEFAULT_LR, LRSchedule
from .trainer import HardenInterrupted, NullReporter, Reporter, TrainConfig, measure_label, seed_for, train

__all__ = ["harden", "HardenResult", "HardenInterrupted", "HARDENERS", "DEFAULT_EPOCHS", "DEFAULT_LR", "LRSchedule"]

DEFAULT_EPOCHS = 2  # measured: docs/harden.md (issue 17); later epochs keep improving


@dataclass
class HardenResult:
    """out: the hardened safetensors; history: per-epoch rows (row 0 = the parent);
    before/after: ScanResults of the held-out slice (None with scan=False)."""

    out: Path
    sha256: str
    method: str
    hyperparameters: dict[str, Any]
    history: list[dict[str, Any]]
    before: Any = None
    after: Any = None
    device: str = "cpu"
    measure_name: str = "measure"
    penalty_name: str = "penalty"
    parent_label: str = "parent"  # "random init" when trained from scratch
    notes: list[str] = field(default_factory=list)

    def comparison(self) -> list[tuple[str, float | None, float | None]]:
        """(metric, before, after) for clean accuracy, each attack's robust accuracy, mean margin."""
        if self.before is None or self.after is None:
            return []
        b, a = self.before.metrics(), self.after.metrics()
        keys = (
            ["clean.accuracy"]
            + sorted(k for k in b if k.startswith("robust_acc."))
            + sorted(k for k in b if k.startswith("certified_acc."))
            + ["margins.mean", "margins.median"]
        )
        return [(k, b.get(k), a.get(k)) for k in keys if k in b or k in a]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "sha256": self.sha256,
            "method": self.method,
            "device": self.device,
            "measure_name": self.measure_name,
            "penalty_name": self.penalty_name,
            "hyperparameters": self.hyperparameters,
            "history": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.history
            ],
            "comparison": [{"metric": k, "before": bv, "after": av} for k, bv, av in self.comparison()],
        }


def harden(
    checkpoint: str | os.PathLike[str] | None,
    dataset: str,
    out: str | os.PathLike[str],
    *,
    method: str = "cure",
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    eval_dataset: str | None = None,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_checkpoint: bool = False,
    train_n: int | None = None,
    eval_n: int = 500,
    epochs: int | None = None,
    lr: float | None = None,
    lr_hold: float | None = None,
    lr_final: float | None = None,
    lr_decay: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    norm: str = "linf",
    eps: float | str | None = None,
    gamma: float | None = None,
    h: float | None = None,
    h_ramp_epochs: float | None = None,
    reg_weight: float | None = None,
    reg_norm: str | None = None,
    projections: int | None = None,
    pgd_steps: int | None = None,
    combine: str | None = None,
    warmup_epochs: float | None = None,
    ramp_epochs: float | None = None,
    kappa_end: float | None = None,
    train_eps_scale: float | None = None,
    resume: bool = False,
    scan: bool = True,
    scan_batch_size: int = 256,
    reporter: Reporter | None = None,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> HardenResult | None:
    """Fine-tune ``checkpoint`` with ``method`` on ``dataset``'s train split; write ``out``.

    ``checkpoint=None`` trains ``arch`` from a random initialisation (seeded by ``seed``; the
    "before" scan is of that initialisation).

    Raises UsageError (options), InputError (checkpoint/data), RuntimeFailure, and
    HardenInterrupted (a KeyboardInterrupt) on Ctrl-C after saving ``<out>.ckpt``. Under torchrun
    ``batch_size`` is per process and ranks other than 0 return None.
    """
    from ..data import DataRequest, load_dataset
    from ..data.files import TENSOR_SUFFIXES
    from ..engine import resolve_device
    from ..models import check_fits, detect_format, load_model, save_model

    log = log or (lambda _msg: None)
    # --- options first: usage errors before any heavy work ---
    hardener = build_hardener(
        method,
        {
            "gamma": gamma,
            "h": h,
            "h_ramp_epochs": h_ramp_epochs,
            "reg_weight": reg_weight,
            "reg_norm": reg_norm,
            "projections": projections,
            "pgd_steps": pgd_steps,
            "warmup_epochs": warmup_epochs,
            "ramp_epochs": ramp_epochs,
            "kappa_end": kappa_end,
            "train_eps_scale": train_eps_scale,
        },
        combine,
    )
    own = getattr(hardener, "training_defaults", {})  # e.g. certified training: more epochs, a constant rate
    epochs = own.get("epochs", DEFAULT_EPOCHS) if epochs is None else epochs
    lr = own.get("lr", DEFAULT_LR) if lr is None else lr
    for name, value, lo in (("--epochs", epochs, 1), ("--batch-size", batch_size, 1), ("--eval-n", eval_n, 1)):
        if value < lo:
            raise UsageError(f"{name} must be >= {lo}")
    if train_n is not None and train_n < 1:
        raise UsageError("--train-n must be >= 1")
    given = {"hold": lr_hold, "final": lr_final, "decay": lr_decay}
    schedule = LRSchedule(
        lr, **{k: v if v is not None else own[f"lr_{k}"] for k, v in given.items() if v is not None or f"lr_{k}" in own}
    )
    threat_norm = Norm.parse(norm)
    eps_given = parse_eps(eps) if eps is not None else None
    if eps_given is not None:
        if eps_given <= 0:
            raise UsageError("--eps must be > 0")
        check_radii((eps_given,), threat_norm)
    if checkpoint is None and not arch:
        raise UsageError("no model: give a CHECKPOINT to fine-tune, or --arch NAME to train one from a random initialisation")
    out = Path(out)
    ckpt = ckpt_path_for(out)
    run = start_ddp(device)  # torchrun: this rank's process group and device; None in a plain process
    main = run is None or run.is_main
    if not main:
        log = lambda _msg: None  # noqa: E731 - rank 0 alone prints
    dev = run.device if run is not None else resolve_device(device)
    world = run.world if run is not None else 1
    try:
        with agreement(run):  # an error on any rank (a file it can't read, a model that does not fit) stops every rank
            if ckpt.exists() and not resume:
                raise UsageError(
                    f"{ckpt} exists (an interrupted run); add --resume to continue it, or delete it to start over"
                )
            fmt = detect_format(checkpoint) if checkpoint is not None else "random-init"
            if fmt in ("torchscript", "torch-export"):
                raise InputError(
                    f"{checkpoint} is a {fmt} archive: a frozen graph whose weights are baked-in constants and whose "
                    f"train/eval behaviour was fixed at export, so it can't be fine-tuned reliably. Harden the original "
                    f"weights instead: save model.state_dict() (or safetensors) and pass --arch"
                )

            # --- data and model ---
            req: dict[str, Any] = dict(
                data_dir=str(data_dir) if data_dir else None, download=download, seed=seed, image_size=image_size
            )
            train_data = load_dataset(dataset, DataRequest(split="train", n=train_n, **req))
            eval_data = load_dataset(eval_dataset or dataset, DataRequest(split="test", n=eval_n, **req))
            if eval_dataset is None and (
                Path(dataset).suffix.lower() in TENSOR_SUFFIXES
                or train_data.source == eval_data.source
                and train_data.split == eval_data.split
            ):
                log(
                    f"{dataset} has no train/test split: the evaluation slice is its first {eval_data.n} samples, "
                    f"which are also trained on (--eval-dataset gives a held-out set)"
                )
            if checkpoint is None:
                assert arch  # refused above without one
                loaded = _random_init(
                    arch,
                    arch_kwargs,
                    num_classes or train_data.num_classes,
                    input_shape or train_data.input_shape,
                    mean,
                    std,
                    seed,
                )
            else:
                loaded = load_model(
                    str(checkpoint),
                    arch=arch,
                    arch_kwargs=arch_kwargs,
                    num_classes=num_classes,
                    input_shape=input_shape,
                    mean=mean,
                    std=std,
                    trust_checkpoint=trust_checkpoint,
                    default_num_classes=train_data.num_classes,
                    default_input_shape=train_data.input_shape,
                )
            info = loaded.info
            if not info.arch:
                raise InputError(
                    f"{checkpoint} holds a complete pickled module without a robaudit architecture name, so the hardened "
                    f"weights could not be rebuilt by `scan`; save its state_dict and pass --arch"
                )
            for part in (train_data, eval_data):
                fitted = check_fits(loaded, input_shape=part.input_shape, num_classes=part.num_classes, dataset_name=part.name)
                if fitted.info.fixed_batch is not None:
                    raise InputError(
                        f"{checkpoint} runs at a fixed batch size of {fitted.info.fixed_batch} only, so it can't be trained "
                        f"on batches; make its forward accept any batch size (e.g. x.flatten(1), not x.view(1, -1))"
                    )
            eps_value = eps_given if eps_given is not None else _default_eps(train_data.input_shape, threat_norm)
            check_radii((eps_value,), threat_norm, train_data.input_shape)
            threat = ThreatModel(threat_norm, eps_value)
            hardener.resolve(threat, train_data.input_shape)
            hardener.prepare(loaded.model, tuple(train_data.input_shape))  # e.g. ibp: a layer the bounds don't support
            hyper = {
                "method": hardener.name,
                **hardener.params(),
                "epochs": epochs,
                **schedule.params(),
                "optimizer": "adam",
                "batch_size": batch_size * world,
                "seed": seed,
                "train_n": train_data.n,
                "dataset": train_data.name,
                "norm": threat_norm.value,
                "eps": eps_value,
            }
            if world > 1:  # batch_size above is the global batch, which a resume must keep
                hyper.update(processes=world, batch_size_per_process=batch_size)
            fingerprint = {
                **{k: v for k, v in hyper.items() if k not in ("processes", "batch_size_per_process")},
                "parent_sha256": info.sha256,
                "device_type": dev.type,
            }

        # --- train ---
        net = loaded.model
        initial = copy.deepcopy(net) if checkpoint is None and scan and main else None  # the "before" of a from-scratch run
        torch.manual_seed(seed_for(seed, "torch"))
        history = train(
            net,
            hardener,
            train_data.x,
            train_data.y,
            eval_data.x,
            eval_data.y,
            TrainConfig(
                epochs=epochs,
                schedule=schedule,
                batch_size=batch_size,
                seed=seed,
                threat=threat,
                device=dev,
                fingerprint=fingerprint,
            ),
            ckpt,
            resume=resume,
            reporter=reporter or NullReporter(),
            on_step=on_step,
            dist=run,
        )

        # --- write the hardened model (rank 0; the others wait for it to succeed or fail) ---
        with agreement(run):
            if main:
                class_names = _class_names(info.metadata) or list(train_data.class_names)
                extra = {
                    "robaudit.harden.method": hardener.name,
                    "robaudit.harden.hyperparameters": json.dumps(hyper, sort_keys=True),
                    "robaudit.harden.epochs": str(epochs),
                }
                if checkpoint is None:
                    extra["robaudit.harden.init"] = f"random (seed {seed})"
                else:
                    extra.update(
                        {"robaudit.harden.parent_sha256": info.sha256, "robaudit.harden.parent": Path(info.path).name}
                    )
                digest = save_model(
                    out,
                    net,
                    arch=info.arch,
                    arch_kwargs=info.arch_kwargs or None,
                    num_classes=int(info.num_classes or train_data.num_classes),
                    input_shape=info.input_shape or train_data.input_shape,
                    class_names=class_names,
                    extra_metadata=extra,
                )
                ckpt.unlink(missing_ok=True)
                result = HardenResult(
                    out=out,
                    sha256=digest,
                    method=hardener.name,
                    hyperparameters=hyper,
                    history=history,
                    device=str(dev),
                    measure_name=measure_label(hardener),
                    penalty_name=getattr(hardener, "penalty_name", "penalty"),
                    parent_label="parent" if checkpoint is not None else "random init",
                )
    finally:
        if run is not None:
            run.close()
    if not main:
        return None
    # --- before/after scan on the held-out slice ---
    if scan:
        result.before, result.after = _scan_pair(
            checkpoint if initial is None else replace(loaded, model=initial),
            out,
            loaded_kwargs=dict(
                arch=arch,
                arch_kwargs=arch_kwargs,
                num_classes=num_classes,
                input_shape=input_shape,
                mean=mean,
                std=std,
                trust_checkpoint=trust_checkpoint,
            ),
            data=eval_data,
            threat=threat,
            seed=seed,
            device=device,
            batch_size=scan_batch_size,
            log=log,
            certify=getattr(hardener, "certified", False),
        )
    return result


def _default_eps(input_shape: Sequence[int], norm: Norm) -> float:
    from ..config import default_eps

    return float(default_eps(tuple(input_shape), norm)[0])


def _class_names(metadata: dict[str, str]) -> list[str] | None:
    raw = metadata.get("robaudit.class_names")
    if not raw:
        return None
    from ..errors import InputError
    from ..jsonio import parse_json

    try:
        names = parse_json(raw, "robaudit.class_names")
    except InputError:  # the parent was read by load_model, which checks this key; nothing more to say here
        return None
    return [str(c) for c in names] if isinstance(names, list) else None


def _random_init(arch: str, arch_kwargs, num_classes: int, input_shape: Sequence[int], mean, std, seed: int):
    """A LoadedModel of ``arch`` with random weights drawn from ``seed`` (train from scratch)."""
    from ..models import NormalizedModel, build_architecture, parse_arch_kwargs
    from ..models.spec import LoadedModel, ModelInfo

    kwargs = parse_arch_kwargs(arch_kwargs) if isinstance(arch_kwargs, str) else dict(arch_kwargs or {})
    c, h, w = (int(v) for v in input_shape)
    shape = (c, h, w)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "init"))
        net = build_architecture(arch, num_classes=int(num_classes), in_channels=shape[0], kwargs=kwargs, input_size=shape[1])
    try:
        model = NormalizedModel(net, mean, std)
    except ValueError as exc:
        raise UsageError(f"--mean/--std: {exc}") from None
    info = ModelInfo(
        path=f"random initialisation of {arch} (seed {seed})",
        format="random-init",
        sha256=f"random-init:{seed}",
        arch=arch,
        arch_kwargs=kwargs,
        num_classes=int(num_classes),
        input_shape=shape,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )
    return LoadedModel(model.eval(), info)


def _scan_pair(parent, out, *, loaded_kwargs, data, threat, seed, device, batch_size, log, certify=False):
    """Scan the parent (a path, or a LoadedModel: the random initialisation) and the hardened model
    on the evaluation slice: clean, quick attacks, margins, and with ``certify`` the certify check
    (CROWN), so the certified/attacked bracket of both is in the comparison."""
    from ..config import ScanConfig, parse_attack_list
    from ..engine import run_scan
    from ..models import load_model
    from ..models.spec import LoadedModel

    # the default memory format, not a timed choice: the before/after figures repeat exactly run to run
    checks = ("clean", "attacks", "margins") + (("certify",) if certify else ())
    config = ScanConfig(
        norm=threat.norm,
        eps=(threat.eps,),
        attacks=parse_attack_list("quick"),
        checks=checks,
        seed=seed,
        device=device,
        batch_size=batch_size,
        channels_last=False,
    )
    results = []
    # the hardened file's metadata names the parent's architecture; one the user typed (a file.py:Class)
    # must be typed again, since robaudit never imports a file named in metadata
    typed = {k: loaded_kwargs[k] for k in ("arch", "arch_kwargs")} if loaded_kwargs.get("arch") else {}
    for label, path, kwargs in (("before", parent, loaded_kwargs), ("after", out, typed)):
        if isinstance(path, LoadedModel):
            loaded = path
        else:
            loaded = load_model(
                str(path), default_num_classes=data.num_classes, default_input_shape=data.input_shape, **kwargs
            )
        log(f"scanning the {label} model on {data.n} test samples")
        results.append(run_scan(loaded, data, config, quiet=True, command_line=f"robaudit harden ({label} scan)"))
    return results[0], results[1]
