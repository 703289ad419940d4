"""Figures of the core sections (clean, attacks, certify, margins) and compare's curve, as
deterministic base64 PNG data URIs drawn with :mod:`.figures` (scales and colours: see there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .figures import (
    ADVERSARIAL,
    AFTER,
    BEFORE,
    MISCLASSIFIED,
    NATURAL,
    SECTION_PLOTS,
    Bins,
    attack_colors,
    figure,
    histogram_bins,
    image_data_uri,
    jacobian_heatmap_uri,
    norm_symbol,
    perturbation_data_uri,
    plain,
    plots_for,
    styled,
    to_data_uri,
)

__all__ = [
    "NATURAL",
    "ADVERSARIAL",
    "MISCLASSIFIED",
    "BEFORE",
    "AFTER",
    "SECTION_PLOTS",
    "plots_for",
    "figure",
    "to_data_uri",
    "image_data_uri",
    "perturbation_data_uri",
    "attack_colors",
    "norm_symbol",
    "plain",
    "compare_curve",
    "Bins",
    "histogram_bins",
]


# --- section figures -------------------------------------------------------------------------------
@plots_for("clean")
@styled
def clean_figures(sec, result) -> dict[str, Any]:
    """Per-class clean accuracy (%) as bars; classes ranked by accuracy when there are more than 30."""
    names = result.provenance.class_names
    acc = [(i, v) for i, v in enumerate(sec.per_class) if v is not None]
    if not acc:
        return {}
    many = len(acc) > 30
    fig = figure(6.4, 3.2 if not many else 2.8)
    ax = fig.add_subplot()
    if many:
        values = sorted(v for _, v in acc)
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], color=NATURAL)
        ax.set_xlabel(f"class rank (1 = least accurate of {len(values)})")
    else:
        labels = [plain(names[i]) if i < len(names) else str(i) for i, _ in acc]
        per_class = sec.per_class_intervals().get("clean.accuracy", []) if hasattr(sec, "per_class_intervals") else []
        err = None
        if per_class:
            err = [
                [100 * (v - per_class[i].lower) if per_class[i] else 0.0 for i, v in acc],
                [100 * (per_class[i].upper - v) if per_class[i] else 0.0 for i, v in acc],
            ]
        ax.bar(range(len(acc)), [100 * v for _, v in acc], color=NATURAL, yerr=err, capsize=3, ecolor="0.25")
        ax.set_xticks(range(len(acc)), labels, rotation=45 if len(acc) > 6 else 0, ha="right" if len(acc) > 6 else "center")
        ax.set_xlabel("class")
    ax.axhline(100 * sec.accuracy, color="black", linewidth=1, linestyle="--")
    ax.set_ylim(0, 100)
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(
        f"Clean accuracy per class, natural inputs (n={sec.n}; dashed: overall {100 * sec.accuracy:.1f}%)"
        + ("\nerror bars: 95% intervals (per-class n is small)" if not many else "")
    )
    return {"per_class": to_data_uri(fig)}


@plots_for("attacks")
@styled
def attacks_figures(sec, result) -> dict[str, Any]:
    """Robust accuracy vs ε per attack + worst case, and the gallery of the weakest samples."""
    out: dict[str, Any] = {}
    if sec.runs:
        out["curve"] = _robust_curve(sec, result)
    if sec.examples:
        out["gallery"] = _gallery(sec, result)
    return out


def _clean_accuracy(result) -> float | None:
    clean = result.section("clean")
    return getattr(clean, "accuracy", None)


def _errorbar(ax, points, intervals, **style) -> None:
    """Points (ε, accuracy) in %, with their 95% intervals as error bars; joined by a line only
    between measured radii (never from ε = 0: nothing was measured in between)."""
    xs = [e for e, _ in points]
    ys = [100 * a for _, a in points]
    lo = [100 * (a - p.lower) if p is not None else 0.0 for (_, a), p in zip(points, intervals)]
    hi = [100 * (p.upper - a) if p is not None else 0.0 for (_, a), p in zip(points, intervals)]
    linestyle = style.pop("linestyle", "-")
    if len(points) < 2:
        linestyle = "none"
    ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, linestyle=linestyle, **style)


def _robust_curve(sec, result) -> str:
    """Robust accuracy (%) per attack and the worst case at each ε, with 95% interval bars; clean
    accuracy as its own point at ε = 0."""
    from ..metric_names import robust_acc_name
    from ..threat import format_eps

    fig = figure(7.6, 3.6)
    ax = fig.add_subplot()
    clean_acc = _clean_accuracy(result)
    intervals = result.intervals()
    colors = attack_colors(r.attack for r in sec.runs)
    for label, color in colors.items():
        pts = sorted((r.eps, r.robust_accuracy) for r in sec.runs if r.attack == label)
        cis = [intervals.get(robust_acc_name(label, sec.norm, e)) for e, _ in pts]
        _errorbar(
            ax, pts, cis, marker="o", markersize=4, linestyle="--", linewidth=1.2, color=color, label=plain(label), zorder=3
        )
    worst = sorted((e, sec.ensemble.get(format_eps(e))) for e in sec.eps)
    worst = [(e, a) for e, a in worst if a is not None]
    if worst:
        cis = [intervals.get(robust_acc_name("ensemble", sec.norm, e)) for e, _ in worst]
        _errorbar(
            ax,
            worst,
            cis,
            marker="s",
            markersize=6,
            linewidth=2.2,
            color=ADVERSARIAL,
            label="worst case over attacks (adversarial)",
            zorder=2,
        )
    if clean_acc is not None:
        _errorbar(
            ax,
            [(0.0, clean_acc)],
            [intervals.get("clean.accuracy")],
            marker="o",
            markersize=7,
            color=NATURAL,
            label=f"clean (natural), ε=0: {100 * clean_acc:.1f}%",
            zorder=4,
        )
    sym = norm_symbol(sec.norm)
    ax.set_xlabel(f"ε ({sym} radius, pixel scale [0,1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    top = max(sec.eps) or 1.0
    ax.set_xlim(left=-0.03 * top, right=1.05 * top)
    ticks = sorted({0.0, *sec.eps})
    ax.set_xticks(ticks, ["0"] + [format_eps(e) for e in ticks[1:]], rotation=30 if len(ticks) > 5 else 0)
    ax.set_title(f"Robust accuracy vs ε ({sym}, n={result.provenance.n}; bars: 95% intervals)")
    fig.legend(loc="outside right upper")
    return to_data_uri(fig)


@plots_for("certify")
@styled
def certify_figures(sec, result) -> dict[str, Any]:
    """The bracket across ε: attacked (upper) and certified (lower) robust accuracy with their 95%
    intervals, the unresolved band shaded between them."""
    if not sec.runs:
        return {}
    from ..metric_names import certified_acc_name, certify_metric_name

    fig = figure(7.6, 4.2)
    ax = fig.add_subplot()
    intervals = result.intervals()
    runs = sorted(sec.runs, key=lambda r: r.eps)
    lower = [(r.eps, r.certified_accuracy) for r in runs]
    upper = [(r.eps, r.upper_accuracy) for r in runs if r.upper_accuracy is not None]
    if len(upper) == len(runs):
        ax.fill_between(
            [e for e, _ in lower],
            [100 * a for _, a in lower],
            [100 * a for _, a in upper],
            color="#bbbbbb",
            alpha=0.45,
            linewidth=0,
            label="unresolved (neither certified nor broken)",
            zorder=1,
        )
    if upper:
        cis = [intervals.get(certify_metric_name("upper", sec.method, sec.norm, e)) for e, _ in upper]
        _errorbar(
            ax,
            upper,
            cis,
            marker="s",
            markersize=5,
            linewidth=2.0,
            color=ADVERSARIAL,
            label="attacked: upper bound (worst case over attacks)",
            zorder=3,
        )
    cis = [intervals.get(certified_acc_name(sec.method, sec.norm, e)) for e, _ in lower]
    _errorbar(
        ax,
        lower,
        cis,
        marker="o",
        markersize=5,
        linewidth=2.0,
        color=NATURAL,
        label=f"certified ({plain(sec.method)}): lower bound",
        zorder=4,
    )
    sym = norm_symbol(sec.norm)
    ax.set_xlabel(f"ε ({sym} radius, pixel scale [0,1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    top = max(e for e, _ in lower) or 1.0
    ax.set_xlim(left=-0.03 * top, right=1.05 * top)
    from ..threat import format_eps

    ticks = sorted({e for e, _ in lower})
    ax.set_xticks(ticks, [format_eps(e) for e in ticks], rotation=30 if len(ticks) > 5 else 0)
    ax.set_title(f"certified ≤ true ≤ attacked ({sym}, n={result.provenance.n}; bars: 95% intervals)")
    fig.legend(loc="outside lower center", ncols=2)
    out: dict[str, Any] = {"bracket": to_data_uri(fig)}
    radii = [v for v in sec.radius if v is not None]
    if radii:
        fig = figure(6.4, 3.0)
        ax = fig.add_subplot()
        ax.hist(radii, bins=histogram_bins(radii, 30).edges, color=NATURAL)
        ax.set_xlabel(f"largest certified ε per sample ({sym}, pixel scale; search up to {format_eps(sec.radius_max or top)})")
        ax.set_ylabel("samples")
        ax.set_title(f"Certified radii ({plain(sec.method if sec.method != 'exact' else 'crown')}, clean-correct samples)")
        out["radii"] = to_data_uri(fig)
    return out


def _gallery(sec, result) -> list[dict[str, Any]]:
    """Per weak sample: clean image, adversarial image, amplified perturbation, labels, margin, and
    the margin-Jacobian heatmap when the jacobian section stored one for the same sample."""
    from ..checks.attacks import decode_tensor

    jacobian = result.section("jacobian")
    heatmaps = {h.index: h for h in getattr(jacobian, "heatmaps", ()) or ()}
    items = []
    for ex in sec.examples:
        shape = tuple(ex.shape)
        clean = decode_tensor(ex.image, shape).numpy()
        adv = decode_tensor(ex.adversarial, shape).numpy()
        pert_uri, gain = perturbation_data_uri(clean, adv)
        delta = adv.astype(np.float64) - clean.astype(np.float64)
        items.append(
            {
                "example": ex,
                "clean": image_data_uri(clean),
                "adversarial": image_data_uri(adv),
                "perturbation": pert_uri,
                "gain": gain,
                "linf": float(np.abs(delta).max()) if delta.size else 0.0,
                "l2": float(np.sqrt((delta**2).sum())),
            }
        )
        if ex.index in heatmaps:
            items[-1]["jacobian"], items[-1]["jacobian_peak"] = jacobian_heatmap_uri(heatmaps[ex.index])
    return items


@plots_for("margins")
@styled
def margins_figures(sec, result) -> dict[str, Any]:
    """Histograms of L(x) (logits), softmax(Z)_y and CE loss (nats), split by what an attack did."""
    groups = _sample_groups(sec, result)
    return {
        "margin": _hist(sec.margins, groups, "margin L(x) (logits)", "Margin L(x) = Z_y − max_{i≠y} Z_i", zero_line=True),
        "probability": _hist(
            sec.true_class_probability,
            groups,
            "true-class probability softmax(Z)_y",
            "True-class probability",
            bounds=(0.0, 1.0),
        ),
        "loss": _hist(sec.loss, groups, "cross-entropy loss (nats)", "Cross-entropy loss"),
    }


def _sample_groups(sec, result) -> list[tuple[str, str, np.ndarray]]:
    """(label, colour, mask) per group: misclassified / broken at the largest ε / robust; or all."""
    from ..threat import format_eps

    n = len(sec.margins)
    clean = result.section("clean")
    attacks = result.section("attacks")
    correct = np.asarray(getattr(clean, "correct", ()), dtype=bool)
    if correct.shape != (n,):
        return [("all samples (natural inputs)", NATURAL, np.ones(n, dtype=bool))]
    groups = []
    if attacks is not None and getattr(attacks, "eps", None):
        key = format_eps(max(attacks.eps))
        robust = np.asarray(attacks.ensemble_robust.get(key, ()), dtype=bool)
        if robust.shape == (n,):
            groups.append((f"robust at ε={key}", NATURAL, correct & robust))
            groups.append((f"broken by an attack at ε≤{key} (adversarial)", ADVERSARIAL, correct & ~robust))
    if not groups:
        groups.append(("correctly classified (natural inputs)", NATURAL, correct))
    groups.append(("misclassified without attack", MISCLASSIFIED, ~correct))
    return groups


def _hist(values, groups, xlabel: str, title: str, zero_line: bool = False, bounds=None) -> str:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    fig = figure(4.6, 3.5)
    ax = fig.add_subplot()
    finite = arr[np.isfinite(arr)]
    bins = histogram_bins([finite], 30, bounds)
    if finite.size:
        data, colors, labels = [], [], []
        for label, color, mask in groups:
            sel = arr[mask & np.isfinite(arr)]
            data.append(sel)
            colors.append(color)
            labels.append(f"{label} ({sel.size})")
        ax.hist(data, bins=bins.edges, stacked=True, histtype="stepfilled", color=colors, label=labels)
        pairs = sorted(zip(*ax.get_legend_handles_labels()), key=lambda hl: labels.index(hl[1]))
        fig.legend([h for h, _ in pairs], [n for _, n in pairs], loc="outside lower center", fontsize=7)
        bins.apply(ax)
    if zero_line:
        ax.axvline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel(xlabel + bins.suffix())
    ax.set_ylabel("samples")
    ax.set_title(title)
    return to_data_uri(fig)


# --- compare ---------------------------------------------------------------------------------------
@styled
def compare_curve(before, after, before_label: str, after_label: str) -> str | None:
    """Worst-case robust accuracy (%) vs ε for two results, with 95% interval bars; clean accuracy
    as a diamond at ε = 0, not joined to the attacked points (None when neither has attacks)."""
    from ..metric_names import robust_acc_name
    from ..threat import format_eps

    curves = []
    for res, label, color in ((before, before_label, BEFORE), (after, after_label, AFTER)):
        sec = res.section("attacks")
        if sec is None or isinstance(sec, dict) or not getattr(sec, "eps", None):
            continue
        pts = [(e, sec.ensemble.get(format_eps(e))) for e in sorted(sec.eps)]
        curves.append((res, label, color, [(e, a) for e, a in pts if a is not None], sec.norm))
    if not curves:
        return None
    fig = figure(6.4, 3.4)
    ax = fig.add_subplot()
    top = max((e for c in curves for e, _ in c[3]), default=0.0) or 1.0
    for i, (res, label, color, pts, norm) in enumerate(curves):
        intervals = res.intervals()
        shift = (i - 0.5) * 0.012 * top if len(curves) > 1 else 0.0  # side by side, so both bars show
        cis = [intervals.get(robust_acc_name("ensemble", norm, e)) for e, _ in pts]
        _errorbar(ax, [(e + shift, a) for e, a in pts], cis, marker="o", color=color, label=plain(label))
        acc = _clean_accuracy(res)
        if acc is not None:
            _errorbar(ax, [(shift, acc)], [intervals.get("clean.accuracy")], marker="D", color=color)
    sym = norm_symbol(curves[0][4])
    ax.set_xlabel(f"ε ({sym} radius, pixel scale [0,1]; 0 = clean)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=-0.03 * top, right=1.05 * top)
    ticks = sorted({0.0, *(e for c in curves for e, _ in c[3])})
    ax.set_xticks(ticks, ["0"] + [format_eps(e) for e in ticks[1:]], rotation=30 if len(ticks) > 5 else 0)
    ax.set_title("Worst case over attacks (◆ at 0: clean accuracy; bars: 95% intervals)")
    ax.legend(loc="upper right")
    return to_data_uri(fig)
