"""The verdict every renderer shows first: headline accuracies with n and 95% interval, and which
attacks the worst case comes from — said plainly when they are weaker than AutoAttack's recipe.

AutoAttack-grade (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): the scan ran APGD-CE, APGD-T, FAB-T and Square, each at
its defaults or with a larger budget (more iterations, restarts, target classes or queries). A worst
case over weaker attacks (FGSM + PGD-20, the ``quick`` preset) is an *upper bound* on robust accuracy
that can be far from the true value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..stats import Proportion
from ..threat import format_eps

__all__ = ["AUTOATTACK", "Headline", "Recipe", "headline", "recipe", "fraction_text"]

AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t", "square")
_BUDGET = ("n_iter", "n_restarts", "n_target_classes", "n_queries")  # larger = at least as strong


@dataclass(frozen=True)
class Headline:
    """One headline number: ``label`` (what it is), its fraction and interval (``p`` may be None for
    results without per-sample data), and whether it is the adversarial (worst-case) kind."""

    label: str
    value: float | None
    p: Proportion | None
    adversarial: bool = False


@dataclass(frozen=True)
class Recipe:
    """Where the worst case comes from. preset: quick/standard/paper or None; attacks: labels run;
    autoattack: AutoAttack-grade; missing: AutoAttack attacks absent or weaker than their defaults."""

    preset: str | None
    attacks: tuple[str, ...]
    autoattack: bool
    missing: tuple[str, ...]

    def sentence(self) -> str:
        """One plain sentence for the verdict."""
        source = f"preset {self.preset}: " if self.preset else ""
        over = " + ".join(self.attacks)
        if self.autoattack:
            return f"Worst case over {over} ({source}AutoAttack-grade: APGD-CE, APGD-T, FAB-T and Square at full budget)."
        return (
            f"Worst case over {over} ({source}not AutoAttack-grade, lacking {', '.join(self.missing)} at full budget): "
            "weaker attacks can overstate robustness; rerun with --attacks standard before relying on it."
        )


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _at_full_budget(name: str, params: dict) -> bool:
    """``params`` are the defaults of attack ``name`` or differ only by larger budgets."""
    from ..attacks import ATTACKS

    try:
        cls = ATTACKS.get(name)
    except Exception:  # noqa: BLE001 - not installed: can't vouch for it
        return False
    for f in dataclasses.fields(cls):
        if f.name == "counter" or f.name not in params or f.default is dataclasses.MISSING:
            continue
        value = params[f.name]
        if value == f.default:
            continue
        if not (f.name in _BUDGET and isinstance(value, (int, float)) and value > f.default):
            return False
    return True


def recipe(attacks) -> Recipe | None:
    """The attack recipe of an attacks section (typed or a plain dict), None without runs."""
    runs = _get(attacks, "runs", ()) or ()
    if not runs:
        return None
    labels = tuple(dict.fromkeys(_get(r, "attack") for r in runs))
    strong = {
        _get(r, "attack").split("[")[0]
        for r in runs
        if _at_full_budget(_get(r, "attack").split("[")[0], _get(r, "params", {}) or {})
    }
    missing = tuple(a for a in AUTOATTACK if a not in strong)
    return Recipe(_get(attacks, "preset"), labels, not missing, missing)


def headline(result) -> list[Headline]:
    """Clean accuracy, the worst-case robust accuracy at each ε (an upper bound) and the certified
    accuracy at each ε (a lower bound), each with its interval."""
    intervals = result.intervals()
    out = []
    clean = result.section("clean")
    if clean is not None:
        out.append(Headline("clean accuracy", _get(clean, "accuracy"), intervals.get("clean.accuracy")))
    attacks = result.section("attacks")
    if attacks is not None:
        norm = _get(attacks, "norm")
        sym = {"linf": "ℓ∞", "l2": "ℓ2"}.get(norm, norm)
        for eps in sorted(_get(attacks, "eps", ()) or ()):
            key = format_eps(eps)
            out.append(
                Headline(
                    f"robust accuracy, worst case, {sym} ε={key}",
                    (_get(attacks, "ensemble", {}) or {}).get(key),
                    intervals.get(f"robust_acc.ensemble.{norm}@{key}"),
                    adversarial=True,
                )
            )
    certify = result.section("certify")
    if certify is not None:
        norm, method = _get(certify, "norm"), _get(certify, "method")
        sym = {"linf": "ℓ∞", "l2": "ℓ2"}.get(norm, norm)
        for run in _get(certify, "runs", ()) or ():
            key = format_eps(_get(run, "eps"))
            out.append(
                Headline(
                    f"certified accuracy ({method}), {sym} ε={key}",
                    _get(run, "certified_accuracy"),
                    intervals.get(f"certified_acc.{method}.{norm}@{key}"),
                )
            )
    return out


def fraction_text(value: float | None, p: Proportion | None, digits: int = 1) -> str:
    """``5.0% (3/60; 95% CI 1.0–13.9%)``; without an interval just the percentage."""
    if value is None:
        return "—"
    text = f"{100 * value:.{digits}f}%"
    if p is None:
        return text
    return f"{text} ({p.k}/{p.n}; 95% CI {100 * p.lower:.{digits}f}–{100 * p.upper:.{digits}f}%)"
