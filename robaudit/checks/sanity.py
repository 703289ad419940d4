"""Validity checks that tell when robaudit's own numbers are not to be trusted.

Each raises a flag documented in docs/flags.md ("raised if", "what it means"). Cheap: a few
forward passes, one backward pass, and one strong-ε PGD run on a small subsample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks.pgd import PGD
from ..geometry.margin import cross_entropy, margin
from ..results import Flag, Section, section
from ..threat import Norm, ThreatModel
from .base import CHECKS, Check

# Thresholds (documented in docs/flags.md).
ZERO_GRAD_FRACTION = 0.10  # more than this fraction of samples with a zero/NaN/tiny input gradient
TINY_GRAD = 1e-12  # ‖∇‖₁ below this (pixel scale) counts as vanishing
LARGE_EPS = 0.5  # ℓ∞ radius at which any honest classifier is broken (mid-grey image reachable)
LARGE_EPS_MAX_ACC = 0.10
LARGE_EPS_SAMPLES = 200
PROB_SUM_TOL = 1e-3
NONDETERMINISM_TOL = 1e-5
SANITY_METRICS = (
    "sanity.margin_zero_grad_fraction", "sanity.ce_zero_grad_fraction", "sanity.max_repeat_difference",
    "sanity.large_eps_robust_accuracy",
)


@section("sanity")
@dataclass(frozen=True)
class SanitySection(Section):
    """margin_zero_grad_fraction / ce_zero_grad_fraction: fraction of samples whose ‖∂L/∂x‖₁ (margin)
    or ‖∂CE/∂x‖₁ is 0, NaN or < 1e-12 (pixel space). outputs_look_like_probabilities: every output
    row in [0,1] summing to 1. max_repeat_difference: max |Z − Z'| over two identical forward passes
    (logits). large_eps_robust_accuracy: PGD-20 robust accuracy at ℓ∞ ε = 0.5 on up to 200 samples."""

    margin_zero_grad_fraction: float
    ce_zero_grad_fraction: float
    outputs_look_like_probabilities: bool
    max_repeat_difference: float
    large_eps_robust_accuracy: float | None
    large_eps_n: int

    def metrics(self) -> dict[str, float]:
        out = {
            "sanity.margin_zero_grad_fraction": self.margin_zero_grad_fraction,
            "sanity.ce_zero_grad_fraction": self.ce_zero_grad_fraction,
            "sanity.max_repeat_difference": self.max_repeat_difference,
        }
        if self.large_eps_robust_accuracy is not None:
            out["sanity.large_eps_robust_accuracy"] = self.large_eps_robust_accuracy
        return out

    def metric_names(self) -> tuple[str, ...]:
        return SANITY_METRICS

    def intervals(self):
        """The ε = 0.5 robust accuracy is a proportion of ``large_eps_n`` clean-correct samples."""
        if self.large_eps_robust_accuracy is None or not self.large_eps_n:
            return {}
        from ..stats import proportion

        k = round(self.large_eps_robust_accuracy * self.large_eps_n)
        return {"sanity.large_eps_robust_accuracy": proportion(k=k, n=self.large_eps_n)}


def _vanishing(g: torch.Tensor) -> torch.Tensor:
    l1 = g.flatten(1).abs().sum(1)
    return ~torch.isfinite(l1) | (l1 < TINY_GRAD)


@CHECKS.register("sanity")
class SanityCheck(Check):
    name = "sanity"
    requires = ("clean",)
    description = "gradient masking and validity checks (docs/flags.md)"

    def metric_names(self, plan) -> tuple[str, ...]:
        return SANITY_METRICS

    def run(self, ctx) -> SanitySection:
        logits = ctx.cache["clean_logits"]
        probs_like = bool(
            (logits.min() >= 0) and (logits.max() <= 1) and ((logits.sum(1) - 1).abs().max() < PROB_SUM_TOL)
        )
        if probs_like:
            ctx.flags.append(Flag("probabilities-not-logits", "the model's outputs are probabilities (rows in [0,1] summing to 1), not logits; cross-entropy attacks on them are weak"))

        zero_margin = torch.zeros(ctx.data.n, dtype=torch.bool)
        zero_ce = torch.zeros(ctx.data.n, dtype=torch.bool)
        max_diff = 0.0

        def batch(x, y, sl):
            nonlocal max_diff
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                z = ctx.model(x)
                gm = gc = None
                if z.requires_grad:  # else the output ignores the input: both gradients are zero
                    (gm,) = torch.autograd.grad(margin(z, y).sum(), x, retain_graph=True, allow_unused=True)
                    (gc,) = torch.autograd.grad(cross_entropy(z, y).sum(), x, allow_unused=True)
            gm = torch.zeros_like(x) if gm is None else gm
            gc = torch.zeros_like(x) if gc is None else gc
            zero_margin[sl] = _vanishing(gm).cpu()
            zero_ce[sl] = _vanishing(gc).cpu()
            if sl.start == 0:
                with torch.no_grad():
                    z1, z2 = ctx.model(x.detach()), ctx.model(x.detach())
                scale = max(float(z1.abs().max()), 1.0)
                max_diff = float((z1 - z2).abs().max()) / scale

        ctx.map_batches(batch, description="sanity: input gradients")
        fm, fc = float(zero_margin.double().mean()), float(zero_ce.double().mean())
        if fm > ZERO_GRAD_FRACTION:
            ctx.flags.append(Flag("zero-gradients", f"{fm:.0%} of samples have a zero, NaN or vanishing input gradient of the margin; gradient attacks cannot work there (masked gradients?)"))
        elif fc > ZERO_GRAD_FRACTION:
            ctx.flags.append(Flag("saturated-loss", f"{fc:.0%} of samples have a vanishing cross-entropy gradient though the margin's is not; cross-entropy attacks are unreliable here, use C&W/DLR losses"))
        if max_diff > NONDETERMINISM_TOL:
            ctx.flags.append(Flag("nondeterministic-outputs", f"two identical forward passes differ by {max_diff:.2e} (relative to the largest logit); randomness in the model makes single-run attack results optimistic"))

        large_acc, large_n = self._large_eps(ctx)
        if large_acc is not None and large_acc > LARGE_EPS_MAX_ACC:
            ctx.flags.append(Flag("large-eps-not-broken", f"PGD at ℓ∞ ε={LARGE_EPS} still leaves {large_acc:.0%} of {large_n} samples robust; any honest classifier is broken there, so the attacks are failing"))
        return SanitySection(
            margin_zero_grad_fraction=fm,
            ce_zero_grad_fraction=fc,
            outputs_look_like_probabilities=probs_like,
            max_repeat_difference=max_diff,
            large_eps_robust_accuracy=large_acc,
            large_eps_n=large_n,
        )

    @staticmethod
    def _large_eps(ctx) -> tuple[float | None, int]:
        correct = torch.tensor(ctx.sections["clean"].correct, dtype=torch.bool)
        idx = correct.nonzero().squeeze(1)[:LARGE_EPS_SAMPLES]
        if idx.numel() == 0:
            return None, 0
        attack = PGD(steps=20, loss="cw")
        threat = ThreatModel(Norm.LINF, LARGE_EPS)
        robust = torch.zeros(idx.numel(), dtype=torch.bool)
        gen = ctx.generator("sanity:large-eps")

        def batch(x, y, sl):
            robust[sl] = ~attack.run(ctx.model, x, y, threat, gen).success.cpu()

        ctx.map_batches(batch, indices=idx, description=f"sanity: PGD at ℓ∞ ε={LARGE_EPS}")
        return float(robust.double().mean()), int(idx.numel())
