"""A scan under ``torchrun``: every rank scans its shard (:func:`robaudit.distributed.run_shard`),
rank 0 gathers the payloads with ``torch.distributed.gather_object`` and combines them
(:func:`robaudit.distributed.merge_payloads`); an error on any rank is raised on every rank. The
memory format is decided once, by rank 0, and broadcast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .config import ScanConfig
from .context import Shard
from .data.spec import DataSpec
from .distributed import merge_payloads, run_shard
from .errors import RobauditError
from .models.spec import LoadedModel
from .process_group import agreed_error, error_payload, start_process_group, stop_process_group, wait_for_all_ranks
from .results import ScanResult

__all__ = ["run_torchrun", "agreed_memory_format"]


def agreed_memory_format(loaded: LoadedModel, data: DataSpec, config: ScanConfig, device: torch.device, rank: int, world: int):
    """The memory format every rank runs (robaudit.memory_format): rank 0 decides — probing its own
    samples when neither --channels-last nor --no-channels-last is given — and broadcasts the
    decision, so all ranks use the same kernels. Returns (MemoryFormat, rank 0's channels_last
    copy or None)."""
    import torch.distributed as dist

    from .engine import decide_memory_format
    from .memory_format import MemoryFormat

    decided: list[Any] = [None]
    converted = None
    if rank == 0:
        try:
            decided[0], converted = decide_memory_format(
                loaded.model.to(device),
                data,
                config,
                device,
                Shard(0, world).positions(data.n),
                sharded=False,
                fixed_batch=loaded.info.fixed_batch,
            )
        except Exception as exc:  # noqa: BLE001 - every rank must reach the broadcast; the scan then reports real errors
            decided[0] = MemoryFormat("contiguous", "auto", f"the probe failed on rank 0 ({type(exc).__name__})")
    dist.broadcast_object_list(decided, src=0)
    return decided[0], converted


def run_torchrun(
    loaded: LoadedModel,
    data: DataSpec,
    config: ScanConfig,
    *,
    quiet: bool,
    command_line: str | None,
    train_data: DataSpec | None = None,
    log: Callable[[str], None] | None = None,
) -> ScanResult | None:
    """Scan this rank's shard, gather every payload on rank 0 and combine there. Returns the
    ScanResult on rank 0, None elsewhere. An error on any rank is raised on every rank."""
    import torch.distributed as dist

    rank, world, device, backend = start_process_group(config.device)
    try:
        t0 = time.perf_counter()
        if rank == 0 and not quiet:
            from .console import make_console

            make_console(stderr=True).print(
                f"scanning {data.n} samples on {world} processes ({backend}), ≈{-(-data.n // world)} each; "
                f"the bars show rank 0's share",
                markup=False,
                highlight=False,
            )
        memory = agreed_memory_format(loaded, data, config, device, rank, world)
        try:
            payload: Any = run_shard(
                loaded,
                data,
                config,
                Shard(rank, world),
                device=device,
                quiet=quiet or rank != 0,
                command_line=command_line,
                log=log if rank == 0 else None,
                train_data=train_data,
                label=f"[rank 0/{world}]",
                memory=memory,
            )
        except Exception as exc:  # noqa: BLE001 - every rank must reach the gather, or the others wait forever
            payload = error_payload(exc)
        wait_for_all_ranks("every shard scanned")  # the early ones wait here, not in the gather
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
        outcome: list[Any] = [None]
        if rank == 0:
            assert gathered is not None  # rank 0 gathers
            failed = [(r, p) for r, p in enumerate(gathered) if "error" in p]
            if failed:
                outcome[0] = {"error": f"rank {failed[0][0]}: {failed[0][1]['error']}", "exit_code": failed[0][1]["exit_code"]}
            else:
                try:
                    result = merge_payloads(
                        gathered, [f"rank {r}" for r in range(world)], f"torchrun: {world} processes ({backend})"
                    )
                    outcome[0] = {"ok": True}
                except RobauditError as exc:
                    outcome[0] = {"error": str(exc), "exit_code": exc.exit_code}
        wait_for_all_ranks("rank 0 combined the shards")
        dist.broadcast_object_list(outcome, src=0)
        if "error" in outcome[0]:
            raise agreed_error(outcome[0]["error"], outcome[0]["exit_code"], rank)
        if rank == 0 and log:
            log(f"total: {time.perf_counter() - t0:.1f}s on {world} processes")
        return result if rank == 0 else None
    finally:
        stop_process_group()
