"""Figures of the loss-surface sections: ``surfaces`` (the margin and loss on planes through each
stored sample, in input space) and ``landscape`` (the loss over filter-normalized weight
directions), registered in :data:`robaudit.report.figures.SECTION_PLOTS`.

Scales: plane coordinates on the pixel scale [0,1] (the threat norm, unclipped); the margin
L(x) = Z_y − max_{i≠y} Z_i in logits (blue > 0 correct, red < 0); losses in nats; landscape
coordinates in filter-normalized units (a = 1 moves every filter by its own norm).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .figures import ATTACK_CYCLE, NATURAL, figure, norm_symbol, plain, plots_for, styled, to_data_uri

__all__ = ["BOUNDARY", "SURFACE_DIRECTIONS", "SURFACE_DIRECTIONS_SHORT", "draw_boundary", "surface_sample_figure"]

BOUNDARY = "black"  # the decision boundary L = 0, in every surface plot

SURFACE_DIRECTIONS_SHORT = {
    "random": "random",
    "fgsm": "FGSM (CE gradient)",
    "least_likely": "least-likely attack",
    "cw": "C&W-ℓ2",
    "deepfool": "DeepFool-ℓ2",
}
SURFACE_DIRECTIONS = {
    "random": "random direction",
    "fgsm": "FGSM direction (cross-entropy gradient)",
    "least_likely": "least-likely attack's perturbation",
    "cw": "C&W-ℓ2 minimal perturbation",
    "deepfool": "DeepFool-ℓ2 perturbation (normal to the nearest boundary)",
}


# --- surfaces ----------------------------------------------------------------------------------------
def draw_boundary(ax, a: np.ndarray, b: np.ndarray, margin_grid: np.ndarray):
    """Draw the decision boundary L = 0 of ``margin_grid`` [rows along a][columns along b] as one
    black contour at level 0 on a 2-D axes (x = a, y = b). Returns the ContourSet, or None when L
    does not change sign on the grid (no boundary in view)."""
    m = np.asarray(margin_grid, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if not finite.size or finite.min() > 0 or finite.max() < 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ax.contour(a, b, m.T, levels=[0.0], colors=BOUNDARY, linewidths=2.2)


def _eps_box(ax, eps: float) -> None:
    """Dashed lines at ±ε along both axes: where the ε-ball's boundary crosses each axis."""
    for v in (-eps, eps):
        ax.axvline(v, color="0.35", linestyle=":", linewidth=1)
        ax.axhline(v, color="0.35", linestyle=":", linewidth=1)


def _margin_contours(ax, a: np.ndarray, plane, eps: float, norm):
    """One 2-D panel: filled contours of the margin L (logits; blue > 0 correct, red < 0) with the
    decision boundary L = 0 drawn on top, the sample as a star and ±ε dotted."""
    m = np.asarray(plane.margin, dtype=np.float64)
    cs = ax.contourf(a, a, m.T, levels=21, cmap="RdBu", norm=norm)
    boundary = draw_boundary(ax, a, a, m)
    _eps_box(ax, eps)
    ax.plot([0], [0], marker="*", color="white", markeredgecolor="black", markersize=9, linestyle="none")
    ax.grid(False)
    return cs, boundary


def _surface_3d(ax, a: np.ndarray, plane) -> None:
    """The loss surface (nats) over the plane, with the L = 0 boundary projected on its floor."""
    loss = np.asarray(plane.loss, dtype=np.float64)
    m = np.asarray(plane.margin, dtype=np.float64)
    A, B = np.meshgrid(a, a, indexing="ij")  # rows along u, as stored
    ax.plot_surface(A, B, loss, cmap="viridis", linewidth=0, antialiased=False, rcount=len(a), ccount=len(a))
    floor = float(np.nanmin(loss)) if np.isfinite(loss).any() else 0.0
    if np.isfinite(m).any() and np.nanmin(m) <= 0 <= np.nanmax(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax.contour(A, B, m, levels=[0.0], colors=BOUNDARY, linewidths=2, zdir="z", offset=floor)
    ax.set_zlim(bottom=floor)
    ax.set_xlabel("a (along u)", fontsize=8, labelpad=2)
    ax.set_ylabel("b (along v)", fontsize=8, labelpad=2)
    ax.set_zlabel("loss (nats)", fontsize=8, labelpad=4)
    ax.tick_params(labelsize=7, pad=0)
    ax.view_init(elev=30, azim=-60)


SURFACE_COLUMNS = 3  # planes per row of the figure, so each panel is about 3 inches wide


@styled
def surface_sample_figure(sec, sample) -> str:
    """For one sample, a grid of planes (three per row): for each, the margin contours with the L = 0
    boundary (a along u horizontal, b along v vertical; threat norm, pixel scale, unclipped) and
    below it the 3-D loss surface (nats) with the boundary projected on its floor. One colour
    scale for the margins."""
    from matplotlib.colors import TwoSlopeNorm

    a = np.asarray(sec.axis, dtype=np.float64)
    planes = [p for p in sample.planes if p.margin]
    sym = norm_symbol(sec.norm)
    k = len(planes)
    cols = min(k, SURFACE_COLUMNS)
    rows = -(-k // cols)
    height = 6.2 * rows + 1.0
    fig = figure(3.5 * cols + 1.2, height, layout=None)  # constrained layout with 3-D axes costs seconds
    fig.subplots_adjust(left=0.07, right=0.88, top=1 - 1.0 / height, bottom=0.2 / height, wspace=0.35, hspace=0.22)
    allm = np.concatenate([np.asarray(p.margin, dtype=np.float64).ravel() for p in planes])
    finite = allm[np.isfinite(allm)]
    norm = TwoSlopeNorm(
        vcenter=0.0,
        vmin=float(min(finite.min(), -1e-6)) if finite.size else -1.0,
        vmax=float(max(finite.max(), 1e-6)) if finite.size else 1.0,
    )
    cs = None
    for j, plane in enumerate(planes):
        r, c = divmod(j, cols)
        top = fig.add_subplot(2 * rows, cols, 2 * r * cols + c + 1)
        cs, boundary = _margin_contours(top, a, plane, sec.eps, norm)
        top.set_title(
            f"u: {SURFACE_DIRECTIONS_SHORT.get(plane.name, plain(plane.name))}"
            + ("" if boundary is not None else " (no L = 0 in view)"),
            fontsize=10,
        )
        top.set_xlabel(f"a along u ({sym})", fontsize=8, labelpad=1)
        top.set_ylabel(f"b along v = random ({sym})", fontsize=8)
        top.tick_params(labelsize=7)
        top.set_aspect("equal")
        _surface_3d(fig.add_subplot(2 * rows, cols, (2 * r + 1) * cols + c + 1, projection="3d"), a, plane)
    cax = fig.add_axes((0.91, 1 - 3.8 / height, 0.015, 2.6 / height))
    fig.colorbar(cs, cax=cax, label="margin L (logits)")
    fig.suptitle(
        f"Sample #{sample.index}: margin L on planes x + a·u + b·v (black: decision boundary L = 0, ★ = the sample,\n"
        f"dotted: ±ε = {sec.eps:.3g}); under each plane: the loss surface in 3-D",
        fontsize=10,
    )
    return to_data_uri(fig)


@plots_for("surfaces")
def surfaces_figures(sec, result) -> dict[str, Any]:
    """One figure per stored sample (all its planes): ``fig.samples[i] = {"sample", "figure"}``."""
    if not sec.axis:
        return {}
    out = [{"sample": s, "figure": surface_sample_figure(sec, s)} for s in sec.samples if any(p.margin for p in s.planes)]
    return {"samples": out} if out else {}


# --- landscape ---------------------------------------------------------------------------------------
@plots_for("landscape")
@styled
def landscape_figures(sec, result) -> dict[str, Any]:
    """Filter-normalized parameter-space landscape: 1-D loss (nats) and accuracy (%) along d₁, and
    the 2-D loss contours over (d₁, d₂); a = 1 moves every filter by its own norm."""
    if sec.skipped or not sec.loss_1d:
        return {}
    fig = figure(9.0, 3.5)
    ax1 = fig.add_subplot(1, 2, 1)
    x1 = np.asarray(sec.axis_1d, dtype=np.float64)
    ax1.plot(x1, sec.loss_1d, color=NATURAL, marker="o", markersize=3, label="loss (nats)")
    ax1.set_xlabel("a along d₁ (filter-normalized units)")
    ax1.set_ylabel("batch-mean cross-entropy (nats)")
    twin = ax1.twinx()
    twin.plot(
        x1, 100 * np.asarray(sec.accuracy_1d, dtype=np.float64), color=ATTACK_CYCLE[2], linestyle="--", label="accuracy (%)"
    )
    twin.set_ylabel("accuracy (%)")
    twin.set_ylim(-2, 102)
    twin.grid(False)
    lines = ax1.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax1.legend(lines, [line.get_label() for line in lines], loc="upper center")
    sharpness = "—" if sec.sharpness_1d is None else f"{sec.sharpness_1d:.3g}"  # None: no finite loss at θ
    ax1.set_title(f"1-D landscape (n = {sec.n_samples}; sharpness {sharpness} nats)")
    if sec.loss_2d:
        ax2 = fig.add_subplot(1, 2, 2)
        x2 = np.asarray(sec.axis_2d, dtype=np.float64)
        loss = np.asarray(sec.loss_2d, dtype=np.float64)
        cs = ax2.contourf(x2, x2, loss.T, levels=15, cmap="viridis")
        ax2.contour(x2, x2, loss.T, levels=15, colors="white", linewidths=0.4)
        ax2.plot([0], [0], marker="*", color="white", markeredgecolor="black", markersize=10, linestyle="none")
        fig.colorbar(cs, ax=ax2, label="cross-entropy (nats)")
        ax2.set_xlabel("a along d₁ (filter-normalized)")
        ax2.set_ylabel("b along d₂ (filter-normalized)")
        ax2.set_title("2-D loss landscape (★ = trained weights)")
        ax2.grid(False)
    return {"landscape": to_data_uri(fig)}
