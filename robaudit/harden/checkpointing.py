"""Resume checkpoints of ``robaudit harden``: ``<out>.ckpt``, written atomically.

The file is a ``torch.save`` of tensors and primitives only (dicts, lists, str, int, float,
bool, None), so it loads back with ``torch.load(weights_only=True)``: no code runs when a
checkpoint is read. It holds the raw model's state dict, the Adam and LR-scheduler state, the
position (completed epochs, completed steps of the current epoch), every random state the run
draws from (torch CPU, every CUDA device, the data-order generator as it was at the start of the
current epoch, the device generator of attacks/projections), the running sums of the current
epoch and the per-epoch history, plus a fingerprint of the run's settings that ``--resume``
checks: a resumed run with the same settings and seed gives bit-identical weights on CPU.
Under torchrun rank 0 writes it; the position counts global steps (``batch_size`` in the fingerprint
is the global batch) and ``processes`` records how many processes wrote it, so a run may resume
on another number of processes with the same global batch (:mod:`.ddp`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UsageError
from ..outputs import atomic_write

__all__ = [
    "FORMAT",
    "ckpt_path_for",
    "save_state",
    "load_state",
    "resume_from",
    "capture_rng",
    "restore_rng",
    "check_fingerprint",
]

FORMAT = "robaudit.harden/1"
# What a checkpoint holds: field → (type, what it is). load_state checks every one, so a damaged or
# foreign file is one CheckpointError (exit 3) naming the fields, never a KeyError mid-resume.
FIELDS: dict[str, tuple[type, str]] = {
    "fingerprint": (str, "the run's settings as JSON"),
    "epoch": (int, "completed epochs"),
    "step": (int, "completed steps of the current epoch"),
    "model": (dict, "the model's state dict"),
    "optimizer": (dict, "the Adam state"),
    "scheduler": (dict, "the LR-scheduler state"),
    "rng": (dict, "the random states"),
    "running": (dict, "the current epoch's running sums"),
    "history": (list, "the per-epoch rows"),
}
RNG_FIELDS = ("torch", "data_epoch_start", "device_generator", "cuda")
# The per-epoch row fields the history table prints (trainer.train writes them; NaN where unused).
HISTORY_FIELDS = ("epoch", "loss", "ce", "penalty", "measure", "clean_acc", "robust_acc", "lr", "seconds")


def ckpt_path_for(out: str | os.PathLike[str]) -> Path:
    """``hardened.safetensors`` → ``hardened.safetensors.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """torch.save into memory, then written atomically (robaudit.outputs): a failed write (disk
    full, a file-size limit) is a WriteError and leaves the previous checkpoint loadable."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write(path, buffer.getbuffer())


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state` (``weights_only=True``, on the CPU)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--resume: no checkpoint at {p} (it is written at the end of every epoch and on Ctrl-C)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, unexpected objects
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:200]  # torch's are many lines
        raise CheckpointError(f"{p} is not a readable robaudit harden checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a robaudit harden checkpoint (format {FORMAT})")
    _check_fields(state, p)
    return state


def _check_fields(state: dict[str, Any], path: Path) -> None:
    """Every field of :data:`FIELDS` present with its type; tensors where tensors belong."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is damaged or not from this robaudit: {what}; delete it to start over")

    missing = [k for k in FIELDS if k not in state]
    if missing:
        raise bad("missing " + ", ".join(f"{k} ({FIELDS[k][1]})" for k in missing))
    for key, (typ, what) in FIELDS.items():
        value = state[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise bad(f"{key} ({what}) is {type(value).__name__}, expected {typ.__name__}")
    for key in ("epoch", "step"):
        if state[key] < 0:
            raise bad(f"{key} is negative ({state[key]})")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise bad("model holds something other than named tensors")
    rng = state["rng"]
    missing = [k for k in RNG_FIELDS if k not in rng]
    if missing:
        raise bad(f"rng is missing {', '.join(missing)}")
    for key in ("torch", "data_epoch_start"):
        if not (isinstance(rng[key], torch.Tensor) and rng[key].dtype == torch.uint8):
            raise bad(f"rng.{key} is not a random-generator state (a uint8 tensor)")
    if rng["device_generator"] is not None and not isinstance(rng["device_generator"], torch.Tensor):
        raise bad("rng.device_generator is not a random-generator state")
    if rng["cuda"] is not None and not (
        isinstance(rng["cuda"], list) and all(isinstance(t, torch.Tensor) for t in rng["cuda"])
    ):
        raise bad("rng.cuda is not a list of random-generator states")
    if not all(_is_number(v) for v in state["running"].values()):
        raise bad("running holds something other than numbers")
    for i, row in enumerate(state["history"]):
        if not isinstance(row, dict):
            raise bad(f"history[{i}] is not a per-epoch row")
        missing = [k for k in HISTORY_FIELDS if not _is_number(row.get(k))]
        if missing:
            raise bad(f"history[{i}] lacks the numbers {', '.join(missing)}")
    if len(state["history"]) != state["epoch"] + 1:
        raise bad(
            f"history has {len(state['history'])} rows for {state['epoch']} completed epochs (expected the parent's + one per epoch)"
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_layout(saved: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Keys of ``fresh`` that ``saved`` lacks or holds with another type (int and float count as one)."""

    def kind(v: Any) -> str:
        return "number" if _is_number(v) else type(v).__name__

    return [k for k, v in fresh.items() if k not in saved or (v is not None and kind(saved[k]) != kind(v))]


def resume_from(
    path: Path,
    fingerprint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device_generator: torch.Generator | None,
    *,
    epochs: int,
    steps_per_epoch: int,
    fresh_running: dict[str, float],
) -> tuple[int, int, dict[str, float], list[dict[str, Any]], torch.Tensor]:
    """Load ``path`` into the model, optimizer, scheduler and random states of a run with these
    settings; return (epoch, step, running sums, history, the data generator's epoch-start state).
    ``fresh_running`` is a new run's running sums (their keys); the scheduler's own state_dict gives
    the layout its saved state must have (its numbers and lists).

    Settings that differ are a UsageError naming them; contents that don't fit (damaged or edited
    files) a CheckpointError (exit 3).
    """
    state = load_state(path)
    check_fingerprint(state["fingerprint"], fingerprint, path)
    epoch, step = state["epoch"], state["step"]
    if epoch > epochs or step > steps_per_epoch or (epoch == epochs and step):
        raise CheckpointError(
            f"{path} is damaged: it is at epoch {epoch}, step {step} of a run of {epochs} epochs × {steps_per_epoch} "
            f"steps; delete it to start over"
        )
    # the scheduler's numbers and lists (its bool flags vary between torch versions and are harmless)
    scheduler_numbers = {k: v for k, v in scheduler.state_dict().items() if not isinstance(v, bool)}
    for name, saved, fresh in (
        ("scheduler", state["scheduler"], scheduler_numbers),
        ("running", state["running"], fresh_running),
    ):
        wrong = _same_layout(saved, fresh)
        if wrong:
            raise CheckpointError(f"{path} is damaged: {name} lacks or mistypes {', '.join(wrong)}; delete it to start over")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for param, slots in optimizer.state.items():
            for key, value in slots.items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {key!r} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}"
                    )
        scheduler.load_state_dict(state["scheduler"])
        epoch_start = restore_rng(state["rng"], device_generator)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path} does not fit this run ({type(exc).__name__}: {first}); delete it to start over"
        ) from None
    running = {k: float(v) for k, v in state["running"].items()}
    return epoch, step, running, [dict(r) for r in state["history"]], epoch_start


def capture_rng(data_epoch_start: torch.Tensor, device_generator: torch.Generator | None) -> dict[str, Any]:
    """Every random state a run draws from (CUDA ones only when CUDA is initialised)."""
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "data_epoch_start": data_epoch_start.clone(),
        "device_generator": device_generator.get_state() if device_generator is not None else None,
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return rng


def restore_rng(rng: dict[str, Any], device_generator: torch.Generator | None) -> torch.Tensor:
    """Restore the global and device-generator states; return the data generator's epoch-start state."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        states = rng["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if device_generator is not None and rng.get("device_generator") is not None:
        device_generator.set_state(rng["device_generator"])
    return rng["data_epoch_start"]


def check_fingerprint(saved: str, current: dict[str, Any], path: Path) -> None:
    """A resumed run must have the settings of the interrupted one; name the ones that differ."""
    from ..errors import InputError
    from ..jsonio import parse_json

    try:
        old = parse_json(saved, "its settings fingerprint")
    except InputError:
        old = None
    if not isinstance(old, dict):
        raise CheckpointError(f"{path} has a malformed settings fingerprint; delete it and start over")
    new = parse_json(json.dumps(current, sort_keys=True), "this run's settings")
    diffs = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if any(d.startswith("batch_size:") for d in diffs):  # torchrun: the global batch, processes × --batch-size
        diffs.append(
            "batch_size is the global batch (processes × --batch-size): keep it, e.g. with --batch-size "
            f"{old.get('batch_size')}/N on N processes"
        )
    if diffs:
        raise UsageError(
            f"--resume: {path} was written by a run with other settings ({'; '.join(diffs)}); "
            f"rerun with the original options, or delete {path.name} to start over"
        )
