"""Distribution of minimal adversarial perturbation sizes (issue: attack suite).

Per clean-correct sample: DeepFool's minimal perturbation in the threat model's norm
(Moosavi-Dezfooli et al. 2016), then bisection over ε with PGD (robaudit.attacks.deepfool.
refine_minimal_perturbation) to tighten it. Every radius is attack-found, so it is an *upper
bound* on the true minimal perturbation; pixel scale [0,1]. Misclassified samples have radius 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attacks.deepfool import DeepFool, refine_minimal_perturbation
from ..attacks.pgd import PGD
from ..parts import Part
from ..schema import Section, section
from ..threat import format_eps
from .base import CHECKS, Check

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_KEYS = tuple(f"{int(q * 100):02d}" for q in QUANTILES)
MINIMAL_METRICS = tuple(f"minimal.q{k}" for k in QUANTILE_KEYS) + ("minimal.median", "minimal.mean")


@section("minimal")
@dataclass(frozen=True)
class MinimalSection(Section):
    """radii: per sample (None where no adversarial example was found; 0 where misclassified);
    summaries over the clean-correct samples with a finite radius; norm: ℓ∞ or ℓ2, pixel scale.
    robust_fraction_at: per configured ε, fraction of all samples whose radius exceeds ε (a
    cross-check of the attack table). deepfool_radii: per sample, DeepFool's unrefined radius
    before bisection (same conventions; empty in results written before it was stored)."""

    norm: str
    method: str
    n_found: int
    n_attacked: int
    mean: float | None
    median: float | None
    quantiles: dict[str, float]
    per_class_median: tuple[float | None, ...]
    robust_fraction_at: dict[str, float]
    radii: tuple[float | None, ...]
    deepfool_radii: tuple[float | None, ...] = ()

    def metrics(self) -> dict[str, float]:
        out = {f"minimal.q{k}": v for k, v in self.quantiles.items()}
        if self.median is not None:
            out["minimal.median"] = self.median
        if self.mean is not None:
            out["minimal.mean"] = self.mean
        return out

    def metric_names(self) -> tuple[str, ...]:
        return MINIMAL_METRICS


def _rounded(radii: torch.Tensor) -> tuple[float | None, ...]:
    """Per-sample radii rounded to 7 decimals (pixel scale); None where none was found."""
    return tuple(None if not math.isfinite(v) else round(float(v), 7) for v in radii.tolist())


BISECTION_STEPS = 8  # bisection steps on ε refining DeepFool's radius
BISECTION_PGD_STEPS = 20  # PGD iterations per bisection step


@CHECKS.register("minimal")
class MinimalCheck(Check):
    """Per-sample records (table ``samples``): ``radius`` (refined; None where none was found, 0
    where misclassified) and ``deepfool`` (DeepFool's unrefined radius)."""

    name = "minimal"
    requires = ("clean",)
    description = "minimal adversarial perturbation per sample (DeepFool, refined by PGD bisection)"

    def metric_names(self, plan) -> tuple[str, ...]:
        return MINIMAL_METRICS

    def max_passes(self, plan) -> tuple[float, float]:
        """DeepFool: ≤ max_iter iterations of one backward per candidate class (each counted with
        a forward) and a final forward; each bisection step: PGD's gradients and one forward."""
        deepfool = DeepFool()
        grads = (
            deepfool.max_iter * (min(deepfool.num_candidates, plan.num_classes) - 1) + BISECTION_STEPS * BISECTION_PGD_STEPS
        )
        return float(grads + 1 + BISECTION_STEPS), float(grads)

    def compute(self, ctx) -> Part:
        norm = ctx.config.norm
        correct = torch.tensor(ctx.local("clean").col("correct"), dtype=torch.bool)
        rows = correct.nonzero().squeeze(1)
        targets = ctx.positions[rows]
        n = int(ctx.positions.numel())
        radii = torch.where(correct, torch.full((n,), math.inf, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
        deepfool_radii = radii.clone()
        deepfool = DeepFool()

        def batch(x, y, sl):
            _, upper = deepfool.minimal_perturbation(ctx.model, x, y, norm)
            deepfool_radii[rows[sl]] = upper.detach().double().cpu()
            rng = ctx.sample_rng("minimal:bisection", targets[sl])
            refined = refine_minimal_perturbation(
                ctx.model, x, y, norm, upper, lambda: PGD(steps=BISECTION_PGD_STEPS), steps=BISECTION_STEPS, generator=rng
            )
            radii[rows[sl]] = refined.detach().double().cpu()

        if targets.numel():
            # the bar's estimate of a sample's gradient passes: DeepFool (~5 iterations × 9 classes),
            # then 8 bisection steps of PGD-20
            ctx.map_batches(
                batch,
                indices=targets,
                description=f"minimal perturbation ({norm.value})",
                work_per_sample=45 + BISECTION_STEPS * BISECTION_PGD_STEPS,
            )
        part = Part()
        part.add("samples", ctx.positions, radius=_finite_or_none(radii), deepfool=_finite_or_none(deepfool_radii))
        return part

    def combine(self, tables, extras, info) -> MinimalSection:
        norm = info.config.norm
        t = tables["samples"]
        radii = torch.tensor([math.inf if v is None else v for v in t.col("radius")], dtype=torch.float64)
        deepfool_radii = torch.tensor([math.inf if v is None else v for v in t.col("deepfool")], dtype=torch.float64)
        clean = info.clean()
        correct = clean.tensor("correct", torch.bool)
        labels = clean.tensor("label", torch.long)
        found = radii[correct & torch.isfinite(radii)]
        q = torch.quantile(found, torch.tensor(QUANTILES, dtype=torch.float64)) if found.numel() else None
        per_class = []
        for c in range(info.num_classes):
            r = radii[(labels == c) & correct & torch.isfinite(radii)]
            per_class.append(float(r.median()) if r.numel() else None)
        return MinimalSection(
            norm=norm.value,
            method="DeepFool (overshoot 0.02) refined by 8 bisection steps of PGD-20; upper bounds on the true minimum",
            n_found=int(found.numel()),
            n_attacked=int(correct.sum()),
            mean=float(found.mean()) if found.numel() else None,
            median=float(found.median()) if found.numel() else None,
            quantiles={k: float(v) for k, v in zip(QUANTILE_KEYS, q)} if q is not None else {},
            per_class_median=tuple(per_class),
            robust_fraction_at={format_eps(e): float((radii > e).double().mean()) for e in sorted(info.eps)},
            radii=_rounded(radii),
            deepfool_radii=_rounded(deepfool_radii),
        )


def _finite_or_none(radii: torch.Tensor) -> list:
    return [float(v) if math.isfinite(v) else None for v in radii.tolist()]
