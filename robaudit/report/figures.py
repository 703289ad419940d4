"""The report's drawing kit: colours, the figure registry, deterministic PNG data URIs, image and
histogram helpers. The section figures (:mod:`.plots`, :mod:`.geometry_plots`, :mod:`.surface_plots`)
are drawn with it and registered with :func:`plots_for`.

Scales, everywhere: ε and perturbations on the pixel scale [0,1]; accuracies are fractions in
[0,1] drawn as percentages; the margin L(x) = Z_y − max_{i≠y} Z_i in logits; the loss in nats.

Each section's figures come from one function registered with :func:`plots_for` under the
section's name (``SECTION_PLOTS``); the HTML renderer looks it up by name and hands the result to
that section's template partial as ``fig``. Rendering uses matplotlib's Agg canvas directly (no
pyplot, no global state) with fixed style and PNG metadata, so the same result gives the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

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
    "ATTACK_CYCLE",
    "HEATMAP_CMAP",
    "jacobian_map",
    "jacobian_heatmap_uri",
    "styled",
    "Bins",
    "histogram_bins",
]

# Colours, defined once: natural (clean) inputs, adversarial inputs / the worst case, samples
# already misclassified without an attack; compare's before/after.
NATURAL = "#1f77b4"
ADVERSARIAL = "#d62728"
MISCLASSIFIED = "#7f7f7f"
BEFORE = "#7f7f7f"
AFTER = "#1f77b4"
# Individual attacks (neither natural nor worst case), assigned in order of first appearance.
ATTACK_CYCLE = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79")

HEATMAP_CMAP = "magma"  # |∂L/∂x| heatmaps: black = 0

DPI = 100
_STYLE: dict[Any, Any] = {  # matplotlib rcParams
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "text.usetex": False,
    "svg.hashsalt": "robaudit",
    "path.simplify": True,
}

PlotFn = Callable[[Any, Any], dict[str, Any]]
SECTION_PLOTS: dict[str, PlotFn] = {}


def plots_for(name: str) -> Callable[[PlotFn], PlotFn]:
    """Register ``fn(section, result) -> dict`` as the figures of section ``name``.

    Values are data URIs (``str``) or lists of dicts (e.g. a gallery); the partial
    ``templates/sections/<name>.html.j2`` reads them as ``fig.<key>``.
    """

    def deco(fn: PlotFn) -> PlotFn:
        SECTION_PLOTS[name] = fn
        return fn

    return deco


# --- primitives ------------------------------------------------------------------------------------
def figure(
    width: float = 6.4, height: float = 3.4, layout: Literal["constrained", "compressed", "tight"] | None = "constrained"
):
    """A new Agg-backed Figure with the report style (use inside :func:`styled`); ``layout=None``
    for manual placement (constrained layout is slow with 3-D axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def styled(fn: Callable) -> Callable:
    """Run a plotting function under the fixed report rcParams."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def to_data_uri(fig) -> str:
    """PNG bytes of ``fig`` as a data URI; no Software/date metadata, so bytes are reproducible."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _to_uint8(img: np.ndarray, scale: int) -> np.ndarray:
    """(C,H,W) in [0,1] → (H·s, W·s[, 3]) uint8, nearest-neighbour upscaled so pixels stay visible."""
    arr = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    arr = np.rint(arr * 255).astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0))
    return np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)


def _upscale(shape: tuple[int, ...], target: int = 112) -> int:
    return max(1, math.ceil(target / max(shape[-2:])))


def image_data_uri(img: np.ndarray) -> str:
    """A (C,H,W) image on the pixel scale [0,1] as a PNG data URI (upscaled to about 112 px)."""
    return _png_uri(_to_uint8(img, _upscale(img.shape)))


def perturbation_data_uri(clean: np.ndarray, adversarial: np.ndarray) -> tuple[str, float]:
    """δ = adversarial − clean drawn as 0.5 + δ·k with k = 0.5 / max|δ| (mid-grey = no change,
    black/white = the largest change), i.e. amplified to the full range. Returns (uri, k)."""
    delta = np.asarray(adversarial, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    gain = 0.5 / peak if peak > 0 else 0.0
    return image_data_uri(0.5 + delta * gain), gain


@dataclass(frozen=True)
class Bins:
    """Histogram bin edges and the x scale to draw them on (``linear``, ``log`` or ``symlog`` with
    ``linthresh``); ``constant``: every value is the same (the plot says so instead of one bar)."""

    edges: np.ndarray
    scale: str = "linear"
    linthresh: float = 0.0
    constant: float | None = None

    def apply(self, ax) -> None:
        if self.scale == "log":
            ax.set_xscale("log")
        elif self.scale == "symlog":
            ax.set_xscale("symlog", linthresh=self.linthresh)
        if self.constant is not None:
            ax.text(0.5, 0.92, f"every sample: {self.constant:.4g}", transform=ax.transAxes, ha="center", va="top", fontsize=8)

    def suffix(self) -> str:
        return {"log": ", log scale", "symlog": ", log scale above the first bin"}.get(self.scale, "")


def histogram_bins(data, count: int = 30, bounds: tuple[float, float] | None = None) -> Bins:
    """Bins that show a distribution instead of one tall bar.

    Over ``bounds`` (a natural range such as [0,1]) unless the values fill less than a fifth of it,
    else over the values' own range. Non-negative values spanning more than two decades whose linear
    bins would put half of them in one bin get logarithmic bins (a first bin [0, smallest positive)
    holds exact zeros, drawn on a symlog axis); never within ``bounds``."""
    parts = [np.asarray(d, dtype=np.float64) for d in data]
    allv = np.concatenate([d[np.isfinite(d)] for d in parts] or [np.zeros(0)])
    if not allv.size:
        return Bins(np.linspace(0.0, 1.0, count + 1))
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        pad = 0.5 * max(abs(lo), 1e-3)
        return Bins(np.linspace(lo - pad, hi + pad, count + 1), constant=lo)
    if bounds is not None and (hi - lo) >= 0.2 * (bounds[1] - bounds[0]):
        return Bins(np.linspace(bounds[0], bounds[1], count + 1))
    edges = np.linspace(lo, hi, count + 1)
    crowded = np.histogram(allv, bins=edges)[0].max() >= 0.5 * allv.size
    pos = allv[allv > 0]
    if bounds is None and lo >= 0 and crowded and pos.size and hi / pos.min() > 100:
        logs = np.geomspace(pos.min() * 0.999, hi * 1.001, count)
        if lo == 0:
            return Bins(np.concatenate([[0.0], logs]), "symlog", float(logs[0]))
        return Bins(logs, "log")
    return Bins(edges)


def attack_colors(labels) -> dict[str, str]:
    """A stable colour per attack label, in order of first appearance."""
    out: dict[str, str] = {}
    for label in labels:
        if label not in out:
            out[label] = ATTACK_CYCLE[len(out) % len(ATTACK_CYCLE)]
    return out


def norm_symbol(norm: str) -> str:
    return {"linf": "ℓ∞", "l2": "ℓ2"}.get(norm, norm)


def plain(text: Any) -> str:
    """Text for a matplotlib label: ``$`` escaped so user strings never turn into mathtext."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


# --- input-gradient heatmaps ---------------------------------------------------------------------
def jacobian_map(gradient: np.ndarray) -> np.ndarray:
    """(C,H,W) margin gradient → (H,W) map of Σ_c |∂L/∂x_c| (logits per unit pixel intensity)."""
    g = np.abs(np.asarray(gradient, dtype=np.float64))
    return g.sum(axis=0) if g.ndim == 3 else g


def _heatmap_rgb(values: np.ndarray, peak: float) -> np.ndarray:
    """(H,W) non-negative values → (3,H,W) colours in [0,1] on the heatmap colormap, 0..peak."""
    from matplotlib import colormaps

    scaled = np.clip(values / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(values)
    return np.transpose(colormaps[HEATMAP_CMAP](scaled)[..., :3], (2, 0, 1))


def jacobian_heatmap_uri(heatmap) -> tuple[str, float]:
    """A stored JacobianHeatmap as a small PNG (|∂L/∂x| summed over channels, black = 0, bright =
    the sample's largest entry). Returns (uri, largest value in logits per unit pixel intensity)."""
    from ..checks.attacks import decode_tensor

    values = jacobian_map(decode_tensor(heatmap.gradient, tuple(heatmap.shape)).numpy())
    peak = float(values.max()) if values.size else 0.0
    return image_data_uri(_heatmap_rgb(values, peak)), peak
