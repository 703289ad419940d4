"""What a check runs in: the :class:`ScanContext` (model, data, config, device, batched execution
with progress and out-of-memory retries, seeded random streams), the device, the process's
:class:`Shard` of the samples and the fixed-shape :class:`FixedBlockModel`.

:mod:`robaudit.engine` builds a context per scan (``make_context``) and runs the checks in it;
checks receive it and never touch devices, seeds or progress bars themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import ScanConfig
from .console import make_console
from .data.spec import DataSpec, as_positions
from .errors import RuntimeFailure, UsageError
from .geometry import passes
from .parts import Table
from .results import Flag, MemoryFormat
from .rng import SampleRNG

__all__ = ["resolve_device", "ScanContext", "FixedBlockModel", "Shard", "fit_batch_size", "default_workers", "progress_bars"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if present, else mps, else cpu. An explicit device that isn't there is a usage error."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _seed_for(seed: int, tag: str) -> int:
    """A stable 63-bit seed per (scan seed, purpose), independent of the order checks run in."""
    digest = hashlib.sha256(f"{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _NullProgress:
    console = None

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass

    def remove_task(self, *a, **k):
        pass


class FixedBlockModel(torch.nn.Module):
    """Runs ``model`` on blocks of exactly ``block`` rows (the last padded with zeros, its padded
    outputs dropped), so every call the model sees has the same shape.

    Why: BLAS and convolution libraries choose their kernel, and so the order of a row's float
    additions, from the batch size; the same sample then gets results that differ in the last
    bits with the batch it lands in (on the demo CNN: any batch of fewer than 16 rows). With one
    shape for every call a row's arithmetic no longer depends on its batch, so the per-sample
    results — and the JSON — are bit-identical at any ``--batch-size``, shard or process count.
    Costs up to ``block − 1`` padded rows per call (``--compute-block``). The same chunking runs a
    fixed-batch export (:class:`robaudit.models.fixed_batch.FixedBatchModel`), which it may wrap."""

    def __init__(self, model: torch.nn.Module, block: int) -> None:
        super().__init__()
        self.model = model
        self.block = int(block)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .models.fixed_batch import forward_in_blocks

        return forward_in_blocks(self.model, x, self.block)


@dataclass(frozen=True)
class Shard:
    """This process's share of the samples: positions ``p`` with ``p % count == index``
    (interleaved, so every shard sees every class of a class-sorted folder). ``lead`` computes the
    model-level checks (spectra, landscape, the training-set margins)."""

    index: int = 0
    count: int = 1

    @property
    def lead(self) -> bool:
        return self.index == 0

    def positions(self, n: int) -> torch.Tensor:
        return torch.arange(self.index, n, self.count)


@dataclass
class ScanContext:
    """What a check sees: the wrapped model, the data, the config, and batched execution helpers.

    ``positions``: the scan positions (0..n−1, dataset order of the scanned samples) this process
    computes — every sample in a single-process scan. ``parts``: this process's parts of the
    checks already run (their per-sample tables, see :mod:`robaudit.parts`); ``sections``: the
    combined sections of the checks already run (single-process scans only, for checks that only
    implement ``run``); ``cache`` values shared between checks (``clean_logits`` [len(positions),
    K], rows aligned with ``positions``); ``flags`` validity warnings to report.
    ``fixed_batch``: the only batch size the model runs at (``ModelInfo.fixed_batch``); the model
    pads smaller calls itself, and ``batch_size`` is kept a multiple of it so only last batches pad.
    """

    model: torch.nn.Module
    data: DataSpec
    config: ScanConfig
    device: torch.device
    eps: tuple[float, ...]
    progress: Any = field(default_factory=_NullProgress)  # a rich Progress, or _NullProgress (same methods)
    batch_size: int = 256
    train_data: DataSpec | None = None  # first --train-n training samples, for train/test comparisons
    positions: torch.Tensor | None = None
    lead: bool = True
    workers: int = 0
    cache: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    plain_model: torch.nn.Module | None = None  # the model without FixedBlockModel (model-level checks)
    fixed_batch: int | None = None
    passes: dict = field(default_factory=dict)  # check name → {"grad": n, "hvp": n} (geometry.passes)
    memory_format: MemoryFormat | None = None  # how the model's memory format was chosen (robaudit.memory_format)
    _within: Callable[[float], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = torch.arange(self.data.n)
        if self.plain_model is None:
            self.plain_model = self.model.model if isinstance(self.model, FixedBlockModel) else self.model
        self.batch_size = fit_batch_size(self.batch_size, self.fixed_batch)

    def generator(self, tag: str) -> torch.Generator:
        """A torch.Generator on the scan device, seeded from (seed, tag), for model-level draws
        (the same in every process). Per-sample draws use :meth:`sample_rng`."""
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed_for(self.config.seed, tag))
        return g

    def sample_rng(self, tag: str, positions) -> SampleRNG:
        """Per-sample random streams for the samples at scan ``positions``, keyed by (seed, tag,
        dataset index): a sample's draws don't depend on its batch, shard or process."""
        pos = as_positions(positions, self.data.n)
        return SampleRNG.for_indices(self.config.seed, tag, self.data.dataset_indices[pos], self.device)

    def local(self, check: str, table: str = "samples") -> Table:
        """This process's table ``table`` of check ``check`` (empty if it did not run)."""
        part = self.parts.get(check)
        return part.table(table) if part is not None else Table({"positions": []})

    def map_batches(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, slice], None],
        indices: torch.Tensor | None = None,
        description: str = "",
        data: DataSpec | None = None,
        work_per_sample: float | None = None,
    ) -> None:
        """Call ``fn(x, y, sl)`` on consecutive batches (x, y on the device; ``sl`` indexes
        ``indices``) of the samples at scan positions ``indices`` of ``data`` (default: this
        process's positions of the scanned data; all samples of other data). Images are read by
        the data's loader (worker processes for lazy datasets, pinned memory on CUDA) in chunks of
        the batch size. On out-of-memory the batch size halves and the batch is retried; at batch
        size 1 it is a RuntimeFailure. The halved size sticks for the rest of the scan.

        Progress: the bar counts samples and moves within a batch too — by :meth:`within`
        (an attack's per-iteration callback), or, given ``work_per_sample`` (the gradient passes
        + HVPs a sample is expected to take, :mod:`robaudit.geometry.passes`), by the passes
        counted so far (capped just below the batch's end, so an estimate too low stalls late,
        never overshoots)."""
        data = self.data if data is None else data
        assert self.positions is not None  # set in __post_init__
        if indices is None:
            idx = self.positions if data is self.data else torch.arange(data.n)
        else:
            idx = as_positions(indices, data.n)
        total = int(idx.numel())
        task = self.progress.add_task(description or "working", total=total)
        done = 0
        pin = self.device.type == "cuda"
        workers = self.workers if not data.in_memory else 0
        try:
            for xb, yb in data.batches(idx, self.batch_size, workers=workers, pin_memory=pin):
                start, count = 0, int(xb.shape[0])
                while start < count:
                    stop = min(start + self.batch_size, count)
                    x = xb[start:stop].to(self.device, non_blocking=True)
                    y = yb[start:stop].to(self.device, non_blocking=True)
                    base, rows = done + start, stop - start
                    self._within = lambda f, base=base, rows=rows: self.progress.update(
                        task, completed=base + rows * min(max(float(f), 0.0), 0.999)
                    )
                    try:
                        if work_per_sample:
                            budget = float(work_per_sample) * rows
                            with passes.watch(lambda units: self.within(units / budget)):  # noqa: B023 - called within this iteration
                                fn(x, y, slice(done + start, done + stop))
                        else:
                            fn(x, y, slice(done + start, done + stop))
                    except Exception as exc:  # noqa: BLE001 - only OOM is handled
                        if not _is_oom(exc):
                            raise
                        del x, y
                        self._halve()
                        continue
                    self.progress.update(task, completed=done + stop)
                    start = stop
                done += count
        finally:
            self._within = None
            self.progress.remove_task(task)

    def within(self, fraction: float) -> None:
        """Report the share (0..1) of the current :meth:`map_batches` batch done (no-op outside
        one): pass it as an attack's ``progress`` callback."""
        if self._within is not None:
            self._within(fraction)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar of ``total`` steps for work that is not batches of samples (surface
        grids, model-level loops); yields ``advance(k=1)``."""
        task = self.progress.add_task(description, total=total)

        def advance(k: int = 1) -> None:
            self.progress.advance(task, k)

        try:
            yield advance
        finally:
            self.progress.remove_task(task)

    def announce(self, text: str) -> None:
        """A line above the bars (nothing with -q): plain text, never markup."""
        console = getattr(self.progress, "console", None)
        if console is not None:
            console.print(text, markup=False, highlight=False)

    def _halve(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        smallest = self.fixed_batch or 1
        if self.batch_size <= smallest:
            which = " (the model's fixed batch)" if self.fixed_batch else ""
            raise RuntimeFailure(
                f"out of memory on {self.device} even at batch size {smallest}{which}; "
                f"use a smaller model/input or --device cpu"
            ) from None
        self.batch_size = fit_batch_size(self.batch_size // 2, self.fixed_batch)
        if isinstance(self.model, FixedBlockModel) and self.model.block > self.batch_size:
            self.model.block = self.batch_size  # the block never exceeds the batch


def fit_batch_size(batch_size: int, fixed_batch: int | None) -> int:
    """``batch_size`` rounded down to a multiple of ``fixed_batch`` (at least one multiple)."""
    if not fixed_batch:
        return max(1, int(batch_size))
    return fixed_batch * max(1, int(batch_size) // fixed_batch)


@contextmanager
def progress_bars(quiet: bool) -> Iterator[object]:
    """Rich progress bars on stderr (transient), or a no-op stand-in when ``quiet``."""
    if quiet:
        yield _NullProgress()
        return
    console = make_console(stderr=True)  # markup off: descriptions hold attack labels like pgd[steps=50]
    with Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield progress


def default_workers() -> int:
    """DataLoader worker processes for lazy datasets: one per core beyond the first, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))
