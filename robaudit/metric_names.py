"""Metric names: one canonical spelling, predicted before a scan, and a short did-you-mean.

**Attack labels.** An attack is named by its registry name when its parameters are the defaults
(``pgd``, even when written ``pgd:steps=20``), otherwise ``name[k=v,...]`` listing only the
parameters that differ from the defaults, sorted by name, values written by :func:`format_param`
(``pgd[restarts=2,steps=50]``). The same label is used in metric names, the JSON, CSV, the reports,
``harden`` and ``compare``.

**ε** is written by :func:`robaudit.threat.format_eps`: ``k/255`` when ε·255 is an integer k (and ε
is not a multiple of 0.1), otherwise the shortest decimal (``0.1``, ``1.5``). A name written with
any other spelling of the same ε (``@0.03137254901960784``) or of the same attack
(``pgd[steps=20]``) resolves to the canonical one (:func:`canonical_metric`).

**Certification** metrics are ``certified_acc.<method>.<norm>@<ε>`` and
``certify.{upper,unresolved}.<method>.<norm>@<ε>`` (:mod:`robaudit.checks.certify`); their ε and
norm are respelled the same way.

**Prediction.** :func:`robaudit.config.predict_metric_names` lists every name a scan can produce from
its checks, attacks and ε, without a forward pass (each check's ``metric_names(plan)``), as a
:class:`PredictedMetrics`, so gates are checked before the scan and ``robaudit scan … --list-metrics``
can print them.

Layering: naming sits above the attacks (an attack's label drops the parameters at their defaults,
which only the attack classes know) and below the checks, the config and everything that reads
results; it imports neither the config nor the checks.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from .errors import UsageError
from .params import parse_value
from .threat import Norm, format_eps

__all__ = [
    "format_param",
    "canonical_params",
    "attack_label",
    "robust_acc_name",
    "certified_acc_name",
    "certify_metric_name",
    "parse_attack_label",
    "canonical_metric",
    "closest",
    "has_interval",
    "unknown_metric_message",
    "PredictedMetrics",
]


def format_param(value: object) -> str:
    """A parameter value as it appears in a label: ``true``/``false``/``none``, integers as is,
    floats as ``k/255`` when they are one (like ε), else their shortest round-trip decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        text = format_eps(value)
        return text if "/" in text else repr(value)
    return str(value)


def _defaults(cls) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name == "counter":
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def canonical_params(name: str, params: Iterable[tuple[str, object]]) -> tuple[tuple[str, object], ...]:
    """The parameters of attack ``name`` that differ from its defaults, sorted by name; an int given
    for a float parameter becomes a float. Unknown attacks keep every parameter (sorted)."""
    from .attacks import ATTACKS

    given = dict(params)
    try:
        defaults = _defaults(ATTACKS.get(name)) if name in ATTACKS else {}
    except UsageError:  # a plugin that fails to load: keep the spelling as given
        defaults = {}
    out: list[tuple[str, object]] = []
    for key in sorted(given):
        value, default = given[key], defaults.get(key, dataclasses.MISSING)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not dataclasses.MISSING and type(value) is type(default) and value == default:
            continue
        out.append((key, value))
    return tuple(out)


def attack_label(name: str, params: Iterable[tuple[str, object]] = ()) -> str:
    """``pgd`` or ``pgd[restarts=2,steps=50]`` (canonical parameters only, see the module docstring)."""
    kept = canonical_params(name, params)
    if not kept:
        return name
    return f"{name}[{','.join(f'{k}={format_param(v)}' for k, v in kept)}]"


def robust_acc_name(label: str, norm: str, eps: float | str) -> str:
    """``robust_acc.<label>.<norm>@<ε>``; ε a float (formatted) or an already formatted key."""
    return f"robust_acc.{label}.{norm}@{eps if isinstance(eps, str) else format_eps(eps)}"


def certified_acc_name(method: str, norm: str, eps: float | str) -> str:
    """``certified_acc.<method>.<norm>@<ε>``: the fraction of samples certified by ``method``."""
    return f"certified_acc.{method}.{norm}@{eps if isinstance(eps, str) else format_eps(eps)}"


def certify_metric_name(kind: str, method: str, norm: str, eps: float | str) -> str:
    """``certify.<kind>.<method>.<norm>@<ε>`` for kind ``upper`` (the attacks' worst case without
    exact's counterexamples) or ``unresolved`` (neither certified nor broken), fractions of samples."""
    return f"certify.{kind}.{method}.{norm}@{eps if isinstance(eps, str) else format_eps(eps)}"


_CERTIFY_PREFIXES = ("certified_acc.", "certify.upper.", "certify.unresolved.")


def parse_attack_label(text: str) -> tuple[str, list[tuple[str, object]]] | None:
    """``pgd[steps=50,restarts=2]`` → ("pgd", [("steps", 50), ...]); None if it isn't one."""
    if "[" not in text:
        return text, []
    if not text.endswith("]"):
        return None
    name, _, inner = text[:-1].partition("[")
    params = []
    for item in filter(None, (p.strip() for p in inner.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            return None
        params.append((key.strip().replace("-", "_"), parse_value(value.strip())))
    return name.strip().lower(), params


def _parse_number(text: str) -> float:
    return float(Fraction(text)) if "/" in text else float(text)


def canonical_metric(name: str) -> str:
    """The canonical spelling of a metric name: for ``robust_acc.<attack>.<norm>@<ε>`` the attack
    label, norm and ε are respelled (see the module docstring); any other name is returned as is."""
    if name.startswith(_CERTIFY_PREFIXES) and "@" in name:
        head, _, eps_text = name.rpartition("@")
        stem, _, norm_text = head.rpartition(".")
        try:
            return f"{stem}.{Norm.parse(norm_text).value}@{format_eps(_parse_number(eps_text))}"
        except (ValueError, ZeroDivisionError, UsageError):
            return name
    if not name.startswith("robust_acc.") or "@" not in name:
        return name
    head, _, eps_text = name.rpartition("@")
    middle, _, norm_text = head[len("robust_acc.") :].rpartition(".")
    try:
        eps = _parse_number(eps_text)
        norm = Norm.parse(norm_text).value
    except (ValueError, ZeroDivisionError, UsageError):
        return name
    parsed = parse_attack_label(middle)
    if parsed is None or not middle:
        return name
    label = "ensemble" if parsed[0] == "ensemble" and not parsed[1] else attack_label(*parsed)
    return robust_acc_name(label, norm, eps)


def has_interval(name: str) -> bool:
    """Whether metric ``name`` is a proportion of samples with a 95% interval (``lower()``/``upper()``)."""
    return name in ("clean.accuracy", "sanity.large_eps_robust_accuracy") or name.startswith(
        ("robust_acc.",) + _CERTIFY_PREFIXES
    )


def closest(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` known names closest to ``name``, best first (compared in canonical spelling)."""
    names = sorted(set(names))
    canon = {canonical_metric(m): m for m in names}
    hits = difflib.get_close_matches(canonical_metric(name), list(canon), n=n, cutoff=0.6)
    return [canon[h] for h in hits]


def unknown_metric_message(name: str, names: Iterable[str], where: str, listing: str) -> str:
    """One line: what is unknown, up to three close names, and the command that lists them all."""
    names = list(names)
    close = closest(name, names)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown metric {name!r} {where}{hint} ({listing} lists all {len(set(names))})"


@dataclass(frozen=True)
class PredictedMetrics:
    """The names a scan will produce. ``unpredictable``: checks (plugins) whose names are known
    only after the scan; a name outside every predicted prefix is then accepted until the scan."""

    names: tuple[str, ...]
    unpredictable: tuple[str, ...] = ()

    @property
    def prefixes(self) -> set[str]:
        return {n.split(".", 1)[0] for n in self.names}

    def may_produce(self, name: str) -> bool:
        """Whether ``name`` (any spelling) is or may be one of this scan's metrics."""
        canon = canonical_metric(name)
        if canon in {canonical_metric(n) for n in self.names}:
            return True
        return bool(self.unpredictable) and name.split(".", 1)[0] not in self.prefixes
