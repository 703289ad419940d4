"""The engine: runs the selected checks over batches on a device, with seeds, progress and timing.

Every check gets a :class:`~robaudit.context.ScanContext` (:mod:`robaudit.context`); it never
touches devices, seeds or progress bars itself.
A check computes a :class:`~robaudit.parts.Part` (per-sample records of the samples this process
owns: all of them in a single-process scan, one shard's under ``--shard``/``torchrun``) and
combines merged parts into its section (:mod:`robaudit.parts`); a plugin check that only has
``run(ctx)`` still runs, in single-process scans.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ._version import __version__
from .attacks.base import ChannelsLastModel, autocast_dtype
from .config import ScanConfig
from .context import FixedBlockModel, ScanContext, Shard, default_workers, fit_batch_size, progress_bars, resolve_device
from .data.spec import DataSpec
from .geometry import passes
from .models.spec import LoadedModel
from .parts import CombineInfo, Part, merge_parts
from .results import MemoryFormat, Provenance, ScanResult

__all__ = [
    "resolve_device",
    "ScanContext",
    "run_scan",
    "FixedBlockModel",
    "Shard",
    "compute_parts",
    "combine_parts",
    "fit_batch_size",
    "decide_memory_format",
]


def build_checks(config: ScanConfig) -> list:
    from .checks.base import build_check

    options = dict(config.check_options)
    return [build_check(name, options.get(name, ())) for name in _with_requirements(config.checks)]


def is_legacy(check) -> bool:
    """A check that implements only ``run(ctx)`` (no per-sample parts): single-process only."""
    from .checks.base import Check

    return type(check).compute is Check.compute


LIGHT_CHECKS = frozenset({"clean", "margins", "spectra"})  # about one forward per sample, or the weights alone: no probe


def decide_memory_format(
    model: torch.nn.Module,
    data: DataSpec,
    config: ScanConfig,
    device: torch.device,
    positions: torch.Tensor,
    *,
    sharded: bool,
    fixed_batch: int | None,
):
    """(MemoryFormat, the channels_last copy or None) for ``model`` on ``device``: ``--channels-last``
    / ``--no-channels-last`` as asked, else measured on up to PROBE_ROWS of ``positions``' samples
    (:mod:`robaudit.memory_format`; no probe under ``--compute-block``, for ``--shard`` jobs and
    fixed-batch exports)."""
    from .memory_format import PROBE_ROWS, choose_memory_format

    probe = None
    light = set(config.checks) <= LIGHT_CHECKS
    needs_probe = (
        config.channels_last is None
        and not config.compute_block
        and not sharded
        and not fixed_batch
        and not light
        and len(data.input_shape) == 3
        and positions.numel() > 0
    )
    if needs_probe:
        rows = min(PROBE_ROWS, config.batch_size, int(positions.numel()))
        probe = data.batch(positions[:rows]).to(device)
    return choose_memory_format(
        model,
        probe,
        requested=config.channels_last,
        compute_block=config.compute_block,
        sharded=sharded,
        fixed_batch=fixed_batch,
        precision=config.precision,
        device=device,
        light=light,
    )


def make_context(
    loaded: LoadedModel,
    data: DataSpec,
    config: ScanConfig,
    *,
    device: torch.device | None = None,
    train_data: DataSpec | None = None,
    shard: Shard = Shard(),
    memory: tuple[MemoryFormat, torch.nn.Module | None] | None = None,
) -> ScanContext:
    """The context of a scan of ``shard``'s samples. ``memory``: the memory format already decided
    (torchrun: by rank 0) with its channels_last copy, if any; None: decided here."""
    from .memory_format import apply_memory_format

    device = device or resolve_device(config.device)
    autocast_dtype(config.precision, device)  # a precision the device can't run: a usage error before any work
    eps = config.radii(data.input_shape)
    plain = loaded.model.to(device)
    if memory is None:
        memory = decide_memory_format(
            plain, data, config, device, shard.positions(data.n), sharded=shard.count > 1, fixed_batch=loaded.info.fixed_batch
        )
    choice, converted = memory
    plain = apply_memory_format(plain, choice, converted)  # a converted copy: the caller's module keeps its format
    model = ChannelsLastModel(plain) if choice.channels_last else plain
    model = FixedBlockModel(model, config.compute_block) if config.compute_block else model
    if config.compute_block and device.type == "cuda":  # same shapes must also mean the same cuDNN algorithms
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return ScanContext(
        model=model,
        data=data,
        config=config,
        device=device,
        eps=eps,
        batch_size=config.batch_size,
        train_data=train_data,
        positions=shard.positions(data.n),
        lead=shard.lead,
        workers=default_workers() if config.workers is None else config.workers,
        plain_model=plain,
        fixed_batch=loaded.info.fixed_batch,
        memory_format=choice,
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
    with progress_bars(quiet) as progress:
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


def provenance(
    loaded: LoadedModel,
    data: DataSpec,
    config: ScanConfig,
    device: str,
    command_line: str | None,
    execution: str = "1 process",
    memory_format: MemoryFormat | None = None,
) -> Provenance:
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
