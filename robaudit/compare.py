"""Compare two ScanResults: per-metric deltas, a paired significance test, refusal on mismatched data.

Two results are comparable when they were computed on the same data (provenance ``dataset``,
``split``, ``n``, ``data_source`` and, where both record them, the scanned samples' ``indices``) under the same threat model (the attacks section's ``norm`` and
its set of ε). ``delta = after − before`` in the metric's own unit (accuracies: fractions in
[0,1]); a *drop* is a negative delta. ``--max-drop`` applies to ``clean.accuracy`` and every
``robust_acc.*``, ``certified_acc.*`` and ``certify.upper.*`` metric, where higher is better.

Accuracies are compared **per sample**: both results store, for every sample in dataset order,
whether it was correct / robust, so each accuracy gets the exact McNemar test
(:func:`robaudit.stats.paired_test`) on the samples whose outcome changed. That pairing is valid
only for the same samples in the same order: the per-sample vectors must have the same length and
the stored labels must agree, else the comparison is refused (``--force`` compares the values
without the test).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .results import ScanResult
from .stats import Paired, paired_test
from .threat import format_eps

__all__ = [
    "MetricDelta",
    "Comparison",
    "comparability_problems",
    "pairing_problem",
    "compare_results",
    "is_accuracy_metric",
]

_DATA_FIELDS = ("dataset", "split", "n", "data_source")


def is_accuracy_metric(name: str) -> bool:
    """The metrics ``--max-drop`` guards: clean, robust and certified accuracies (higher is better)."""
    return name == "clean.accuracy" or name.startswith(("robust_acc.", "certified_acc.", "certify.upper."))


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    before: float | None
    after: float | None
    delta: float | None  # after − before; None when either side has no value
    paired: Paired | None = None  # exact McNemar on the per-sample outcomes (accuracies), None without

    @property
    def significant(self) -> bool:
        """McNemar p < 0.05 (False when there is no paired test)."""
        return self.paired is not None and self.paired.significant

    @property
    def drop(self) -> float:
        """before − after (positive = got worse for an accuracy), 0 when unknown."""
        return -self.delta if self.delta is not None else 0.0


@dataclass(frozen=True)
class Comparison:
    before: ScanResult
    after: ScanResult
    before_label: str
    after_label: str
    deltas: tuple[MetricDelta, ...]  # shared metrics: accuracies first (largest drop first), then by name
    only_before: tuple[str, ...]
    only_after: tuple[str, ...]
    problems: tuple[str, ...]  # comparability problems overridden with force
    unpaired: str | None = None  # why there is no paired test (forced comparison of other samples)

    def regressions(self, max_drop: float, significant: bool = False) -> tuple[MetricDelta, ...]:
        """Accuracy metrics that dropped by more than ``max_drop`` (absolute, fraction scale) — and,
        with ``significant``, whose drop is significant at 0.05 (exact McNemar)."""
        if significant and self.unpaired:
            raise UsageError(f"--significant needs per-sample results of the same samples: {self.unpaired}")
        return tuple(
            d
            for d in self.deltas
            if is_accuracy_metric(d.metric)
            and d.delta is not None
            and d.drop > max_drop
            and (not significant or d.significant)
        )


def _threat_section(result: ScanResult):
    """The section that states the threat model: the attacks', else the certify check's."""
    sec = result.section("attacks")
    return sec if sec is not None else result.section("certify")


def _eps_set(result: ScanResult) -> tuple[float, ...] | None:
    sec = _threat_section(result)
    if sec is None:
        return None
    eps = sec.get("eps") if isinstance(sec, dict) else getattr(sec, "eps", None)
    return tuple(sorted(float(e) for e in eps)) if eps is not None else None


def _norm(result: ScanResult) -> str | None:
    sec = _threat_section(result)
    if sec is None:
        return None
    return sec.get("norm") if isinstance(sec, dict) else getattr(sec, "norm", None)


def comparability_problems(before: ScanResult, after: ScanResult) -> list[str]:
    """One sentence per field that differs between the two results' data or threat model."""
    problems = []
    pb, pa = before.provenance, after.provenance
    for name in _DATA_FIELDS:
        vb, va = getattr(pb, name), getattr(pa, name)
        if vb != va:
            problems.append(f"data differs: provenance.{name} is {vb!r} before but {va!r} after")
    ib, ia = tuple(getattr(pb, "indices", ()) or ()), tuple(getattr(pa, "indices", ()) or ())
    if ib and ia and ib != ia and pb.n == pa.n:
        changed = sum(b != a for b, a in zip(ib, ia))
        problems.append(f"data differs: {changed} of the {pb.n} scanned samples (provenance.indices) are different ones")
    if _norm(before) is not None and _norm(after) is not None and _norm(before) != _norm(after):
        problems.append(f"threat model differs: attacks.norm is {_norm(before)!r} before but {_norm(after)!r} after")
    eb, ea = _eps_set(before), _eps_set(after)
    if eb is not None and ea is not None and eb != ea:
        fmt = lambda es: "{" + ", ".join(format_eps(e) for e in es) + "}"  # noqa: E731
        problems.append(f"threat model differs: attacks.eps is {fmt(eb)} before but {fmt(ea)} after")
    return problems


def _labels(result: ScanResult) -> tuple[int, ...] | None:
    clean = result.section("clean")
    labels = clean.get("labels") if isinstance(clean, dict) else getattr(clean, "labels", None)
    return tuple(labels) if labels else None


def pairing_problem(before: ScanResult, after: ScanResult) -> str | None:
    """Why the two results' per-sample outcomes are not of the same samples in the same order, or None."""
    nb, na = len(next(iter(before.outcomes().values()), ())), len(next(iter(after.outcomes().values()), ()))
    if nb != na:
        return f"per-sample results have {nb} samples before but {na} after"
    lb, la = _labels(before), _labels(after)
    if lb is not None and la is not None and lb != la:
        differ = sum(1 for x, y in zip(lb, la) if x != y)
        return f"the samples' labels differ at {differ} of {len(lb)} positions (not the same samples in the same order)"
    return None


def compare_results(
    before: ScanResult, after: ScanResult, *, force: bool = False, before_label: str = "before", after_label: str = "after"
) -> Comparison:
    """Deltas for every metric both results have, with the exact McNemar test on every accuracy.
    Mismatched data/threat model or samples → UsageError unless ``force``."""
    problems = comparability_problems(before, after)
    unpaired = pairing_problem(before, after)
    if unpaired:
        problems.append(f"samples differ: {unpaired}")
    if problems and not force:
        raise UsageError(
            "refusing to compare results computed on different data or threat models: "
            + "; ".join(problems)
            + " (use --force to compare anyway)"
        )
    # canonical names, so a result written before names were canonical (pgd[steps=20]) still pairs up
    mb, ma = _canonical(before.metrics()), _canonical(after.metrics())
    ob, oa = ({}, {}) if unpaired else (_canonical(before.outcomes()), _canonical(after.outcomes()))
    deltas = []
    for name in sorted(set(mb) & set(ma)):
        b, a = _value(mb[name]), _value(ma[name])
        paired = paired_test(ob[name], oa[name]) if name in ob and name in oa else None
        deltas.append(MetricDelta(name, b, a, None if a is None or b is None else a - b, paired))
    deltas.sort(
        key=lambda d: (
            not is_accuracy_metric(d.metric),
            d.delta is None,
            d.delta if d.delta is not None and is_accuracy_metric(d.metric) else 0.0,
            d.metric,
        )
    )
    return Comparison(
        before=before,
        after=after,
        before_label=before_label,
        after_label=after_label,
        deltas=tuple(deltas),
        only_before=tuple(sorted(set(mb) - set(ma))),
        only_after=tuple(sorted(set(ma) - set(mb))),
        problems=tuple(problems),
        unpaired=unpaired,
    )


def _canonical(values: dict) -> dict:
    from .metric_names import canonical_metric

    return {canonical_metric(k): v for k, v in values.items()}


def _value(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if v != v else v
