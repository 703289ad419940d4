"""Resume checkpoints of ``robaudit harden``: ``<out>.ckpt``, written atomically.

The file is a ``torch.save`` of tensors and primitives only (dicts, lists, str, int, float,
bool, None), so it loads back with ``torch.load(weights_only=True)``: no code runs when a
checkpoint is read. It holds the raw model's state dict, the Adam and LR-scheduler state, the
position (completed epochs, completed steps of the current epoch), every random state the run
draws from (torch CPU, every CUDA device, the data-order generator as it was at the start of the
current epoch, the device generator of attacks/projections), the running sums of the current
epoch and the per-epoch history, plus a fingerprint of the run's settings that ``--resume``
checks: a resumed run with the same settings and seed gives bit-identical weights on CPU.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UsageError

__all__ = ["FORMAT", "ckpt_path_for", "save_state", "load_state", "capture_rng", "restore_rng", "check_fingerprint"]

FORMAT = "robaudit.harden/1"


def ckpt_path_for(out: str | os.PathLike[str]) -> Path:
    """``hardened.safetensors`` → ``hardened.safetensors.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, then an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return state


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
    try:
        old = json.loads(saved)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path} has a malformed settings fingerprint; delete it and start over") from None
    new = json.loads(json.dumps(current, sort_keys=True))
    diffs = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        raise UsageError(
            f"--resume: {path} was written by a run with other settings ({'; '.join(diffs)}); "
            f"rerun with the original options, or delete {path.name} to start over"
        )
