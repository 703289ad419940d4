"""Figures of the geometry sections (minimal, jacobian, curvature, indicator, spectra), registered in
:data:`robaudit.report.figures.SECTION_PLOTS` like the core sections' (surfaces and landscape:
:mod:`.surface_plots`).

Scales, as the sections store them: inputs, perturbations and radii on the pixel scale [0,1] (ℓ∞
or ℓ2 as labelled); the margin L(x) = Z_y − max_{i≠y} Z_i in logits; losses in nats; margin
gradients ∂L/∂x in logits per unit of pixel intensity; Hessian eigenvalues in nats per pixel²;
weight singular values in weight units. Colours: blue = natural / correct (L > 0), red =
adversarial / misclassified (L < 0), as in the rest of the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .figures import (
    ADVERSARIAL,
    ATTACK_CYCLE,
    HEATMAP_CMAP,
    MISCLASSIFIED,
    NATURAL,
    figure,
    histogram_bins,
    jacobian_map,
    norm_symbol,
    plain,
    plots_for,
    styled,
    to_data_uri,
)

__all__ = ["DEEPFOOL", "floats", "finite_radii", "eps_values"]

DEEPFOOL = ATTACK_CYCLE[0]  # DeepFool's unrefined radii (the refined ones are ADVERSARIAL)
EXACT, FINITE_DIFFERENCE = NATURAL, ATTACK_CYCLE[1]


# --- small helpers -----------------------------------------------------------------------------------
def floats(values) -> np.ndarray:
    """A sequence with None → NaN as a float64 array."""
    return np.asarray([np.nan if v is None else float(v) for v in (values or ())], dtype=np.float64)


def _section(result, name: str):
    sec = result.section(name)
    return None if isinstance(sec, dict) else sec


def _correct_mask(result, n: int) -> np.ndarray:
    """Clean-correct samples (all True when the clean section is missing or of another length)."""
    clean = _section(result, "clean")
    correct = np.asarray(getattr(clean, "correct", ()), dtype=bool)
    return correct if correct.shape == (n,) else np.ones(n, dtype=bool)


def finite_radii(values, mask: np.ndarray | None = None) -> np.ndarray:
    """Finite radii (pixel scale) of the selected samples."""
    arr = floats(values)
    if mask is not None and mask.shape == arr.shape:
        arr = arr[mask]
    return arr[np.isfinite(arr)]


def eps_values(sec, result) -> list[float]:
    """The scan's ε values (pixel scale): the attacks section's, else the minimal section's keys."""
    attacks = _section(result, "attacks")
    if attacks is not None and getattr(attacks, "eps", None):
        return sorted(float(e) for e in attacks.eps)
    from ..threat import parse_eps

    out = []
    for key in getattr(sec, "robust_fraction_at", {}) or {}:
        try:
            out.append(float(parse_eps(key)))
        except Exception:  # noqa: BLE001 - a foreign key is just not marked
            continue
    return sorted(out)


def _symlog_threshold(values: np.ndarray) -> float:
    """Linear range of a symlog axis: 10⁻³ of the largest |value| (at least 1e-12)."""
    finite = np.abs(values[np.isfinite(values)])
    peak = float(finite.max()) if finite.size else 1.0
    return max(peak * 1e-3, 1e-12)


def _no_minor_labels(ax) -> None:
    """Log axes: label only the decades (minor labels overlap on short ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


# --- minimal -----------------------------------------------------------------------------------------
@plots_for("minimal")
@styled
def minimal_figures(sec, result) -> dict[str, Any]:
    """Histogram of the per-sample minimal perturbation ‖δ‖ (threat norm, pixel scale) of the
    clean-correct samples: refined (PGD bisection) and DeepFool's when stored; ε as vertical lines."""
    n = len(sec.radii)
    mask = _correct_mask(result, n)
    series = [("DeepFool + PGD bisection (refined, reported)", ADVERSARIAL, finite_radii(sec.radii, mask))]
    deepfool = getattr(sec, "deepfool_radii", ()) or ()
    if len(deepfool) == n:
        series.append(("DeepFool alone (before bisection)", DEEPFOOL, finite_radii(deepfool, mask)))
    if not any(d.size for _, _, d in series):
        return {}
    sym = norm_symbol(sec.norm)
    fig = figure(7.2, 3.8)
    ax = fig.add_subplot()
    bins = histogram_bins([d for _, _, d in series])
    for i, (label, color, data) in enumerate(series):
        ax.hist(
            data,
            bins=bins.edges,
            histtype="stepfilled" if i == 0 else "step",
            alpha=0.55 if i == 0 else 1.0,
            linewidth=1.6,
            color=color,
            label=f"{label} ({data.size})",
        )
    from ..threat import format_eps

    for j, e in enumerate(eps_values(sec, result)):
        ax.axvline(e, color="black", linestyle=(0, (4, 2)), linewidth=1, label="scan ε" if j == 0 else None)
        ax.annotate(
            f"ε={format_eps(e)}", (e, 1.0), xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top", fontsize=7
        )
    bins.apply(ax)
    ax.set_xlabel(f"minimal perturbation ‖δ‖ ({sym}, pixel scale [0,1]{bins.suffix()})")
    ax.set_ylabel("clean-correct samples")
    ax.set_title(f"Minimal adversarial perturbation per sample ({sym}; attack-found upper bounds)")
    fig.legend(loc="outside lower center", ncols=2)
    return {"histogram": to_data_uri(fig)}


# --- jacobian ----------------------------------------------------------------------------------------
@plots_for("jacobian")
@styled
def jacobian_figures(sec, result) -> dict[str, Any]:
    """Per-sample norm histograms and the heatmaps of the stored lowest-margin samples."""
    out: dict[str, Any] = {"norms": _jacobian_norms(sec, result)}
    if sec.heatmaps:
        out["heatmaps"] = _jacobian_heatmaps(sec)
    return out


def _jacobian_norms(sec, result) -> str:
    """‖∂L/∂x‖₁ (log x) and the near-zero fraction per sample, split correct / misclassified."""
    n = len(sec.margin.l1)
    correct = _correct_mask(result, n)
    groups = [
        ("correctly classified (natural inputs)", NATURAL, correct),
        ("misclassified without attack", MISCLASSIFIED, ~correct),
    ]
    fig = figure(8.0, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    l1 = floats(sec.margin.l1)
    zf = floats(sec.margin.zero_fraction)
    suffixes = []
    for ax, values, bounds in ((ax1, l1, None), (ax2, 100 * zf, (0.0, 100.0))):
        bins = histogram_bins([values], 25, bounds)
        data = [values[m & np.isfinite(values)] for _, _, m in groups]
        ax.hist(
            data,
            bins=bins.edges,
            stacked=True,
            histtype="stepfilled",
            color=[c for _, c, _ in groups],
            label=[f"{label} ({d.size})" for (label, _, _), d in zip(groups, data)],
        )
        bins.apply(ax)
        suffixes.append(bins.suffix())
        ax.set_ylabel("samples")
    ax1.set_xlabel(f"‖∂L/∂x‖₁ (logits per unit pixel intensity, [0,1] scale{suffixes[0]})")
    ax1.set_title("ℓ1 norm of the margin Jacobian")
    ax2.set_xlabel(f"entries with |∂L/∂x| < {sec.zero_threshold:g} (% of d = {sec.d}{suffixes[1]})")
    ax2.set_title("Near-zero Jacobian entries")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    return to_data_uri(fig)


def _jacobian_heatmaps(sec) -> str:
    """Row 1: input image; row 2: Σ_c |∂L/∂x_c| on one colour scale shared by all samples."""
    from ..checks.attacks import decode_tensor

    maps = [jacobian_map(decode_tensor(h.gradient, tuple(h.shape)).numpy()) for h in sec.heatmaps]
    peak = max((float(m.max()) for m in maps if m.size), default=0.0) or 1.0
    k = len(maps)
    cols = min(k, 6)
    rows = -(-k // cols)
    fig = figure(max(3.2, 1.7 * cols + 1.2), 3.7 * rows + 0.3)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    for j in range(k, rows * cols):  # empty slots of the last row
        r, c = divmod(j, cols)
        axes[2 * r][c].set_visible(False)
        axes[2 * r + 1][c].set_visible(False)
    image = None
    for j, (h, m) in enumerate(zip(sec.heatmaps, maps)):
        img = np.clip(decode_tensor(h.image, tuple(h.shape)).numpy(), 0, 1)
        r, c = divmod(j, cols)
        top, bottom = axes[2 * r][c], axes[2 * r + 1][c]
        top.imshow(
            img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0)),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        top.set_title(f"#{h.index}, L(x)={h.margin:.3g}", fontsize=8)
        image = bottom.imshow(m, cmap=HEATMAP_CMAP, vmin=0, vmax=peak, interpolation="nearest")
        bottom.set_title(f"‖∂L/∂x‖₁={h.l1:.3g}", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    for r in range(rows):
        axes[2 * r][0].set_ylabel("input")
        axes[2 * r + 1][0].set_ylabel("|∂L/∂x|")
    fig.colorbar(image, ax=list(axes[:, -1]), label="Σ_c |∂L/∂x_c| (logits / unit pixel)", shrink=0.9)
    fig.suptitle("Margin Jacobian of low-margin correct samples (one colour scale)", fontsize=10)
    return to_data_uri(fig)


# --- curvature ---------------------------------------------------------------------------------------
def _runs(ranks: np.ndarray) -> list[slice]:
    """Contiguous stretches of ``ranks`` (Lanczos keeps only both ends of the spectrum)."""
    if ranks.size == 0:
        return []
    breaks = np.nonzero(np.diff(ranks) > max(1, np.median(np.diff(ranks)) * 5 if ranks.size > 1 else 1))[0] + 1
    edges = [0, *breaks.tolist(), ranks.size]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


@plots_for("curvature")
@styled
def curvature_figures(sec, result) -> dict[str, Any]:
    """The curvature profile: Hessian eigenvalues sorted descending, median (solid), mean (dashed)
    and 25–75 % band over the samples, per spectrum (exact, finite difference), on a symlog y axis (nats per pixel²)."""
    spectra = [
        (label, color, s)
        for label, color, s in (
            ("exact Hessian", EXACT, sec.exact),
            ("finite difference at the ε-ball step", FINITE_DIFFERENCE, sec.finite_difference),
        )
        if s is not None and s.profile_ranks
    ]
    if not spectra:
        return {}
    fig = figure(7.2, 3.6)
    ax = fig.add_subplot()
    allv = []
    for label, color, s in spectra:
        ranks = np.asarray(s.profile_ranks, dtype=np.int64)
        mean, q25, q75 = floats(s.profile_mean), floats(s.profile_q25), floats(s.profile_q75)
        median = floats(s.profile_median) if s.profile_median else None
        allv.extend([mean, q25, q75])
        ends = "" if s.complete else " (Lanczos: both ends only)"
        for i, sl in enumerate(_runs(ranks)):
            ax.fill_between(
                ranks[sl],
                q25[sl],
                q75[sl],
                color=color,
                alpha=0.2,
                linewidth=0,
                label=f"{label}: 25–75 % of samples" if i == 0 else None,
            )
            marker = "." if ranks[sl].size < 60 else None
            if median is not None:  # the typical sample; the mean follows the few with large curvature
                ax.plot(
                    ranks[sl],
                    median[sl],
                    color=color,
                    linewidth=1.6,
                    marker=marker,
                    label=f"{label}: median{ends}" if i == 0 else None,
                )
            ax.plot(
                ranks[sl],
                mean[sl],
                color=color,
                linewidth=1.0,
                linestyle="--" if median is not None else "-",
                marker=None if median is not None else marker,
                label=f"{label}: mean{'' if median is not None else ends}" if i == 0 else None,
            )
    ax.set_yscale("symlog", linthresh=_symlog_threshold(np.concatenate(allv)), linscale=2.0)  # room for the labels around 0
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"eigenvalue rank (0 = largest, of d = {sec.d})")
    ax.set_ylabel("λ of ∇²ℓ(x) (nats / pixel², symlog)")
    ax.set_title(f"Curvature profile of the cross-entropy, {sec.n_samples} correct samples (pixel space [0,1])")
    fig.legend(loc="outside lower center", ncols=2)
    return {"profile": to_data_uri(fig)}


# --- indicator ---------------------------------------------------------------------------------------
def _pairs(radius, attack) -> tuple[np.ndarray, np.ndarray]:
    r, a = floats(radius), floats(attack)
    ok = np.isfinite(r) & np.isfinite(a) & (r > 0) & (a > 0)
    return r[ok], a[ok]


def _rho(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


@plots_for("indicator")
@styled
def indicator_figures(sec, result) -> dict[str, Any]:
    """Eq. 9 indicator radius vs attack-found minimal radius per sample (ℓ∞ and ℓ2, log–log, pixel
    scale) with Spearman's ρ; Theorem-1 bounds against the attack-found ℓ2 radius."""
    out: dict[str, Any] = {}
    panels = [("ℓ∞", sec.radius_linf, sec.radii_linf, sec.spearman_linf), ("ℓ2", sec.radius_l2, sec.radii_l2, sec.spearman_l2)]
    if any(_pairs(r, a)[0].size for _, r, a, _ in panels):
        out["scatter"] = _indicator_scatter(panels)
    if sec.theorem1 and any(np.isfinite(floats(sec.radii_l2))):
        out["theorem1"] = _theorem1_bounds(sec)
    return out


def _indicator_scatter(panels) -> str:
    fig = figure(8.4, 4.0)
    axes = fig.subplots(1, 2)
    for ax, (sym, radius, attack, rho) in zip(axes, panels):
        r, a = _pairs(radius, attack)
        ax.set_title(f"{sym}: Spearman ρ = {_rho(rho)} (n = {r.size})")
        ax.set_xlabel(f"attack-found minimal radius ({sym}, [0,1] scale)")
        ax.set_ylabel(f"Eq. 9 indicator radius ({sym})")
        if not r.size:
            ax.text(0.5, 0.5, "no sample with both radii", transform=ax.transAxes, ha="center")
            continue
        ax.scatter(a, r, s=16, color=ADVERSARIAL, alpha=0.8, label="sample", zorder=3)
        lo, hi = float(min(a.min(), r.min())), float(max(a.max(), r.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1, label="indicator = attack radius")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _no_minor_labels(ax)
    axes[0].legend(loc="upper left")
    fig.suptitle("Yu et al.'s second-order indicator vs the attack-found minimal perturbation", fontsize=10)
    return to_data_uri(fig)


def _theorem1_bounds(sec) -> str:
    """Per sample (sorted by attack radius): [lower, upper] of each Hessian as a bar, attack ℓ2 radius as a dot."""
    r2 = floats(sec.radii_l2)
    order = [i for i in np.argsort(np.where(np.isfinite(r2), r2, np.inf), kind="stable") if np.isfinite(r2[i])]
    fig = figure(7.2, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(order), dtype=np.float64)
    colors = {"finite_difference": FINITE_DIFFERENCE, "exact": EXACT}
    for k, (key, res) in enumerate(sorted(sec.theorem1.items())):
        lo, up = floats(res.lower)[order], floats(res.upper)[order]
        ok = np.isfinite(lo) & np.isfinite(up) & (lo > 0) & (up > 0)
        offset = -0.15 + 0.3 * k
        ax.vlines(
            x[ok] + offset,
            lo[ok],
            up[ok],
            color=colors.get(key, ATTACK_CYCLE[2 + k]),
            linewidth=3,
            alpha=0.7,
            label=f"Theorem 1 [lower, upper], {key.replace('_', ' ')} Hessian",
        )
    ax.scatter(x, r2[order], color=ADVERSARIAL, s=18, zorder=3, label="attack-found minimal ℓ2 radius")
    ax.set_yscale("log")
    _no_minor_labels(ax)
    ax.set_xticks(x, [str(sec.indices[i]) for i in order], rotation=90 if len(order) > 12 else 0, fontsize=7)
    ax.set_xlabel("sample (dataset index), sorted by attack radius")
    ax.set_ylabel("ℓ2 radius (pixel scale [0,1], log)")
    ax.set_title("Theorem 1 bounds (quadratic model of the loss) vs attack-found radius")
    fig.legend(loc="outside lower center", ncols=2)
    return to_data_uri(fig)


# --- spectra -----------------------------------------------------------------------------------------
@plots_for("spectra")
@styled
def spectra_figures(sec, result) -> dict[str, Any]:
    """Per layer: σ_max as a bar, mean σ ± std as a dot with error bar, σ_min as a tick (weight units)."""
    if not sec.layers:
        return {}
    layers = sec.layers
    x = np.arange(len(layers))
    fig = figure(max(5.0, 0.7 * len(layers) + 2.5), 3.6)
    ax = fig.add_subplot()
    smax = np.asarray([layer.sigma_max for layer in layers], dtype=np.float64)
    ax.bar(x, smax, color=NATURAL, alpha=0.8, label="σ_max (spectral norm)")
    ax.errorbar(
        x,
        [layer.mean for layer in layers],
        yerr=[layer.std for layer in layers],
        fmt="o",
        color="black",
        markersize=3,
        capsize=3,
        label="mean σ ± std",
    )
    smin = np.asarray([layer.sigma_min for layer in layers], dtype=np.float64)
    ax.scatter(x, smin, marker="_", s=120, color=ATTACK_CYCLE[0], label="σ_min", zorder=3)
    pos = np.concatenate([smax[smax > 0], smin[smin > 0]])
    if pos.size and pos.max() / pos.min() > 100:
        ax.set_yscale("log")
    names = [plain(layer.name[: -len(".weight")] if layer.name.endswith(".weight") else layer.name) for layer in layers]
    ax.set_xticks(x, names, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center", fontsize=7)
    ax.set_xlabel("layer (weights read as out × in matrices)")
    ax.set_ylabel("singular value (weight units)")
    ax.set_title(f"Singular values of the weight matrices ({len(layers)} layers)")
    fig.legend(loc="outside right center")
    return {"bars": to_data_uri(fig)}
