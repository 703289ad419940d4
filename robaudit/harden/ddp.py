"""Data-parallel ``robaudit harden`` under ``torchrun``: DistributedDataParallel over a split global batch.

``torchrun --nproc_per_node=N -m robaudit harden ...`` starts N processes (ranks); the process
group comes from :func:`robaudit.distributed.start_process_group` (NCCL on ``cuda:LOCAL_RANK``,
gloo on the CPU). Every rank draws the same seeded permutation of the training set; step k's
global batch is positions ``[k·G, (k+1)·G)`` of it, G = N × ``--batch-size``, exactly the batch a
single process with ``--batch-size G`` takes at step k, and rank r trains on the samples
``batch[r::N]`` of it (the assignment of torch's DistributedSampler, without its padding).

Gradients: DDP averages the ranks' parameter gradients. Each rank's loss is the mean over its
share (CE plus the mean per-sample penalty); it is scaled by ``N·b_r/b`` (b_r samples of the
step's b), so the average is the gradient of the mean over the whole global batch also when the
last batch of an epoch does not split evenly (the scale is exactly 1 otherwise). A rank whose
share is empty (a last batch of fewer than N samples) trains on a copy of the batch's first
sample with scale 0, so it still joins the all-reduce. The regularizers' input gradients
(``torch.autograd.grad`` w.r.t. the pixels, ``create_graph=True``) do not touch the parameters'
``.grad`` and so fire none of DDP's hooks; the one ``backward`` into the parameters per step does,
once per parameter (every use of a parameter — the passes at x and x + hz, the double-backward
graph — feeds the same gradient accumulator). So the wrapped forward may run several times per
step with ``find_unused_parameters=False`` and no ``static_graph``; every parameter must take part
in the loss (DDP's own rule).

BatchNorm: each rank's single train-mode forward normalizes with its own share's statistics (as
plain DDP; SyncBatchNorm runs on GPUs only), the regularizer's passes run in eval mode (the rule
of :mod:`.regularizers`), and after every step the ranks' running statistics are replaced by
their average weighted by the ranks' sample counts. DDP's buffer sync at every forward is off
(``forward_sync_buffers``/``broadcast_buffers``): it would overwrite the running statistics in
place while a double-backward graph still holds them.

Random draws (PGD starts, random projections, dropout) come, under torchrun, from per-rank
generators reseeded at every step from (seed, epoch, step, rank, N), so a resumed run needs no
per-rank state and continues exactly with the same N.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import (
    error_payload,
    raise_first_error,
    start_process_group,
    stop_process_group,
    torchrun_env,
    wait_for_all_ranks,
)
from .seeds import seed_for

__all__ = ["DDPRun", "start_ddp", "agreement"]


@dataclass
class DDPRun:
    """This process's place in a torchrun harden: rank, world size, device, backend."""

    rank: int
    world: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- data --------------------------------------------------------------------------------

    def share(self, batch: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """(this rank's indices of the global batch, its real sample count, its loss scale N·b_r/b)."""
        mine = batch[self.rank :: self.world]
        if mine.numel() == 0:
            return batch[:1], 0, 0.0
        return mine, int(mine.numel()), self.world * int(mine.numel()) / int(batch.numel())

    def seed_step(self, device_generator: torch.Generator, seed: int, epoch: int, step: int) -> None:
        """Reseed this rank's random streams for (epoch, step): attack starts, projections, dropout."""
        where = f"{epoch}:{step}:{self.rank}/{self.world}"
        device_generator.manual_seed(seed_for(seed, f"device:{where}"))
        torch.manual_seed(seed_for(seed, f"torch:{where}"))

    # --- collectives ---------------------------------------------------------------------------

    def wrap(self, net: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # no buffer broadcast at each forward (torch >= 2.14 names it forward_sync_buffers)
        params = inspect.signature(DistributedDataParallel).parameters
        sync: dict[str, Any] = (
            {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        )
        return DistributedDataParallel(net, device_ids=ids, **sync)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Elementwise sums over the ranks (float64)."""
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def agree_on(self, failure: dict | None) -> None:
        """Every rank passes its error payload (None when it went well); the first rank's error is
        raised on every rank (one line from rank 0, every rank with its exit code)."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, failure)
        raise_first_error(gathered, self.rank)

    def average_buffers(self, net: nn.Module, count: int) -> None:
        """Replace the floating-point buffers (BatchNorm running statistics) by their mean over the
        ranks weighted by each rank's sample count this step (integer buffers agree already)."""
        import torch.distributed as dist

        buffers = [b for b in net.buffers() if b.is_floating_point()]
        if not buffers:
            return
        with torch.no_grad():
            flat = torch.cat(
                [torch.full((1,), float(count), dtype=torch.float64, device=self.device)]
                + [b.detach().reshape(-1).to(torch.float64) * count for b in buffers]
            )
            dist.all_reduce(flat)
            total, offset = flat[0], 1
            for b in buffers:
                b.copy_((flat[offset : offset + b.numel()] / total).view_as(b).to(b.dtype))
                offset += b.numel()

    def close(self) -> None:
        stop_process_group()


def start_ddp(requested_device: str) -> DDPRun | None:
    """The torchrun run this process belongs to (process group started), or None outside torchrun."""
    if torchrun_env() is None:
        return None
    rank, world, device, backend = start_process_group(requested_device)
    return DDPRun(rank, world, device, backend)


@contextmanager
def _agreeing(run: DDPRun) -> Iterator[None]:
    failure = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every rank must reach the agreement, or the others wait forever
        failure = error_payload(exc)
    wait_for_all_ranks("an agreement: loading, an epoch's evaluation and checkpoint, or the output")
    run.agree_on(failure)


def agreement(run: DDPRun | None):
    """A block every rank runs (or only rank 0 does work in): an error in it on any rank is raised
    on every rank at its end. No-op outside torchrun."""
    return nullcontext() if run is None else _agreeing(run)
