"""Self-contained HTML report from a ScanResult (Jinja2, autoescaped; no JavaScript, no external URLs).

Layout: verdict (gate outcomes, flags, headline clean and worst-case robust accuracy with n and 95%
interval, and the attack recipe), flags with their explanations (the packaged flags.md), provenance,
then one block per section present in the result, in the result's order, and the bibliography of
the papers the page cites (``cite``; :mod:`robaudit.report.bibliography`). Each
section renders through its partial ``templates/sections/<name>.html.j2`` with the figures from
``plots.SECTION_PLOTS[<name>]``; a section without a partial (a plugin's, or a plain dict whose
type isn't installed) gets the generic key/value partial. Sections that did not run are absent.

Deterministic: the result is first put through its JSON form (exactly what ``results.json``
holds), figures are PNGs without timestamps, so ``render_html(result)`` and
``render_html(ScanResult.read_json(path))`` give the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from ..outputs import atomic_write
from ..results import ScanResult, to_jsonable
from ..stats import Proportion, proportion
from ..threat import format_eps
from . import geometry_plots, plots, surface_plots  # noqa: F401  (each registers its sections' figures)
from .bibliography import REFERENCES, cite, cite_attack, cited_keys, link_mentions
from .flag_docs import flag_explanations
from .verdict import headline as headline_numbers
from .verdict import recipe

__all__ = ["render_html", "write_html", "render_compare_html", "write_compare_html", "SECTION_TITLES", "canonical"]

# Headings of the built-in sections; others use their section name.
SECTION_TITLES = {
    "clean": "Clean accuracy",
    "sanity": "Sanity checks",
    "attacks": "Robust accuracy under attack",
    "margins": "Margins, true-class probability and loss",
    "minimal": "Minimal adversarial perturbations",
    "jacobian": "Input Jacobians of the margin and the loss",
    "curvature": "Curvature of the loss in input space",
    "indicator": "Theorem-1 bounds and the second-order indicator",
    "spectra": "Layer spectra (singular values of the weights)",
    "surfaces": "Decision and loss surfaces in input space",
    "landscape": "Loss landscape in parameter space",
    "certify": "Certified robust accuracy: the bracket",
}
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_-]+$")


# --- helpers exposed to templates ------------------------------------------------------------------
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def pct(v: Any, digits: int = 1) -> str:
    """A fraction in [0,1] as a percentage; '—' for no value."""
    return "—" if _missing(v) else f"{100 * float(v):.{digits}f}%"


def num(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; '—' for no value."""
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{float(v):.{digits}g}"


def ci(p: Proportion | None, digits: int = 1) -> str:
    """``95% CI 1.0–13.9% · 3/60``, or '' without an interval."""
    if p is None:
        return ""
    return f"95% CI {100 * p.lower:.{digits}f}–{100 * p.upper:.{digits}f}% · {p.k}/{p.n}"


def fraction_interval(value: Any, n: Any) -> Proportion | None:
    """The interval of a stored fraction of ``n`` samples (k = value·n, exact for a k/n fraction)."""
    if _missing(value) or not isinstance(n, int) or n <= 0:
        return None
    return proportion(k=round(float(value) * n), n=n)


def slug(text: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _value_text(v: Any) -> str:
    """Plain-text rendering of a field value for generic tables."""
    if isinstance(v, (list, tuple)):
        if len(v) <= 10 and all(not isinstance(x, (list, tuple, dict)) for x in v):
            return ", ".join(_value_text(x) for x in v) if v else "(empty)"
        numeric = [float(x) for x in v if isinstance(x, (int, float)) and not isinstance(x, bool) and not _missing(x)]
        if len(numeric) == len(v):
            return (
                f"{len(v)} values: min {num(min(numeric))}, mean {num(sum(numeric) / len(numeric))}, max {num(max(numeric))}"
            )
        return f"{len(v)} items"
    if isinstance(v, float) or isinstance(v, bool) or v is None:
        return num(v, 6)
    return str(v)


def generic_rows(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Flatten a section (dataclass or dict) into (dotted key, text) rows, at most 3 levels deep."""
    data = to_jsonable(obj) if dataclasses.is_dataclass(obj) else obj
    rows: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return [(prefix or "value", _value_text(data))]
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and depth < 2 and value:
            rows.extend(generic_rows(value, name, depth + 1))
        elif isinstance(value, dict):
            rows.append((name, f"{len(value)} entries"))
        else:
            rows.append((name, _value_text(value)))
    return rows


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("robaudit.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        pct=pct,
        num=num,
        eps=format_eps,
        slug=slug,
        norm_symbol=plots.norm_symbol,
        ci=ci,
        cites=lambda text: link_mentions(str(markupsafe.escape(text))),
    )
    env.globals.update(
        colors={"natural": plots.NATURAL, "adversarial": plots.ADVERSARIAL, "misclassified": plots.MISCLASSIFIED},
        directions=surface_plots.SURFACE_DIRECTIONS,
        cite=cite,
        cite_attack=cite_attack,
        fraction_interval=fraction_interval,
        proportion=proportion,
    )
    return env


# --- report ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SectionView:
    name: str
    title: str
    anchor: str
    template: str
    section: Any
    fig: dict = field(default_factory=dict)
    rows: tuple = ()
    metrics: tuple = ()


def canonical(result: ScanResult) -> ScanResult:
    """The result exactly as its JSON file reads back (lists → tuples; a non-finite float → null →
    None in an optional field, NaN in a float one)."""
    from ..jsonio import parse_json

    return ScanResult.from_dict(parse_json(json.dumps(result.to_dict(), allow_nan=False), "the result"))


def _section_view(name: str, sec: Any, result: ScanResult) -> SectionView:
    env = _env()
    title = SECTION_TITLES.get(name, str(name))
    anchor = f"section-{slug(name)}"
    specific = f"sections/{name}.html.j2"
    is_typed = not isinstance(sec, dict)
    if is_typed and _TEMPLATE_NAME.match(name) and specific in env.list_templates():
        fn = plots.SECTION_PLOTS.get(name)
        return SectionView(name, title, anchor, specific, sec, fig=fn(sec, result) if fn else {})
    metrics = tuple(sorted(sec.metrics().items())) if is_typed and hasattr(sec, "metrics") else ()
    fn = plots.SECTION_PLOTS.get(name) if is_typed else None
    return SectionView(
        name,
        title,
        anchor,
        "sections/_generic.html.j2",
        sec,
        fig=fn(sec, result) if fn else {},
        rows=tuple(generic_rows(sec)),
        metrics=metrics,
    )


def _class_name(names: tuple[str, ...]):
    def cls(i: Any) -> str:
        try:
            i = int(i)
        except (TypeError, ValueError):
            return str(i)
        return f"{i} · {names[i]}" if 0 <= i < len(names) else str(i)

    return cls


def _provenance_rows(result: ScanResult) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for f in dataclasses.fields(result.provenance):
        if f.name == "class_names":
            continue
        v = getattr(result.provenance, f.name)
        if isinstance(v, tuple):
            v = ", ".join(num(x, 6) if isinstance(x, float) else str(x) for x in v)
        rows.append((f.name, "—" if v is None or v == "" else v))
    rows.append(("schema_version", result.schema_version))
    return rows


def _flag_groups(result: ScanResult) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    explained = flag_explanations()
    for flag in result.flags:
        g = groups.setdefault(
            flag.code,
            {
                "code": flag.code,
                "anchor": f"flag-{slug(flag.code)}",
                "severity": flag.severity,
                "messages": [],
                "explanation": explained.get(flag.code),
            },
        )
        g["messages"].append(flag.message)
        if flag.severity == "error":
            g["severity"] = "error"
    return list(groups.values())


def _render_with_references(template: str, **context) -> str:
    """Render ``template`` and append the bibliography of exactly the entries the page cites."""
    page = _env().get_template(template)
    html = page.render(references=(), **context)
    keys = cited_keys(html)
    return page.render(references=[(k, REFERENCES[k]) for k in keys], **context) if keys else html


def render_html(result: ScanResult, gate_outcome=None) -> str:
    """The report as one self-contained HTML string. ``gate_outcome`` (a GateOutcome) goes in the verdict."""
    result = canonical(result)
    views = [_section_view(name, sec, result) for name, sec in result.sections.items()]
    from .._version import __version__

    attacks = result.section("attacks")
    return _render_with_references(
        "report.html.j2",
        result=result,
        prov=result.provenance,
        views=views,
        gate=gate_outcome,
        flags=_flag_groups(result),
        other_flags=[(code, text) for code, text in flag_explanations().items() if code not in {f.code for f in result.flags}],
        headline=headline_numbers(result),
        recipe=recipe(attacks) if attacks is not None else None,
        intervals=result.intervals(),
        provenance_rows=_provenance_rows(result),
        cls=_class_name(result.provenance.class_names),
        checkpoint_name=Path(result.provenance.checkpoint).name or result.provenance.checkpoint,
        version=__version__,
    )


def write_html(result: ScanResult, path: str | Path, gate_outcome=None) -> None:
    atomic_write(path, render_html(result, gate_outcome))


# --- compare ---------------------------------------------------------------------------------------
def render_compare_html(comparison, max_drop: float | None = None, significant: bool = False) -> str:
    """Side-by-side provenance, comparability warnings, per-metric deltas (accuracies first, with
    n, 95% intervals and the exact McNemar test)."""
    from .._version import __version__
    from ..compare import is_accuracy_metric

    before, after = canonical(comparison.before), canonical(comparison.after)
    regressions = {d.metric for d in comparison.regressions(max_drop, significant)} if max_drop is not None else set()
    prov_rows = []
    for f in dataclasses.fields(before.provenance):
        if f.name == "class_names":
            continue
        vb, va = getattr(before.provenance, f.name), getattr(after.provenance, f.name)
        prov_rows.append((f.name, _value_text(vb), _value_text(va), vb != va))
    return _render_with_references(
        "compare.html.j2",
        c=comparison,
        prov_rows=prov_rows,
        curve=plots.compare_curve(before, after, comparison.before_label, comparison.after_label),
        regressions=regressions,
        max_drop=max_drop,
        significant=significant,
        is_accuracy=is_accuracy_metric,
        before_intervals=before.intervals(),
        after_intervals=after.intervals(),
        version=__version__,
    )


def write_compare_html(comparison, path: str | Path, max_drop: float | None = None, significant: bool = False) -> None:
    atomic_write(path, render_compare_html(comparison, max_drop, significant))
