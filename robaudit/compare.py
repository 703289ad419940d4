"""Compare two ScanResults: per-metric deltas, refusal on mismatched data or threat model.

Two results are comparable when they were computed on the same data (provenance ``dataset``,
``split``, ``n``, ``data_source`` and, where both record them, the scanned samples' ``indices``) under the same threat model (the attacks section's ``norm`` and
its set of ε). ``delta = after − before`` in the metric's own unit (accuracies: fractions in
[0,1]); a *drop* is a negative delta. ``--max-drop`` applies to ``clean.accuracy`` and every
``robust_acc.*`` metric, where higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .results import ScanResult
from .threat import format_eps

__all__ = ["MetricDelta", "Comparison", "comparability_problems", "compare_results", "is_accuracy_metric"]

_DATA_FIELDS = ("dataset", "split", "n", "data_source")


def is_accuracy_metric(name: str) -> bool:
    """The metrics ``--max-drop`` guards: clean and robust accuracies (higher is better)."""
    return name == "clean.accuracy" or name.startswith("robust_acc.")


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    before: float | None
    after: float | None
    delta: float | None  # after − before; None when either side has no value

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
    deltas: tuple[MetricDelta, ...]  # shared metrics, largest drop first
    only_before: tuple[str, ...]
    only_after: tuple[str, ...]
    problems: tuple[str, ...]  # comparability problems overridden with force

    def regressions(self, max_drop: float) -> tuple[MetricDelta, ...]:
        """Accuracy metrics that dropped by more than ``max_drop`` (absolute, fraction scale)."""
        return tuple(d for d in self.deltas if is_accuracy_metric(d.metric) and d.delta is not None and d.drop > max_drop)


def _eps_set(result: ScanResult) -> tuple[float, ...] | None:
    sec = result.section("attacks")
    if sec is None:
        return None
    eps = sec.get("eps") if isinstance(sec, dict) else getattr(sec, "eps", None)
    return tuple(sorted(float(e) for e in eps)) if eps is not None else None


def _norm(result: ScanResult) -> str | None:
    sec = result.section("attacks")
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


def compare_results(
    before: ScanResult, after: ScanResult, *, force: bool = False, before_label: str = "before", after_label: str = "after"
) -> Comparison:
    """Deltas for every metric both results have. Mismatched data/threat model → UsageError unless ``force``."""
    problems = comparability_problems(before, after)
    if problems and not force:
        raise UsageError(
            "refusing to compare results computed on different data or threat models: "
            + "; ".join(problems)
            + " (use --force to compare anyway)"
        )
    mb, ma = before.metrics(), after.metrics()
    deltas = []
    for name in sorted(set(mb) & set(ma)):
        b, a = _value(mb[name]), _value(ma[name])
        deltas.append(MetricDelta(name, b, a, None if a is None or b is None else a - b))
    deltas.sort(key=lambda d: (d.delta is None, d.delta if d.delta is not None else 0.0, d.metric))
    return Comparison(
        before=before,
        after=after,
        before_label=before_label,
        after_label=after_label,
        deltas=tuple(deltas),
        only_before=tuple(sorted(set(mb) - set(ma))),
        only_after=tuple(sorted(set(ma) - set(mb))),
        problems=tuple(problems),
    )


def _value(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if v != v else v
