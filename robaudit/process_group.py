"""The process group of a ``torchrun`` job: which rank this is, its device, starting and stopping
the group with heartbeats (:mod:`robaudit.liveness`), and one error agreed by every rank.

Used by multi-process scans (:mod:`robaudit.distributed`) and hardening (``harden`` under torchrun);
:mod:`robaudit.distributed` re-exports these names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .context import resolve_device
from .errors import RobauditError

__all__ = [
    "torchrun_env",
    "start_process_group",
    "wait_for_all_ranks",
    "stop_process_group",
    "error_payload",
    "raise_first_error",
    "agreed_error",
]


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ["RANK"]) if world > 1 else 0
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        return None
    return (rank, world, local) if world > 1 else None


def _rank_device(requested: str, local_rank: int) -> torch.device:
    """Each rank's device: ``cuda:LOCAL_RANK`` for auto/cuda when CUDA is there, else as asked."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device


_LIVENESS: Any = None  # this process's robaudit.liveness.Liveness while a process group is up


def start_process_group(requested_device: str) -> tuple[int, int, torch.device, str]:
    """(rank, world size, this rank's device, backend) under torchrun, the process group started:
    NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU, with robaudit's collective timeout and heartbeats
    (:mod:`robaudit.liveness`)."""
    import torch.distributed as dist

    from .liveness import Liveness, dist_timeout

    global _LIVENESS
    rank, world, local = torchrun_env()  # type: ignore[misc]
    device = _rank_device(requested_device, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=dist_timeout())
    if _LIVENESS is None:
        _LIVENESS = Liveness.for_process_group(rank, world)
    return rank, world, device, backend


def wait_for_all_ranks(what: str) -> None:
    """Every rank's next collective waits here first, polling the store with heartbeats, so a lost
    rank is named within ``$ROBAUDIT_PEER_TIMEOUT`` seconds instead of blocking a collective."""
    if _LIVENESS is not None:
        _LIVENESS.wait_all(what)


def stop_process_group() -> None:
    """Stop the heartbeats and destroy the process group (idempotent)."""
    import torch.distributed as dist

    global _LIVENESS
    if _LIVENESS is not None:
        _LIVENESS.stop()
        _LIVENESS = None
    if dist.is_initialized():
        dist.destroy_process_group()


def error_payload(exc: BaseException) -> dict:
    """A rank's error as a picklable payload: its one line and exit code (4 for an internal error)."""
    if isinstance(exc, RobauditError):
        return {"error": str(exc), "exit_code": exc.exit_code}
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"error": f"internal error: {type(exc).__name__}: {first}", "exit_code": 4}


def agreed_error(message: str, exit_code: int, rank: int) -> RobauditError:
    err = RobauditError(message)
    err.exit_code = exit_code
    err.reported_elsewhere = rank != 0  # type: ignore[attr-defined]  # rank 0 prints it; the others exit with its code
    return err


def raise_first_error(payloads: Sequence[dict | None], rank: int) -> None:
    """Given every rank's payload (None or without "error" when it went well), raise the first
    rank's error on this rank: one line naming the rank (none when every rank failed alike)."""
    failed = [(r, p) for r, p in enumerate(payloads) if p and "error" in p]
    if not failed:
        return
    r, p = failed[0]
    alike = len(failed) == len(payloads) and all(q["error"] == p["error"] for _, q in failed)
    raise agreed_error(p["error"] if alike else f"rank {r}: {p['error']}", p["exit_code"], rank)
