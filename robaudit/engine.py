"""The engine: runs the selected checks over batches on a device, with seeds, progress and timing.

Every check gets a :class:`ScanContext`; it never touches devices, seeds or progress bars itself.
"""
from __future__ import annotations

import hashlib
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .config import ScanConfig
from .console import make_console
from .data.spec import DataSpec
from .errors import RuntimeFailure, UsageError
from .models.spec import LoadedModel
from .results import Flag, Provenance, ScanResult

__all__ = ["resolve_device", "ScanContext", "run_scan"]


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
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass

    def remove_task(self, *a, **k):
        pass


@dataclass
class ScanContext:
    """What a check sees: the wrapped model, the data, the config, and batched execution helpers.

    ``cache`` holds values computed once and shared between checks (e.g. clean logits);
    ``sections`` the results of the checks already run; ``flags`` validity warnings to report.
    """

    model: torch.nn.Module
    data: DataSpec
    config: ScanConfig
    device: torch.device
    eps: tuple[float, ...]
    progress: object = field(default_factory=_NullProgress)
    batch_size: int = 256
    train_data: DataSpec | None = None  # first --train-n training samples, for train/test comparisons
    cache: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)

    def generator(self, tag: str) -> torch.Generator:
        """A torch.Generator on the scan device, seeded from (seed, tag): same seed → same draws."""
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed_for(self.config.seed, tag))
        return g

    def map_batches(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, slice], None],
        indices: torch.Tensor | None = None,
        description: str = "",
        data: DataSpec | None = None,
    ) -> None:
        """Call ``fn(x, y, sl)`` on consecutive batches (x, y on the device; ``sl`` indexes
        ``indices``) of ``data`` (default: the scanned data). On out-of-memory the batch size halves
        and the batch is retried; at batch size 1 it is a RuntimeFailure. The halved size sticks
        for the rest of the scan."""
        data = self.data if data is None else data
        idx = torch.arange(data.n) if indices is None else indices
        total = int(idx.numel())
        task = self.progress.add_task(description or "working", total=total)
        start = 0
        try:
            while start < total:
                stop = min(start + self.batch_size, total)
                sel = idx[start:stop]
                x = data.x[sel].to(self.device, non_blocking=True)
                y = data.y[sel].to(self.device, non_blocking=True)
                try:
                    fn(x, y, slice(start, stop))
                except Exception as exc:  # noqa: BLE001 - only OOM is handled
                    if not _is_oom(exc):
                        raise
                    del x, y
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if self.batch_size == 1:
                        raise RuntimeFailure(
                            f"out of memory on {self.device} even at batch size 1; use a smaller model/input or --device cpu"
                        ) from None
                    self.batch_size = max(1, self.batch_size // 2)
                    continue
                self.progress.advance(task, stop - start)
                start = stop
        finally:
            self.progress.remove_task(task)


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
    """Run ``config.checks`` in order on ``data`` and return the ScanResult. ``train_data`` (optional)
    lets checks compare training and test samples (margins: the loss gap)."""
    from .config import build_check

    device = resolve_device(config.device)
    options = dict(config.check_options)
    checks = [build_check(name, options.get(name, ())) for name in _with_requirements(config.checks)]
    eps = config.radii(data.input_shape)
    model = loaded.model.to(device)
    ctx = ScanContext(
        model=model, data=data, config=config, device=device, eps=eps, batch_size=config.batch_size, train_data=train_data
    )
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)
    with _progress(quiet) as progress:
        ctx.progress = progress
        for check in checks:
            t0 = time.perf_counter()
            ctx.sections[check.name] = check.run(ctx)
            timings[check.name] = round(time.perf_counter() - t0, 4)
            if log:
                log(f"{check.name}: {timings[check.name]:.1f}s")
    info = loaded.info
    provenance = Provenance(
        robaudit_version=__version__,
        torch_version=torch.__version__,
        device=str(device),
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
        command_line=command_line if command_line is not None else shlex.join(["robaudit", *sys.argv[1:]]),
    )
    return ScanResult(
        provenance=provenance,
        sections=dict(ctx.sections),
        flags=tuple(ctx.flags),
        model_warnings=tuple(info.warnings),
        timings=timings,
    )


def _with_requirements(names: tuple[str, ...]) -> list[str]:
    """Order checks so each one's ``requires`` run first (``clean`` is always first)."""
    from .checks import CHECKS

    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dep in CHECKS.get(name).requires:
            visit(dep)
        ordered.append(name)

    visit("clean")
    for n in names:
        visit(n.strip().lower())
    return ordered
