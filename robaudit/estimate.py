"""The line a scan prints before its first check: how many model passes it will cost, and how long.

Pass counts come from the configuration (:meth:`robaudit.checks.base.Check.max_passes`, which the
attacks check takes from each attack's :meth:`robaudit.attacks.base.Attack.max_passes`; the shared
arithmetic, :class:`PassPlan` and :func:`spread`, is in :mod:`robaudit.checks.cost`): an
**upper bound**, reached when every sample is classified correctly and resists every attack to its
last step (attacks stop at a broken sample, and a cascade attacks only the survivors). Checks that
work on a fixed subset (curvature, indicator: their first k correct samples) or once per model
(landscape) spread that cost over the scanned samples (:class:`PassPlan` gives them ``n``); an
exact Hessian-vector product counts as two passes with a backward. Checks that can't bound their
cost in advance (plugins) are named, not counted. The time
per pass is measured on the scan's device from one forward and one forward+backward of one batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .checks.cost import PassPlan, deepfool_passes, spread

__all__ = ["PassPlan", "ScanEstimate", "deepfool_passes", "estimate_scan", "spread", "time_per_pass"]


@dataclass(frozen=True)
class ScanEstimate:
    """forward/backward: model passes per scanned sample, summed over the counted checks (an upper
    bound); uncounted: the checks not counted; n: scanned samples (this process's);
    forward_s/backward_s: seconds per sample of a forward and of a forward+backward (one batch);
    by_check: check name → its (forward, backward) bound per sample."""

    forward: float
    backward: float
    uncounted: tuple[str, ...]
    n: int
    forward_s: float
    backward_s: float
    by_check: tuple[tuple[str, float, float], ...] = ()

    @property
    def seconds(self) -> float:
        """The counted passes' time: a pass with a backward at the forward+backward cost, the others at a forward's."""
        return self.n * (self.backward * self.backward_s + (self.forward - self.backward) * self.forward_s)

    def line(self) -> str:
        skipped = f"; not counted: {', '.join(self.uncounted)}" if self.uncounted else ""
        parts = ", ".join(f"{name} ≤ {_up(f)}" for name, f, _ in self.by_check if f)
        return (
            f"estimate: ≤ {_up(self.forward)} model passes per sample ({_up(self.backward)} with a backward; {parts}) "
            f"× {self.n} samples ≈ {_duration(self.seconds)} on this machine at that bound (measured from one timed "
            f"batch; the bound assumes every sample correct and resisting every attack to its last step{skipped})"
        )


def _up(passes: float) -> str:
    """A bound printed as a whole number, rounded up (a share of a subset's cost is fractional)."""
    return f"{math.ceil(round(passes, 6)):,}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def time_per_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Seconds per sample of one forward and of one forward+backward (input gradient of the summed
    cross-entropy) of the batch ``x``, after one untimed forward+backward (first-call set-up)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def forward_backward():
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)

    forward_backward()
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    sync()
    t1 = time.perf_counter()
    forward_backward()
    sync()
    t2 = time.perf_counter()
    rows = x.shape[0]
    return (t1 - t0) / rows, (t2 - t1) / rows


def estimate_scan(ctx, checks) -> ScanEstimate:
    """The estimate for ``checks`` on the context's samples, timing one batch of them."""
    plan = PassPlan(
        config=ctx.config,
        eps=ctx.eps,
        input_shape=ctx.data.input_shape,
        num_classes=ctx.data.num_classes,
        model=ctx.plain_model,
        train_n=ctx.train_data.n if ctx.train_data is not None else None,
        n=int(ctx.positions.numel()),
        data_n=int(ctx.data.n),
    )
    bounds = [(check.name, check.max_passes(plan)) for check in checks]
    by_check = tuple((name, float(b[0]), float(b[1])) for name, b in bounds if b is not None)
    uncounted = [name for name, b in bounds if b is None]
    forward, backward = sum(f for _, f, _ in by_check), sum(b for _, _, b in by_check)
    pos = ctx.positions[: max(1, min(int(ctx.batch_size), int(ctx.positions.numel())))]
    x = ctx.data.batch(pos).to(ctx.device)
    y = ctx.data.y[pos].to(ctx.device)
    forward_s, backward_s = time_per_pass(ctx.model, x, y)
    return ScanEstimate(forward, backward, tuple(uncounted), int(ctx.positions.numel()), forward_s, backward_s, by_check)
