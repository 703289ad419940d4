"""The gradient-masking flags raised from the attacks section (their rules and derivations:
docs/flags.md): ``blackbox-beats-whitebox`` (a binomial test on the samples only a black-box attack
broke), ``single-step-stronger`` and ``non-monotone-eps``. Accuracies are fractions of the n scanned
samples; ε on the pixel scale [0,1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..schema import Flag
from ..threat import format_eps

if TYPE_CHECKING:
    from .attacks import AttackRun, AttacksSection

__all__ = [
    "BlackboxOnly",
    "MASKING_RATE",
    "MASKING_ALPHA",
    "binomial_tail",
    "min_broken_to_flag",
    "blackbox_only_counts",
    "attack_flags",
]


@dataclass(frozen=True)
class BlackboxOnly:
    """At one ε: of the ``attacked`` samples that survived every white-box attack and were then
    attacked by a black-box/gradient-free one, ``broken`` fell to it. ``p_value``: P[Bin(attacked,
    MASKING_RATE) ≥ broken], the chance of that many under a non-masked model (docs/flags.md);
    ``needed``: the fewest broken samples out of ``attacked`` that raise ``blackbox-beats-whitebox``
    (None: no count can, too few samples); ``flagged``: whether it was raised."""

    eps: float
    attacked: int
    broken: int
    p_value: float
    needed: int | None
    flagged: bool


# --- blackbox-beats-whitebox: a binomial test (derivation in docs/flags.md) --------------------
MASKING_RATE = 0.01  # p0: the largest share of white-box survivors a black-box attack breaks on a model whose gradients work
MASKING_ALPHA = 1e-3  # false-alarm probability per ε on such a model


def binomial_tail(k: int, m: int, p: float) -> float:
    """P[Bin(m, p) ≥ k], summed term by term in log space (exact to float rounding for any m)."""
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, m + 1):
        term = math.exp(math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * log_p + (m - i) * log_q)
        total += term
        if i > m * p and term < total * 1e-17:  # past the mode the terms only shrink
            break
    return min(total, 1.0)


def min_broken_to_flag(m: int, p: float = MASKING_RATE, alpha: float = MASKING_ALPHA) -> int | None:
    """The fewest black-box-only successes out of ``m`` attacked samples that the test calls masking
    (None when even ``m`` of ``m`` is not enough: fewer than log α / log p samples)."""
    if m < 1 or binomial_tail(m, m, p) > alpha:
        return None
    lo, hi = 1, m  # binomial_tail falls as k grows: find the first k with tail ≤ alpha
    while lo < hi:
        mid = (lo + hi) // 2
        if binomial_tail(mid, m, p) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def blackbox_only_counts(runs: tuple[AttackRun, ...], n: int) -> tuple[BlackboxOnly, ...]:
    """Per ε with both kinds of attack: how many samples survived every white-box attack that
    attacked them and were attacked by a black-box/gradient-free one, and how many of those it broke."""
    by_eps: dict[float, list[AttackRun]] = {}
    for r in runs:
        by_eps.setdefault(r.eps, []).append(r)
    out = []
    for eps, group in sorted(by_eps.items()):
        white = [r for r in group if r.kind == "white-box"]
        black = [r for r in group if r.kind != "white-box"]
        if not (white and black):
            continue
        survived = torch.ones(n, dtype=torch.bool)
        for r in white:
            survived &= torch.tensor(r.attacked, dtype=torch.bool) & ~torch.tensor(r.broken, dtype=torch.bool)
        attacked = torch.zeros(n, dtype=torch.bool)
        broken = torch.zeros(n, dtype=torch.bool)
        for r in black:
            attacked |= torch.tensor(r.attacked, dtype=torch.bool)
            broken |= torch.tensor(r.broken, dtype=torch.bool)
        m, k = int((survived & attacked).sum()), int((survived & broken).sum())
        p_value = binomial_tail(k, m, MASKING_RATE)
        out.append(
            BlackboxOnly(
                eps=eps,
                attacked=m,
                broken=k,
                p_value=p_value,
                needed=min_broken_to_flag(m),
                flagged=k > 0 and p_value <= MASKING_ALPHA,
            )
        )
    return tuple(out)


def attack_flags(sec: AttacksSection, raw_ensemble: dict[float, torch.Tensor], n: int) -> list[Flag]:
    """Gradient-masking flags from the attack results (docs/flags.md)."""
    flags: list[Flag] = []
    by_eps: dict[float, list[AttackRun]] = {}
    for r in sec.runs:
        by_eps.setdefault(r.eps, []).append(r)
    for c in sec.blackbox_only:
        if c.flagged:
            black = ", ".join(r.attack for r in sec.runs if r.eps == c.eps and r.kind != "white-box")
            flags.append(
                Flag(
                    "blackbox-beats-whitebox",
                    (
                        f"at ε={format_eps(c.eps)}, {black} broke {c.broken} of the {c.attacked} samples that survived every "
                        f"white-box attack ({c.broken / c.attacked:.1%}); where gradients work, a black-box attack breaks at "
                        f"most {MASKING_RATE:.0%} of them (binomial p = {c.p_value:.1e} < {MASKING_ALPHA:g}): gradients may be masked"
                    ),
                )
            )
    for eps, runs in sorted(by_eps.items()):
        key = format_eps(eps)
        white = [r for r in runs if r.kind == "white-box"]
        single = [r for r in white if r.single_step]
        multi = [r for r in white if not r.single_step]
        if sec.mode == "independent" and single and multi:
            best_single = min(r.robust_accuracy for r in single)
            best_multi = min(r.robust_accuracy for r in multi)
            if best_single < best_multi:
                flags.append(
                    Flag(
                        "single-step-stronger",
                        f"at ε={key}, a single-step attack leaves {best_single:.1%} robust but the best multi-step attack {best_multi:.1%}: the loss surface may be masking gradients",
                    )
                )
    ordered = sorted(raw_ensemble)
    for a, b in zip(ordered, ordered[1:]):
        acc_a, acc_b = float(raw_ensemble[a].double().mean()), float(raw_ensemble[b].double().mean())
        if acc_b > acc_a:
            flags.append(
                Flag(
                    "non-monotone-eps",
                    f"robust accuracy rises from {acc_a:.1%} at ε={format_eps(a)} to {acc_b:.1%} at ε={format_eps(b)} before carrying adversarial examples over: the attacks are not converging",
                )
            )
    if sec.mode == "independent":
        for name in {r.attack for r in sec.runs}:
            accs = [(r.eps, r.robust_accuracy) for r in sec.runs if r.attack == name]
            accs.sort()
            for (ea, aa), (eb, ab) in zip(accs, accs[1:]):
                if ab > aa:
                    flags.append(
                        Flag(
                            "non-monotone-eps",
                            f"{name}: robust accuracy rises from {aa:.1%} at ε={format_eps(ea)} to {ab:.1%} at ε={format_eps(eb)}: the attack is not converging",
                        )
                    )
    return flags
