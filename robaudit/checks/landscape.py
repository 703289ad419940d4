"""Check ``landscape``: the loss landscape in **parameter** space with filter normalization (Li et
al. 2018, as Xu, Yap & Prabhu use it, 004 §2.3).

On the first :data:`N_SAMPLES` samples of the scan (a fixed batch, eval mode), the batch-mean
cross-entropy (nats) and accuracy at ``θ + a·d₁`` (1-D, :data:`STEPS_1D` points) and
``θ + a·d₁ + b·d₂`` (2-D, :data:`STEPS_2D` × :data:`STEPS_2D`), ``a, b ∈ [−EXTENT, EXTENT]``.
d₁, d₂ are Gaussian (from the scan seed) and filter-normalized: every filter (a conv output
channel, a linear row) of the direction gets the Frobenius norm of the same filter of θ; biases
and norm-layer vectors are not moved (Li et al.'s ``--xignore biasbn``). So a = 1 moves every
filter by its own norm. The 1-D curve uses the same d₁ as the 2-D grid's first axis (rows).

Weights **and buffers** are set from a saved copy at every point and restored bit-identically
afterwards (:func:`robaudit.geometry.param_landscape`); the check verifies the restoration and
raises if any tensor differs. Xu et al. find adversarially fine-tuned models' landscapes *not*
flatter than the natural model's (CIFAR-10, ResNet-32): compare ``sharpness_*`` between scans.
Cost: (STEPS_1D + STEPS_2D²) forward passes of the batch (one more when STEPS_1D is even: the centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import RuntimeFailure
from ..geometry.margin import cross_entropy
from ..geometry.surfaces import param_landscape
from ..parts import Part
from ..schema import Section, from_jsonable, section, to_jsonable
from .base import CHECKS, Check

__all__ = ["N_SAMPLES", "STEPS_1D", "STEPS_2D", "EXTENT", "LandscapeSection", "LandscapeCheck"]

N_SAMPLES = 256
STEPS_1D = 21
STEPS_2D = 11
EXTENT = 1.0


def _round(v: float) -> float:
    return float(f"{v:.6g}")


@section("landscape")
@dataclass(frozen=True)
class LandscapeSection(Section):
    """Parameter-space landscape on ``n_samples`` samples. ``loss_1d``/``accuracy_1d`` at
    ``axis_1d``; ``loss_2d``/``accuracy_2d`` [rows along d₁][columns along d₂] at ``axis_2d``;
    ``center_loss``/``center_accuracy`` at θ. ``sharpness_1d`` = max over the 1-D curve of
    (loss − center loss); ``mean_increase_2d`` = mean over the 2-D grid of (loss − center loss)
    (nats). ``skipped`` non-empty (a reason) when the model has no parameters to move."""

    n_samples: int
    normalization: str
    extent: float
    center_loss: float | None
    center_accuracy: float | None
    axis_1d: tuple[float, ...]
    loss_1d: tuple[float, ...]
    accuracy_1d: tuple[float, ...]
    axis_2d: tuple[float, ...]
    loss_2d: tuple[tuple[float, ...], ...]
    accuracy_2d: tuple[tuple[float, ...], ...]
    sharpness_1d: float | None
    mean_increase_2d: float | None
    weights_restored: bool
    skipped: str = ""
    aligned_fields: ClassVar = (  # what the JSON reader checks (results.Section): curves and grids match their axes
        ("axis_1d", "loss_1d", "accuracy_1d"),
        ("axis_2d", "loss_2d", "loss_2d.*", "accuracy_2d", "accuracy_2d.*"),
    )
    finite_fields: ClassVar = ("axis_1d.*", "axis_2d.*")

    def metrics(self) -> dict[str, float]:
        out = {
            "landscape.center_loss": self.center_loss,
            "landscape.sharpness_1d": self.sharpness_1d,
            "landscape.mean_increase_2d": self.mean_increase_2d,
        }
        return {k: v for k, v in out.items() if v is not None}

    def metric_names(self) -> tuple[str, ...]:
        return LANDSCAPE_METRICS


LANDSCAPE_METRICS = ("landscape.center_loss", "landscape.sharpness_1d", "landscape.mean_increase_2d")


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"p:{k}": v.detach().clone() for k, v in model.named_parameters()}
    out.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers() if v is not None})
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


@CHECKS.register("landscape")
class LandscapeCheck(Check):
    name = "landscape"
    requires = ("clean",)
    description = "parameter-space loss landscape with filter normalization (Li et al. 2018; Xu et al.)"

    scope = "model"  # computed once, by the lead process

    n_samples: int = N_SAMPLES
    steps_1d: int = STEPS_1D
    steps_2d: int = STEPS_2D
    extent: float = EXTENT

    def metric_names(self, plan) -> tuple[str, ...]:
        return LANDSCAPE_METRICS

    def max_passes(self, plan) -> tuple[float, float]:
        """Forwards only, once per model: every grid point (steps_1d + steps_2d², one more for the
        centre when steps_1d is even) on min(n_samples, data_n) samples, spread over ``plan.n``."""
        from .cost import spread

        points = int(self.steps_1d) + int(self.steps_2d) ** 2 + (0 if int(self.steps_1d) % 2 else 1)
        return spread((0.0, 0.0), 0, plan.n, fixed=(points * min(int(self.n_samples), int(plan.data_n)), 0.0))

    def compute(self, ctx) -> Part:
        return Part(extra={"section": to_jsonable(self._landscape(ctx))})

    def combine(self, tables, extras, info) -> LandscapeSection:
        return from_jsonable(LandscapeSection, next(e["section"] for e in extras if "section" in e))

    def _landscape(self, ctx) -> LandscapeSection:
        model = ctx.plain_model
        norm_note = "filter normalization (Li et al. 2018): each filter of a Gaussian direction scaled to the weight filter's norm; biases/norm layers fixed"
        params = {k: p for k, p in model.named_parameters() if p.is_floating_point()}
        if not params:
            return LandscapeSection(
                n_samples=0,
                normalization=norm_note,
                extent=float(self.extent),
                center_loss=None,
                center_accuracy=None,
                axis_1d=(),
                loss_1d=(),
                accuracy_1d=(),
                axis_2d=(),
                loss_2d=(),
                accuracy_2d=(),
                sharpness_1d=None,
                mean_increase_2d=None,
                weights_restored=True,
                skipped="the model exposes no floating-point parameters (a frozen export?)",
            )
        n = min(int(self.n_samples), ctx.data.n)
        x = ctx.data.batch(slice(0, n)).to(ctx.device)
        y = ctx.data.y[:n].to(ctx.device)
        gen = ctx.generator("landscape")
        gdev = gen.device
        dirs = [
            {k: torch.randn(p.shape, generator=gen, dtype=p.dtype, device=gdev).to(p.device) for k, p in params.items()}
            for _ in range(2)
        ]
        accs: list[float] = []
        bs = max(1, int(ctx.batch_size))

        @torch.no_grad()
        def loss_fn(m: torch.nn.Module) -> float:
            advance()
            total, correct = 0.0, 0
            for s in range(0, n, bs):
                logits = m(x[s : s + bs])
                total += float(cross_entropy(logits, y[s : s + bs]).double().sum())
                correct += int((logits.argmax(1) == y[s : s + bs]).sum())
            accs.append(correct / n)
            return total / n

        before = _snapshot(model)
        was_training = model.training
        if was_training:
            model.eval()
        try:
            with ctx.task("landscape (weight-space grid)", total=self.steps_1d + self.steps_2d**2 + 1) as advance:
                l1, (ax1,) = param_landscape(model, loss_fn, [dirs[0]], self.extent, self.steps_1d)
                acc1 = torch.tensor(accs, dtype=torch.float64)
                accs.clear()
                l2, (ax2, _) = param_landscape(model, loss_fn, dirs, self.extent, self.steps_2d)
                acc2 = torch.tensor(accs, dtype=torch.float64).reshape(self.steps_2d, self.steps_2d)
        finally:
            if was_training:
                model.train()
        restored = _same(before, _snapshot(model))
        if not restored:
            raise RuntimeFailure("landscape: the model's weights were not restored bit-identically after the sweep")
        c1 = self.steps_1d // 2
        advance = lambda k=1: None  # noqa: E731 - the bar is gone; the centre is one more evaluation
        center = float(l1[c1]) if self.steps_1d % 2 else float(loss_fn(model))
        center_acc = float(acc1[c1]) if self.steps_1d % 2 else accs[-1]
        return LandscapeSection(
            n_samples=n,
            normalization=norm_note,
            extent=float(self.extent),
            center_loss=_round(center),
            center_accuracy=_round(center_acc),
            axis_1d=tuple(_round(float(v)) for v in ax1),
            loss_1d=tuple(_round(float(v)) for v in l1),
            accuracy_1d=tuple(_round(float(v)) for v in acc1),
            axis_2d=tuple(_round(float(v)) for v in ax2),
            loss_2d=tuple(tuple(_round(float(v)) for v in row) for row in l2),
            accuracy_2d=tuple(tuple(_round(float(v)) for v in row) for row in acc2),
            sharpness_1d=_round(float((l1 - center).max())),
            mean_increase_2d=_round(float((l2 - center).mean())),
            weights_restored=restored,
        )
