"""Validity checks that tell when robaudit's own numbers are not to be trusted.

Each raises a flag documented in docs/flags.md ("raised if", "what it means"). Cheap: a few
forward passes, one backward pass, and one strong-ε PGD run on a small subsample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks.pgd import PGD
from ..geometry.margin import cross_entropy, margin
from ..parts import Part, first_correct
from ..schema import Flag, Section, section
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
REPEAT_SAMPLES = 256  # the first positions whose forward pass is repeated
SANITY_METRICS = (
    "sanity.margin_zero_grad_fraction",
    "sanity.ce_zero_grad_fraction",
    "sanity.max_repeat_difference",
    "sanity.large_eps_robust_accuracy",
)


@section("sanity")
@dataclass(frozen=True)
class SanitySection(Section):
    """margin_zero_grad_fraction / ce_zero_grad_fraction: fraction of samples whose ‖∂L/∂x‖₁ (margin)
    or ‖∂CE/∂x‖₁ is 0, NaN or < 1e-12 (pixel space). outputs_look_like_probabilities: every output
    row in [0,1] summing to 1. max_repeat_difference: max |Z − Z'| over two identical forward passes
    of the first 256 samples, divided by max(1, max |Z|) (logits). large_eps_robust_accuracy: PGD-20 robust accuracy at ℓ∞ ε = 0.5 on up to 200 samples."""

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
    """Per-sample records: table ``samples`` (every sample: vanishing margin / CE gradient, output
    row looking like probabilities), ``repeat`` (the first :data:`REPEAT_SAMPLES` positions:
    max |Z − Z'| over two identical forward passes and max |Z|), ``large_eps`` (this process's
    first :data:`LARGE_EPS_SAMPLES` clean-correct samples: robust to PGD at ε = 0.5); the section
    keeps the first LARGE_EPS_SAMPLES clean-correct samples of the whole scan."""

    name = "sanity"
    requires = ("clean",)
    description = "gradient masking and validity checks (docs/flags.md)"

    def metric_names(self, plan) -> tuple[str, ...]:
        return SANITY_METRICS

    def max_passes(self, plan) -> tuple[float, float]:
        """Per sample at most: the margin and CE gradients (2), the repeated forward (2), and the
        ε = 0.5 PGD (on at most LARGE_EPS_SAMPLES samples; counted as if on every one)."""
        forward, backward = self._large_eps_attack().max_passes(plan.num_classes)
        return float(2 + 2 + forward), float(2 + backward)

    @staticmethod
    def _large_eps_attack():
        return PGD(steps=20, loss="cw")

    def compute(self, ctx) -> Part:
        part = Part()
        logits = ctx.cache["clean_logits"]
        probs_like = (logits.amin(1) >= 0) & (logits.amax(1) <= 1) & ((logits.sum(1) - 1).abs() < PROB_SUM_TOL)
        zero_margin = torch.zeros(ctx.positions.numel(), dtype=torch.bool)
        zero_ce = torch.zeros_like(zero_margin)

        def batch(x, y, sl):
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
            pos = ctx.positions[sl]
            early = pos < REPEAT_SAMPLES
            if bool(early.any()):
                xe = x.detach()[early.to(x.device)]
                with torch.no_grad():
                    z1, z2 = ctx.model(xe), ctx.model(xe)
                part.add(
                    "repeat",
                    pos[early],
                    diff=(z1 - z2).abs().flatten(1).amax(1).float(),
                    scale=z1.abs().flatten(1).amax(1).float(),
                )

        ctx.map_batches(batch, description="sanity: input gradients")
        part.add("samples", ctx.positions, zero_margin=zero_margin, zero_ce=zero_ce, probs_like=probs_like)
        self._large_eps(ctx, part)
        return part

    def combine(self, tables, extras, info) -> SanitySection:
        t = tables["samples"]
        probs_like = bool(len(t)) and all(t.col("probs_like"))
        if probs_like:
            info.flags.append(
                Flag(
                    "probabilities-not-logits",
                    "the model's outputs are probabilities (rows in [0,1] summing to 1), not logits; cross-entropy attacks on them are weak",
                )
            )
        fm = float(t.tensor("zero_margin", torch.bool).double().mean()) if len(t) else 0.0
        fc = float(t.tensor("zero_ce", torch.bool).double().mean()) if len(t) else 0.0
        rep = tables["repeat"]
        max_diff = 0.0
        if len(rep):
            max_diff = max(rep.col("diff")) / max(max(rep.col("scale")), 1.0)
        if fm > ZERO_GRAD_FRACTION:
            info.flags.append(
                Flag(
                    "zero-gradients",
                    f"{fm:.0%} of samples have a zero, NaN or vanishing input gradient of the margin; gradient attacks cannot work there (masked gradients?)",
                )
            )
        elif fc > ZERO_GRAD_FRACTION:
            info.flags.append(
                Flag(
                    "saturated-loss",
                    f"{fc:.0%} of samples have a vanishing cross-entropy gradient though the margin's is not; cross-entropy attacks are unreliable here, use C&W/DLR losses",
                )
            )
        if max_diff > NONDETERMINISM_TOL:
            info.flags.append(
                Flag(
                    "nondeterministic-outputs",
                    f"two identical forward passes differ by {max_diff:.2e} (relative to the largest logit); randomness in the model makes single-run attack results optimistic",
                )
            )
        chosen = first_correct(info.clean(), LARGE_EPS_SAMPLES)
        large_acc = None
        if chosen:
            robust = tables["large_eps"].at("robust", chosen)
            large_acc = sum(bool(r) for r in robust) / len(chosen)
        large_n = len(chosen)
        if large_acc is not None and large_acc > LARGE_EPS_MAX_ACC:
            info.flags.append(
                Flag(
                    "large-eps-not-broken",
                    f"PGD at ℓ∞ ε={LARGE_EPS} still leaves {large_acc:.0%} of {large_n} samples robust; any honest classifier is broken there, so the attacks are failing",
                )
            )
        return SanitySection(
            margin_zero_grad_fraction=fm,
            ce_zero_grad_fraction=fc,
            outputs_look_like_probabilities=probs_like,
            max_repeat_difference=max_diff,
            large_eps_robust_accuracy=large_acc,
            large_eps_n=large_n,
        )

    @staticmethod
    def _large_eps(ctx, part: Part) -> None:
        """PGD-20 (C&W loss) at ℓ∞ ε = 0.5 on this process's first LARGE_EPS_SAMPLES clean-correct
        samples (a superset of its share of the scan's first LARGE_EPS_SAMPLES)."""
        idx = torch.tensor(first_correct(ctx.local("clean"), LARGE_EPS_SAMPLES), dtype=torch.long)
        if idx.numel() == 0:
            return
        attack = SanityCheck._large_eps_attack()
        threat = ThreatModel(Norm.LINF, LARGE_EPS)
        robust = torch.zeros(idx.numel(), dtype=torch.bool)

        def batch(x, y, sl):
            rng = ctx.sample_rng("sanity:large-eps", idx[sl])
            robust[sl] = ~attack.run(ctx.model, x, y, threat, rng).success.cpu()

        ctx.map_batches(batch, indices=idx, description=f"sanity: PGD at ℓ∞ ε={LARGE_EPS}")
        part.add("large_eps", idx, robust=robust)
