"""Check ``jacobian``: input gradients of the margin and of the loss (Yu et al., 000 §4.3).

For every sample of the scan (correct or not), in **pixel space** [0,1] (the model carries its
normalization, so a gradient here is the normalized-space gradient divided by std):

* ``J = ∂L/∂x`` of the margin ``L(x) = Z_y − max_{i≠y} Z_i`` (logit units per unit of pixel
  intensity) — Yu et al.'s Jacobian; ``ε‖J‖₁`` is the first-order change of L under an ℓ∞
  perturbation of size ε (Eq. 9);
* ``g = ∇ℓ(x)`` of the per-sample cross-entropy (nats per unit of pixel intensity).

Per sample: ℓ1, ℓ2, ℓ∞ norms and the fraction of entries with ``|·| <``
:data:`ZERO_THRESHOLD` (Yu et al.'s "10e-3", footnote 3, read as 1e-3; an absolute threshold, so
it depends on the scale above). Summaries: mean and median over all samples, and per-class means.
Yu et al. (MNIST, Madry et al.'s models, 100 test images): margin-Jacobian ℓ1 ≈ 500 natural vs
≈ 50 robust; zero entries 1.1 % natural vs 54.0 % robust.

Heatmaps: the margin gradient of the :data:`N_HEATMAPS` correct samples with the smallest margin
(float32 base64, row-major, with the input image) for inputs of at most
:data:`MAX_HEATMAP_NUMEL` values. Cost: one forward and two backward passes per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.jacobian import input_jacobian, jacobian_stats
from ..parts import Part, lowest
from ..schema import Section, section
from .attacks import encode_tensor
from .base import CHECKS, Check

__all__ = ["ZERO_THRESHOLD", "N_HEATMAPS", "JacobianStats", "JacobianHeatmap", "JacobianSection", "JacobianCheck"]

ZERO_THRESHOLD = 1e-3
N_HEATMAPS = 4
MAX_HEATMAP_NUMEL = 3 * 64 * 64
_STATS = ("l1", "l2", "linf", "zero_frac")


def _round(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


@dataclass(frozen=True)
class JacobianStats:
    """Statistics of one input gradient over the n samples. ``function``: what was differentiated
    and its units. Per sample (dataset order): ``l1``, ``l2``, ``linf`` norms and ``zero_fraction``
    (fraction of the d entries with |·| < the section's ``zero_threshold``). ``mean_*`` /
    ``median_*`` over all samples; ``per_class_*``: mean per class (None for an absent class)."""

    function: str
    mean_l1: float
    median_l1: float
    mean_l2: float
    median_l2: float
    mean_linf: float
    median_linf: float
    mean_zero_fraction: float
    median_zero_fraction: float
    per_class_l1: tuple[float | None, ...]
    per_class_l2: tuple[float | None, ...]
    per_class_zero_fraction: tuple[float | None, ...]
    l1: tuple[float, ...]
    l2: tuple[float, ...]
    linf: tuple[float, ...]
    zero_fraction: tuple[float, ...]
    per_sample_fields: ClassVar = ("l1", "l2", "linf", "zero_fraction")  # what the JSON reader checks (results.Section)
    per_class_fields: ClassVar = ("per_class_l1", "per_class_l2", "per_class_zero_fraction")


@dataclass(frozen=True)
class JacobianHeatmap:
    """The margin gradient ∂L/∂x of one sample (float32 base64 of ``shape``, pixel space), the
    input image (same encoding), the sample's dataset index, label, margin L(x) and ‖∂L/∂x‖₁."""

    index: int
    label: int
    margin: float
    l1: float
    shape: tuple[int, ...]
    image: str
    gradient: str
    encoded_fields: ClassVar = ("image", "gradient")  # what the JSON reader checks (results.Section)
    sample_index_fields: ClassVar = ("index",)


@section("jacobian")
@dataclass(frozen=True)
class JacobianSection(Section):
    """Input gradients of the margin (``margin``: logit units per pixel unit) and of the
    cross-entropy (``ce``: nats per pixel unit) over all ``n`` samples, pixel space [0,1].
    ``zero_threshold``: the |entry| below which an entry counts as zero. ``heatmaps``: the margin
    gradients of the lowest-margin correct samples and of the attack gallery's samples."""

    scale: str
    zero_threshold: float
    n: int
    d: int
    margin: JacobianStats
    ce: JacobianStats
    heatmaps: tuple[JacobianHeatmap, ...] = ()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, st in (("margin", self.margin), ("ce", self.ce)):
            out.update({f"jacobian.{key}.{name}": getattr(st, attr) for name, attr in _METRIC_FIELDS.items()})
        return out


# metric suffix → JacobianStats field, for jacobian.<margin|ce>.<suffix>
_METRIC_FIELDS = {
    "l1_mean": "mean_l1",
    "l1_median": "median_l1",
    "l2_mean": "mean_l2",
    "l2_median": "median_l2",
    "linf_mean": "mean_linf",
    "zero_fraction_mean": "mean_zero_fraction",
    "zero_fraction_median": "median_zero_fraction",
}
JACOBIAN_METRICS = tuple(f"jacobian.{key}.{name}" for key in ("margin", "ce") for name in _METRIC_FIELDS)


def _stats(function: str, per: dict[str, torch.Tensor], y: torch.Tensor, num_classes: int) -> JacobianStats:
    def per_class(v: torch.Tensor) -> tuple[float | None, ...]:
        out = []
        for c in range(num_classes):
            m = y == c
            out.append(_round(float(v[m].mean())) if bool(m.any()) else None)
        return tuple(out)

    def summary(v: torch.Tensor) -> tuple[float, float]:
        return (_round(float(v.mean())), _round(float(v.median()))) if v.numel() else (0.0, 0.0)

    l1, l2, linf, zf = (per[k].double() for k in _STATS)
    (m1, d1), (m2, d2), (mi, di), (mz, dz) = (summary(v) for v in (l1, l2, linf, zf))
    return JacobianStats(
        function=function,
        mean_l1=m1,
        median_l1=d1,
        mean_l2=m2,
        median_l2=d2,
        mean_linf=mi,
        median_linf=di,
        mean_zero_fraction=mz,
        median_zero_fraction=dz,
        per_class_l1=per_class(l1),
        per_class_l2=per_class(l2),
        per_class_zero_fraction=per_class(zf),
        l1=tuple(_round(v) for v in l1.tolist()),
        l2=tuple(_round(v) for v in l2.tolist()),
        linf=tuple(_round(v) for v in linf.tolist()),
        zero_fraction=tuple(_round(v) for v in zf.tolist()),
    )


def lowest_margin_correct(clean, count: int) -> list[int]:
    """Positions of the ``count`` clean-correct samples of ``clean`` (a clean table: this process's
    or the merged one) with the smallest margin L(x) (ascending margin; ties by position)."""
    cands = [
        {"position": p, "margin": m} for p, m, ok in zip(clean.positions, clean.col("margin"), clean.col("correct")) if ok
    ]
    return [c["position"] for c in lowest(cands, count)]


@CHECKS.register("jacobian")
class JacobianCheck(Check):
    """Per-sample records (table ``samples``): ``{margin,ce}.{l1,l2,linf,zero_frac}``; extra: this
    process's ``n_heatmaps`` lowest-margin correct samples with their margin gradients (the section
    keeps the lowest of all)."""

    name = "jacobian"
    requires = ("clean",)
    description = "input gradients of the margin and the loss: norms, near-zero entries, heatmaps (Yu et al.)"

    zero_threshold: float = ZERO_THRESHOLD
    n_heatmaps: int = N_HEATMAPS

    def max_passes(self, plan) -> tuple[float, float]:
        return 2.0, 2.0  # one input gradient of the margin, one of the cross-entropy

    def metric_names(self, plan) -> tuple[str, ...]:
        return JACOBIAN_METRICS

    def _heatmap_candidates(self, ctx, clean) -> set[int]:
        """This process's ``n_heatmaps`` lowest-margin correct samples, plus every sample of which the
        attacks check kept a gallery candidate here (so each card of the report's gallery has its
        heatmap; the section keeps those that made the gallery, see :meth:`combine`)."""
        keep = set(lowest_margin_correct(clean, self.n_heatmaps))
        attacks = ctx.parts.get("attacks")
        if attacks is not None:
            keep |= {int(ex["position"]) for ex in attacks.extra.get("examples", [])}
        return keep

    def compute(self, ctx) -> Part:
        n = int(ctx.positions.numel())
        d = math.prod(ctx.data.input_shape)
        per = {fn: {k: torch.empty(n, dtype=torch.float64) for k in _STATS} for fn in ("margin", "ce")}
        clean = ctx.local("clean")
        keep = self._heatmap_candidates(ctx, clean) if d <= MAX_HEATMAP_NUMEL else set()
        kept: dict[int, torch.Tensor] = {}

        def batch(x, y, sl):
            for fn in ("margin", "ce"):
                _, grads = input_jacobian(ctx.model, x, y, fn)
                st = jacobian_stats(grads, self.zero_threshold)
                for k in _STATS:
                    per[fn][k][sl] = st[k].detach().double().cpu()
                if fn == "margin" and keep:
                    for j, p in enumerate(ctx.positions[sl].tolist()):
                        if p in keep:
                            kept[p] = grads[j].detach().float().cpu()

        ctx.map_batches(batch, description="input Jacobians")
        part = Part()
        part.add("samples", ctx.positions, **{f"{fn}.{k}": per[fn][k] for fn in per for k in _STATS})
        images = ctx.data.batch(sorted(kept)) if kept else torch.empty(0)
        part.extra["heatmaps"] = [
            {
                "position": p,
                "margin": clean.at("margin", [p])[0],
                "label": int(ctx.data.y[p]),
                "l1": float(per["margin"]["l1"][clean.row_of[p]]),
                "shape": list(kept[p].shape),
                "image": encode_tensor(images[j]),
                "gradient": encode_tensor(kept[p]),
            }
            for j, p in enumerate(sorted(kept))
        ]
        return part

    def combine(self, tables, extras, info) -> JacobianSection:
        t = tables["samples"]
        y = info.clean().tensor("label", torch.long)
        per = {fn: {k: t.tensor(f"{fn}.{k}") for k in _STATS} for fn in ("margin", "ce")}
        candidates = [h for e in extras for h in e.get("heatmaps", [])]
        gallery = {int(ex.index) for ex in getattr(info.sections.get("attacks"), "examples", ()) or ()}
        chosen = {h["position"]: h for h in lowest(candidates, self.n_heatmaps)}
        chosen.update({h["position"]: h for h in candidates if h["position"] in gallery})
        ordered = lowest(chosen.values(), len(chosen))  # ascending margin, ties by position
        heatmaps = tuple(
            JacobianHeatmap(
                index=h["position"],
                label=h["label"],
                margin=_round(h["margin"]),
                l1=_round(h["l1"]),
                shape=tuple(h["shape"]),
                image=h["image"],
                gradient=h["gradient"],
            )
            for h in ordered
        )
        return JacobianSection(
            scale="pixel space [0,1]; margin gradient in logit units per pixel unit, CE gradient in nats per pixel unit",
            zero_threshold=float(self.zero_threshold),
            n=info.n,
            d=math.prod(info.input_shape),
            margin=_stats("d/dx of L(x) = Z_y - max_{i!=y} Z_i (logit units)", per["margin"], y, info.num_classes),
            ce=_stats("d/dx of the per-sample cross-entropy (nats)", per["ce"], y, info.num_classes),
            heatmaps=heatmaps,
        )
