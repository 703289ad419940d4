"""The engine: runs the selected checks over batches on a device, with seeds, progress and timing.

Every check gets a :class:`ScanContext`; it never touches devices, seeds or progress bars itself.
A check computes a :class:`~robaudit.parts.Part` (per-sample records of the samples this process
owns: all of them in a single-process scan, one shard's under ``--shard``/``torchrun``) and
combines merged parts into its section (:mod:`robaudit.parts`); a plugin check that only has
``run(ctx)`` still runs, in single-process scans.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ._version import __version__
from .config import ScanConfig
from .console import make_console
from .data.spec import DataSpec, as_positions
from .attacks.base import ChannelsLastModel, autocast_dtype
from .geometry import passes
from .errors import RuntimeFailure, UsageError
from .models.spec import LoadedModel
from .parts import CombineInfo, Part, Table, merge_parts
from .results import Flag, MemoryFormat, Provenance, ScanResult
from .rng import SampleRNG

__all__ = ["resolve_device", "ScanContext", "run_scan", "FixedBlockModel", "Shard", "compute_parts", "combine_parts", "fit_batch_size",
           "decide_memory_format"]


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
    progress: object = field(default_factory=_NullProgress)
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
                        task, completed=base + rows * min(max(float(f), 0.0), 0.999))
                    try:
                        if work_per_sample:
                            budget = float(work_per_sample) * rows
                            with passes.watch(lambda units: self.within(units / budget)):
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
        try:
            yield lambda k=1: self.progress.advance(task, k)
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
def _progress(quiet: bool) -> Iterator[object]:
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


def build_checks(config: ScanConfig) -> list:
    from .checks.base import build_check

    options = dict(config.check_options)
    return [build_check(name, options.get(name, ())) for name in _with_requirements(config.checks)]


def is_legacy(check) -> bool:
    """A check that implements only ``run(ctx)`` (no per-sample parts): single-process only."""
    from .checks.base import Check

    return type(check).compute is Check.compute


LIGHT_CHECKS = frozenset({"clean", "margins", "spectra"})  # about one forward per sample, or the weights alone: no probe


def decide_memory_format(model: torch.nn.Module, data: DataSpec, config: ScanConfig, device: torch.device,
                         positions: torch.Tensor, *, sharded: bool, fixed_batch: int | None):
    """(MemoryFormat, the channels_last copy or None) for ``model`` on ``device``: ``--channels-last``
    / ``--no-channels-last`` as asked, else measured on up to PROBE_ROWS of ``positions``' samples
    (:mod:`robaudit.memory_format`; no probe under ``--compute-block``, for ``--shard`` jobs and
    fixed-batch exports)."""
    from .memory_format import PROBE_ROWS, choose_memory_format

    probe = None
    light = set(config.checks) <= LIGHT_CHECKS
    needs_probe = (config.channels_last is None and not config.compute_block and not sharded and not fixed_batch
                   and not light and len(data.input_shape) == 3 and positions.numel() > 0)
    if needs_probe:
        rows = min(PROBE_ROWS, config.batch_size, int(positions.numel()))
        probe = data.batch(positions[:rows]).to(device)
    return choose_memory_format(model, probe, requested=config.channels_last, compute_block=config.compute_block,
                                sharded=sharded, fixed_batch=fixed_batch, precision=config.precision, device=device,
                                light=light)


def make_context(loaded: LoadedModel, data: DataSpec, config: ScanConfig, *, device: torch.device | None = None,
                 train_data: DataSpec | None = None, shard: Shard = Shard(),
                 memory: tuple[MemoryFormat, torch.nn.Module | None] | None = None) -> ScanContext:
    """The context of a scan of ``shard``'s samples. ``memory``: the memory format already decided
    (torchrun: by rank 0) with its channels_last copy, if any; None: decided here."""
    from .memory_format import apply_memory_format

    device = device or resolve_device(config.device)
    autocast_dtype(config.precision, device)  # a precision the device can't run: a usage error before any work
    eps = config.radii(data.input_shape)
    plain = loaded.model.to(device)
    if memory is None:
        memory = decide_memory_format(plain, data, config, device, shard.positions(data.n), sharded=shard.count > 1,
                                      fixed_batch=loaded.info.fixed_batch)
    choice, converted = memory
    plain = apply_memory_format(plain, choice, converted)  # a converted copy: the caller's module keeps its format
    model = ChannelsLastModel(plain) if choice.channels_last else plain
    model = FixedBlockModel(model, config.compute_block) if config.compute_block else model
    if config.compute_block and device.type == "cuda":  # same shapes must also mean the same cuDNN algorithms
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return ScanContext(
        model=model, data=data, config=config, device=device, eps=eps, batch_size=config.batch_size,
        train_data=train_data, positions=shard.positions(data.n), lead=shard.lead,
        workers=default_workers() if config.workers is None else config.workers, plain_model=plain,
        fixed_batch=loaded.info.fixed_batch, memory_format=choice,
    )


@contextmanager
def _counted(ctx: ScanContext, check, k: int, n: int) -> Iterator[None]:
    """The header line "check k/n: name" above the bars, and the check's count of gradient passes
    and HVPs (``ctx.passes``)."""
    ctx.announce(f"check {k + 1}/{n}: {check.name}")
    with passes.ledger() as counts:
        yield
    ctx.passes[check.name] = dict(counts)


def compute_parts(ctx: ScanContext, checks: Sequence, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Compute every check's part into ``ctx.parts`` (no combining); returns timings (s)."""
    timings: dict[str, float] = {}
    for check in checks:
        check.preflight(ctx)
    for k, check in enumerate(checks):
        t0 = time.perf_counter()
        if check.scope == "model" and not ctx.lead:
            ctx.parts[check.name] = Part()
        else:
            with _counted(ctx, check, k, len(checks)):
                ctx.parts[check.name] = check.compute(ctx)
        timings[check.name] = round(time.perf_counter() - t0, 4)
        if log:
            log(f"{check.name}: {timings[check.name]:.1f}s")
    return timings


def combine_parts(checks: Sequence, parts: dict[str, list[Part]], info: CombineInfo) -> None:
    """Combine each check's parts (from every process/shard) into ``info.sections``, in order."""
    for check in checks:
        tables, extras = merge_parts(parts[check.name], check.name)
        info.tables[check.name] = tables
        info.sections[check.name] = check.combine(tables, extras, info)


def run_scan(
    loaded: LoadedModel,
    data: DataSpec,
    config: ScanConfig,
    *,
    quiet: bool = True,
    command_line: str | None = None,
    log: Callable[[str], None] | None = None,
    train_data: DataSpec | None = None,
) -> ScanResult:
    """Run ``config.checks`` in order on ``data`` in this process and return the ScanResult.
    ``train_data`` (optional) lets checks compare training and test samples (margins: the loss gap)."""
    checks = build_checks(config)
    ctx = make_context(loaded, data, config, train_data=train_data)
    info = combine_info(data, config, ctx.eps)
    info.flags = ctx.flags
    info.sections = ctx.sections
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)
    with _progress(quiet) as progress:
        ctx.progress = progress
        if not quiet:
            _announce_estimate(ctx, checks)
        for check in checks:
            check.preflight(ctx)
        for k, check in enumerate(checks):
            t0 = time.perf_counter()
            with _counted(ctx, check, k, len(checks)):
                if is_legacy(check):
                    ctx.sections[check.name] = check.run(ctx)
                else:
                    part = check.compute(ctx)
            if not is_legacy(check):
                ctx.parts[check.name] = part
                tables, extras = merge_parts([part], check.name)
                info.tables[check.name] = tables
                ctx.sections[check.name] = check.combine(tables, extras, info)
            timings[check.name] = round(time.perf_counter() - t0, 4)
            if log:
                log(f"{check.name}: {timings[check.name]:.1f}s")
    return ScanResult(
        provenance=provenance(loaded, data, config, str(ctx.device), command_line, memory_format=ctx.memory_format),
        sections=dict(ctx.sections),
        flags=tuple(ctx.flags),
        model_warnings=tuple(loaded.info.warnings),
        timings=timings,
        passes=dict(ctx.passes),
    )


def _announce_estimate(ctx: ScanContext, checks: Sequence) -> None:
    """The line "estimate: ≤ N model passes per sample ... ≈ T" before the first check
    (:mod:`robaudit.estimate`). A model that fails on the timed batch gets no line: the clean check
    then reports the failure in its own words."""
    from .estimate import estimate_scan

    try:
        estimate = estimate_scan(ctx, checks)
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; the scan's own checks report errors
        return
    ctx.announce(estimate.line())


def combine_info(data: DataSpec, config: ScanConfig, eps: tuple[float, ...]) -> CombineInfo:
    return CombineInfo(n=data.n, class_names=data.class_names, input_shape=data.input_shape, eps=eps, config=config)


def provenance(loaded: LoadedModel, data: DataSpec, config: ScanConfig, device: str, command_line: str | None,
               execution: str = "1 process", memory_format: MemoryFormat | None = None) -> Provenance:
    info = loaded.info
    return Provenance(
        robaudit_version=__version__,
        torch_version=torch.__version__,
        device=device,
        seed=config.seed,
        checkpoint=info.path,
        checkpoint_sha256=info.sha256,
        checkpoint_format=info.format,
        arch=info.arch,
        dataset=data.name,
        split=data.split,
        n=data.n,
        input_shape=data.input_shape,
        class_names=data.class_names,
        data_source=data.source,
        normalization_mean=info.mean,
        normalization_std=info.std,
        fixed_batch=info.fixed_batch,
        command_line=command_line if command_line is not None else shlex.join(["robaudit", *sys.argv[1:]]),
        weights=info.weights,
        sample=data.sample,
        indices=tuple(int(i) for i in data.dataset_indices.tolist()),
        compute_block=config.compute_block,
        execution=execution,
        precision=config.precision,
        channels_last=memory_format.channels_last if memory_format is not None else bool(config.channels_last),
        memory_format=memory_format,
    )


def _with_requirements(names: tuple[str, ...]) -> list[str]:
    """Order checks so each one's ``requires`` (and its ``after`` among the selected) run first
    (``clean`` is always first)."""
    from .checks import CHECKS

    ordered: list[str] = []

    selected = {n.strip().lower() for n in names}

    def visit(name: str) -> None:
        if name in ordered:
            return
        cls = CHECKS.get(name)
        for dep in cls.requires:
            visit(dep)
        for dep in getattr(cls, "after", ()):
            if dep in selected:
                visit(dep)
        ordered.append(name)

    visit("clean")
    for n in names:
        visit(n.strip().lower())
    return ordered
