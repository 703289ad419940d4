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

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.jacobian import input_jacobian, jacobian_stats
from ..geometry.margin import margin
from ..results import Section, section
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
    ``zero_threshold``: the |entry| below which an entry counts as zero. ``heatmaps``: the
    lowest-margin correct samples' margin gradients."""

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
            out.update({
                f"jacobian.{key}.l1_mean": st.mean_l1,
                f"jacobian.{key}.l1_median": st.median_l1,
                f"jacobian.{key}.l2_mean": st.mean_l2,
                f"jacobian.{key}.l2_median": st.median_l2,
                f"jacobian.{key}.linf_mean": st.mean_linf,
                f"jacobian.{key}.zero_fraction_mean": st.mean_zero_fraction,
                f"jacobian.{key}.zero_fraction_median": st.median_zero_fraction,
            })
        return out


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
        mean_l1=m1, median_l1=d1, mean_l2=m2, median_l2=d2, mean_linf=mi, median_linf=di,
        mean_zero_fraction=mz, median_zero_fraction=dz,
        per_class_l1=per_class(l1), per_class_l2=per_class(l2), per_class_zero_fraction=per_class(zf),
        l1=tuple(_round(v) for v in l1.tolist()),
        l2=tuple(_round(v) for v in l2.tolist()),
        linf=tuple(_round(v) for v in linf.tolist()),
        zero_fraction=tuple(_round(v) for v in zf.tolist()),
    )


def lowest_margin_correct(ctx, count: int) -> list[int]:
    """Dataset indices of the ``count`` clean-correct samples with the smallest margin L(x) > 0
    (ascending margin; ties by index)."""
    logits = ctx.cache["clean_logits"].double()
    m = margin(logits, ctx.data.y)
    correct = torch.tensor(ctx.sections["clean"].correct, dtype=torch.bool)
    cand = correct.nonzero().squeeze(1)
    if cand.numel() == 0 or count <= 0:
        return []
    order = torch.argsort(m[cand], stable=True)
    return [int(i) for i in cand[order[:count]].tolist()]


@CHECKS.register("jacobian")
class JacobianCheck(Check):
    name = "jacobian"
    requires = ("clean",)
    description = "input gradients of the margin and the loss: norms, near-zero entries, heatmaps (Yu et al.)"

    zero_threshold: float = ZERO_THRESHOLD
    n_heatmaps: int = N_HEATMAPS

    def run(self, ctx) -> JacobianSection:
        n = ctx.data.n
        d = int(torch.tensor(ctx.data.input_shape).prod())
        per = {fn: {k: torch.empty(n, dtype=torch.float64) for k in _STATS} for fn in ("margin", "ce")}
        keep = lowest_margin_correct(ctx, self.n_heatmaps) if d <= MAX_HEATMAP_NUMEL else []
        kept: dict[int, torch.Tensor] = {}
        keep_set = set(keep)

        def batch(x, y, sl):
            for fn in ("margin", "ce"):
                _, grads = input_jacobian(ctx.model, x, y, fn)
                st = jacobian_stats(grads, self.zero_threshold)
                for k in _STATS:
                    per[fn][k][sl] = st[k].detach().double().cpu()
                if fn == "margin" and keep_set:
                    for j, i in enumerate(range(sl.start, sl.stop)):
                        if i in keep_set:
                            kept[i] = grads[j].detach().float().cpu()

        ctx.map_batches(batch, description="input Jacobians")
        y = ctx.data.y
        logits = ctx.cache["clean_logits"].double()
        m = margin(logits, y)
        heatmaps = tuple(
            JacobianHeatmap(
                index=i,
                label=int(y[i]),
                margin=_round(float(m[i])),
                l1=_round(float(per["margin"]["l1"][i])),
                shape=tuple(int(s) for s in ctx.data.x[i].shape),
                image=encode_tensor(ctx.data.x[i]),
                gradient=encode_tensor(kept[i]),
            )
            for i in keep
            if i in kept
        )
        return JacobianSection(
            scale="pixel space [0,1]; margin gradient in logit units per pixel unit, CE gradient in nats per pixel unit",
            zero_threshold=float(self.zero_threshold),
            n=n,
            d=d,
            margin=_stats("d/dx of L(x) = Z_y - max_{i!=y} Z_i (logit units)", per["margin"], y, ctx.data.num_classes),
            ce=_stats("d/dx of the per-sample cross-entropy (nats)", per["ce"], y, ctx.data.num_classes),
            heatmaps=heatmaps,
        )
