"""Uncertainty of the fractions robaudit reports, and the paired test `compare` runs.

Every accuracy is a proportion k/n of the scanned samples, so it carries a 95% **Clopper–Pearson**
interval (Clopper & Pearson 1934, "The use of confidence or fiducial limits illustrated in the case
of the binomial"): the exact binomial interval, conservative (coverage ≥ 95% for every true
accuracy), chosen over Wilson because it never under-covers at the small n and extreme accuracies
(0–10% robust) that robustness scans produce. Bounds are quantiles of Beta distributions:
``lower = B⁻¹(α/2; k, n−k+1)``, ``upper = B⁻¹(1−α/2; k+1, n−k)`` (0 when k = 0, 1 when k = n).

Two scans of the same samples are compared with the **exact McNemar test** (McNemar 1947): of the
samples whose outcome changed, b went right→wrong and c wrong→right; under "no change" each is a
fair coin, so the two-sided p-value is ``min(1, 2·P[Binomial(b+c, ½) ≤ min(b, c)])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LEVEL", "METHOD", "Proportion", "proportion", "clopper_pearson", "mcnemar_exact", "Paired", "paired_test"]

LEVEL = 0.95
METHOD = "clopper-pearson"


@dataclass(frozen=True)
class Proportion:
    """k successes of n samples with its two-sided ``LEVEL`` Clopper–Pearson interval (fractions in [0,1])."""

    k: int
    n: int
    lower: float
    upper: float

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "value": self.value, "lower": self.lower, "upper": self.upper}


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k/n; (0, 1) when n = 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.special import betaincinv

    alpha = 1.0 - level
    lower = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    upper = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return lower, upper


def proportion(outcomes: Sequence[bool] | None = None, *, k: int | None = None, n: int | None = None) -> Proportion:
    """The :class:`Proportion` of per-sample ``outcomes`` (True = counted), or of ``k`` of ``n``."""
    if outcomes is not None:
        k, n = sum(1 for v in outcomes if v), len(outcomes)
    if k is None or n is None:
        raise ValueError("give per-sample outcomes, or k and n")
    lo, hi = clopper_pearson(int(k), int(n))
    return Proportion(int(k), int(n), lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (1→0) and c (0→1); 1 when b = c = 0."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    if b + c == 0:
        return 1.0
    from scipy.special import bdtr

    return min(1.0, 2.0 * float(bdtr(min(b, c), b + c, 0.5)))


@dataclass(frozen=True)
class Paired:
    """A paired comparison of one per-sample outcome before and after.

    lost: samples counted before and not after (b); gained: the reverse (c); p_value: exact McNemar."""

    n: int
    lost: int
    gained: int
    p_value: float

    @property
    def significant(self) -> bool:
        """p < 0.05 (two-sided)."""
        return self.p_value < 1.0 - LEVEL


def paired_test(before: Sequence[bool], after: Sequence[bool]) -> Paired:
    """Exact McNemar on two per-sample outcome vectors of the same samples (same length, same order)."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need the same samples: {len(before)} before, {len(after)} after")
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    return Paired(len(before), lost, gained, mcnemar_exact(lost, gained))
