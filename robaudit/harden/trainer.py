"""The fine-tuning loop of ``robaudit harden``: Adam, one learning-rate cycle per epoch
(:mod:`.schedule`), per-epoch quick evaluation, atomic resume checkpoints, Ctrl-C handling.

Determinism: every random draw comes from an explicit generator — the data order from a CPU
``torch.Generator`` seeded with ``seed`` (one ``randperm`` per epoch), attack starts and random
projections from a generator on the training device seeded from ``seed``, the quick evaluation
from a fresh generator per epoch — and all of them are saved in the checkpoint, so an
interrupted run resumed with ``--resume`` ends with bit-identical weights on the CPU.

Under ``torchrun`` (``dist``, :mod:`.ddp`) ``TrainConfig.batch_size`` is per process: a step
trains on a global batch of N × batch_size samples split over the N ranks, the schedule counts
global steps, and rank 0 alone evaluates, reports and writes the checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ..errors import RuntimeFailure, WriteError
from ..threat import ThreatModel
from .adversarial import PGDAT, Combined
from .checkpointing import capture_rng, resume_from, save_state
from .ddp import agreement
from .regularizers import Hardener, StepContext, has_mode_dependent_layers
from .schedule import LRSchedule
from .seeds import seed_for

if TYPE_CHECKING:
    from .ddp import DDPRun

__all__ = [
    "forward_backward",
    "measure_label",
    "TrainConfig",
    "Reporter",
    "NullReporter",
    "HardenInterrupted",
    "train",
    "quick_eval",
    "seed_for",
]


class HardenInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``harden``: the state was saved (or the last epoch's is intact) at ``checkpoint``."""

    def __init__(self, checkpoint: Path, epoch: int, step: int, steps_per_epoch: int, saved: bool):
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        self.steps_per_epoch = steps_per_epoch
        self.saved = saved
        where = f"epoch {epoch + 1}, step {step}/{steps_per_epoch}" if step else f"the start of epoch {epoch + 1}"
        what = "state saved to" if saved else "the last end-of-epoch state is in"
        super().__init__(f"interrupted at {where}; {what} {checkpoint}")


class Reporter(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, epoch: int, step: int, steps: int, running: dict[str, float]) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def end(self) -> None: ...


class NullReporter:
    def start(self, info):
        pass

    def step(self, epoch, step, steps, running):
        pass

    def epoch(self, row):
        pass

    def end(self):
        pass


@dataclass
class TrainConfig:
    epochs: int
    schedule: LRSchedule
    batch_size: int
    seed: int
    threat: ThreatModel
    device: torch.device
    eval_pgd_steps: int = 10
    eval_batch_size: int = 250
    fingerprint: dict[str, Any] = field(default_factory=dict)


def _pgd(steps: int):
    from ..attacks.pgd import PGD

    return PGD(steps=steps)


def quick_eval(
    model: nn.Module,
    hardener: Hardener,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    device: torch.device,
    seed: int,
    steps: int = 10,
    batch_size: int = 250,
) -> dict[str, float]:
    """Clean accuracy, PGD-``steps`` robust accuracy and the method's measured quantity (mean) on x, y."""
    was = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    attack = _pgd(steps)
    correct = robust = 0
    measures: list[torch.Tensor] = []
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            correct += int(ok.sum())
            if ok.any():
                out = attack.run(model, xb[ok], yb[ok], threat, gen)
                robust += int((~out.success).sum())
            measures.append(hardener.measure(model, xb, yb, threat).detach().float().cpu())
    finally:
        model.train(was)
    n = max(int(x.shape[0]), 1)
    m = torch.cat(measures) if measures else torch.zeros(0)
    finite = m[torch.isfinite(m)]
    return {
        "clean_acc": correct / n,
        "robust_acc": robust / n,
        "measure": float(finite.mean()) if finite.numel() else math.nan,
    }


def loss_failure(hardener: Hardener, loss: torch.Tensor, where: tuple[int, int]) -> str | None:
    """The error line of a non-finite training loss, or None."""
    if torch.isfinite(loss.detach()):
        return None
    return (
        f"the {hardener.name} loss became {float(loss)} at epoch {where[0] + 1}, step {where[1] + 1}; "
        f"lower --lr or the regularization weight"
    )


def forward_backward(net, hardener: Hardener, params, optimizer, x, y, ctx: StepContext, where=(0, 0)):
    """One training step up to (not including) the optimizer update: zero grads, the method's
    loss, backward into the parameters only. Returns the StepOutput."""
    optimizer.zero_grad(set_to_none=True)
    out = hardener.loss(net, x, y, ctx)
    failure = loss_failure(hardener, out.loss, where)
    if failure:
        raise RuntimeFailure(failure)
    # inputs=params: the pixel leaves created for input gradients get no .grad, which spares
    # e.g. the first conv's input gradient in the final backward
    torch.autograd.backward(out.loss, inputs=params)
    return out


def step_sums(out, count: int) -> list[float]:
    """A step's contribution to the running sums: [count, loss·b, CE·b, penalty·b, adv CE·b]."""
    return [
        count,
        float(out.loss.detach()) * count,
        out.ce * count,
        (0.0 if math.isnan(out.penalty) else out.penalty) * count,
        (0.0 if math.isnan(out.adv_ce) else out.adv_ce) * count,
    ]


def ddp_forward_backward(
    run: DDPRun, model, hardener: Hardener, params, optimizer, x, y, ctx: StepContext, count: int, scale: float, where=(0, 0)
) -> list[float]:
    """:func:`forward_backward` on one rank's share under DDP; returns the step's running sums over
    every rank. The ranks agree (one all-reduce of the sums and a failure flag) before the backward,
    so an error or a non-finite loss on any rank stops every rank with rank 0 printing it."""
    optimizer.zero_grad(set_to_none=True)
    failure = None
    try:
        out = hardener.loss(model, x, y, ctx)
        sums = step_sums(out, count)
        message = loss_failure(hardener, out.loss, where)
        if message:
            failure = {"error": message, "exit_code": RuntimeFailure.exit_code}
    except Exception as exc:  # noqa: BLE001 - every rank must reach the all-reduce
        from ..distributed import error_payload

        failure, sums = error_payload(exc), [0.0] * 5
    total = run.all_sum([*sums, failure is not None])
    if total[-1]:
        run.agree_on(failure)
    # the mean over the global batch: DDP averages the ranks' gradients, each of its share's mean
    torch.autograd.backward(out.loss * scale if scale != 1.0 else out.loss, inputs=params)
    return total[:-1]


def train(
    net: nn.Module,
    hardener: Hardener,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    config: TrainConfig,
    ckpt: Path,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    on_step: Callable[[int, int], None] | None = None,
    dist: DDPRun | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``net`` (a NormalizedModel) in place; return the per-epoch history.

    Row 0 of the history is the parent (epoch 0: quick evaluation only). ``on_step(epoch, step)``
    is called after every completed optimizer step (tests use it to interrupt). Raises
    ``HardenInterrupted`` on Ctrl-C after saving the state. With ``dist`` (torchrun) every rank
    calls this; the history is complete on rank 0 only.
    """
    main = dist is None or dist.is_main
    reporter = (reporter or NullReporter()) if main else NullReporter()
    device = config.device
    n = int(train_x.shape[0])
    world = dist.world if dist is not None else 1
    global_batch = config.batch_size * world
    steps_per_epoch = math.ceil(n / global_batch)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise RuntimeFailure("the model has no trainable parameters")
    model = dist.wrap(net) if dist is not None else net  # the training forward; evaluation uses net
    optimizer = torch.optim.Adam(params, lr=config.schedule.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.schedule.factor(step, steps_per_epoch))
    data_gen = torch.Generator()  # CPU: the data order doesn't depend on the device
    data_gen.manual_seed(seed_for(config.seed, "data"))
    dev_gen = torch.Generator(device=device)
    dev_gen.manual_seed(seed_for(config.seed, "device"))
    separate_eval = has_mode_dependent_layers(net)
    fingerprint = json.dumps(config.fingerprint, sort_keys=True)

    history: list[dict[str, Any]] = []
    epoch, start_step = 0, 0
    running = _zero_running()
    epoch_start_state = data_gen.get_state()
    if resume:
        with agreement(dist):  # every rank reads the same file (on several nodes: a shared folder)
            epoch, start_step, running, history, epoch_start_state = resume_from(
                ckpt,
                config.fingerprint,
                getattr(net, "inner", net),
                optimizer,
                scheduler,
                dev_gen,
                epochs=config.epochs,
                steps_per_epoch=steps_per_epoch,
                fresh_running=running,
            )

    def snapshot(ep: int, st: int) -> dict[str, Any]:
        inner = getattr(net, "inner", net)
        return {
            "fingerprint": fingerprint,
            "epoch": ep,
            "step": st,
            "model": {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()},
            "optimizer": _cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng(epoch_start_state, dev_gen),
            "running": dict(running),
            "history": [dict(r) for r in history],
            "processes": world,
        }

    reporter.start(
        {
            "method": hardener.name,
            "measure_name": measure_label(hardener),
            "penalty_name": getattr(hardener, "penalty_name", "penalty"),
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "n_train": n,
            "separate_eval": separate_eval,
            "resumed_at": (epoch, start_step) if resume else None,
            "processes": world,
            "batch_size": config.batch_size,
        }
    )
    row: dict[str, Any] | None
    if not history and main:
        row = {
            "epoch": 0,
            **quick_eval(
                net,
                hardener,
                eval_x,
                eval_y,
                config.threat,
                device,
                seed_for(config.seed, "eval"),
                config.eval_pgd_steps,
                config.eval_batch_size,
            ),
            "loss": math.nan,
            "ce": math.nan,
            "penalty": math.nan,
            "adv_ce": math.nan,
            "seconds": math.nan,
            "lr": config.schedule.lr,
        }
        history.append(row)
        reporter.epoch(row)

    done_steps = start_step
    updating = False
    try:
        while epoch < config.epochs:
            data_gen.set_state(epoch_start_state)
            perm = torch.randperm(n, generator=data_gen)
            t0 = time.perf_counter()
            net.train()
            for step in range(start_step, steps_per_epoch):
                idx = perm[step * global_batch : (step + 1) * global_batch]
                count, scale = int(idx.numel()), 1.0
                if dist is not None:
                    idx, count, scale = dist.share(idx)
                    dist.seed_step(dev_gen, config.seed, epoch, step)
                x = train_x[idx].to(device, non_blocking=True)
                y = train_y[idx].to(device, non_blocking=True)
                ctx = StepContext(
                    progress=epoch + step / steps_per_epoch,
                    generator=dev_gen,
                    separate_eval=separate_eval,
                    threat=config.threat,
                )
                if dist is None:
                    out = forward_backward(net, hardener, params, optimizer, x, y, ctx, where=(epoch, step))
                    sums = step_sums(out, count)
                else:
                    sums = ddp_forward_backward(
                        dist, model, hardener, params, optimizer, x, y, ctx, count, scale, where=(epoch, step)
                    )
                updating = True
                optimizer.step()
                scheduler.step()
                if dist is not None and separate_eval:
                    dist.average_buffers(net, count)
                updating = False
                done_steps = step + 1
                for key, value in zip(("count", "loss", "ce", "penalty", "adv_ce"), sums):
                    running[key] += value
                running["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                reporter.step(
                    epoch, done_steps, steps_per_epoch, {**_averages(running), **hardener.status(ctx.progress, config.threat)}
                )
                if on_step is not None:
                    on_step(epoch, done_steps)
            # end of epoch: quick evaluation, history row, checkpoint for the next epoch (rank 0)
            row = None
            with agreement(dist):
                if main:
                    ev = quick_eval(
                        net,
                        hardener,
                        eval_x,
                        eval_y,
                        config.threat,
                        device,
                        seed_for(config.seed, f"eval:{epoch + 1}"),
                        config.eval_pgd_steps,
                        config.eval_batch_size,
                    )
                    avg = _averages(running)
                    row = {
                        "epoch": epoch + 1,
                        **ev,
                        **avg,
                        "seconds": running["seconds"],
                        # the epoch's peak rate (every epoch anneals to the same floor, lr · final)
                        "lr": config.schedule.lr_at(epoch * steps_per_epoch, steps_per_epoch),
                    }
                    if isinstance(hardener, PGDAT):  # no penalty term
                        row["penalty"] = math.nan
                    # the schedule at the epoch's last step (certified training: ε, κ, β)
                    row.update(hardener.status(epoch + (steps_per_epoch - 1) / steps_per_epoch, config.threat))
                    if not isinstance(hardener, Combined):
                        row["adv_ce"] = math.nan
                    history.append(row)
                epoch += 1
                start_step = done_steps = 0
                running = _zero_running()
                epoch_start_state = data_gen.get_state()
                if main:
                    save_state(ckpt, snapshot(epoch, 0))
            if row is not None:
                reporter.epoch(row)
    except KeyboardInterrupt:
        saved = False
        if not updating and main:
            try:
                save_state(ckpt, snapshot(epoch, done_steps))
                saved = True
            except (KeyboardInterrupt, WriteError):  # a second Ctrl-C or a full disk while saving: the previous file is intact
                saved = False
        raise HardenInterrupted(ckpt, epoch, done_steps, steps_per_epoch, saved) from None
    finally:
        reporter.end()
        net.eval()
    return history


def measure_label(hardener: Hardener) -> str:
    """The name of the quantity ``hardener.measure`` returns (e.g. ‖Hz‖₂, ‖∂L/∂x‖₁)."""
    base = getattr(hardener, "base", hardener)
    return str(getattr(base, "measure_label", base.measure_name))


def _zero_running() -> dict[str, float]:
    return {"count": 0.0, "loss": 0.0, "ce": 0.0, "penalty": 0.0, "adv_ce": 0.0, "seconds": 0.0}


def _averages(running: dict[str, float]) -> dict[str, float]:
    c = running["count"] or math.nan
    return {k: running[k] / c for k in ("loss", "ce", "penalty", "adv_ce")}


def _cpu(obj: Any) -> Any:
    """Optimizer state on the CPU (tensors, dicts, lists, primitives only)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj
