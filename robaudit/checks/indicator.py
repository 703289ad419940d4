"""Check ``indicator``: second-order robustness bounds and indicators against attack-found radii.

Runs on the ``curvature`` check's samples (the first k clean-correct ones), pixel space [0,1].

**Theorem 1 of Moosavi-Dezfooli et al. (002)**, ℓ2, per sample, on the cross-entropy ℓ (nats):
``c = t − ℓ(x)``, ``g = ∇ℓ(x)``, ``ν = λ_max(H)``, ``u`` its eigenvector →
``(‖g‖/ν)(√(1+2νc/‖g‖²) − 1) ≤ ‖r*‖ ≤ (|gᵀu|/ν)(√(1+2νc/(gᵀu)²) − 1)``, where r* is the minimal
perturbation that lifts the *quadratic model* of ℓ to the threshold t.

*Choice of t.* A C-class sample is misclassified only if ``p_y < p_j`` for some j, which forces
``p_y < ½``, i.e. ``ℓ > log 2``; and ``ℓ > log C`` (``p_y < 1/C``) forces it. So the decision
boundary lies between the loss levels log 2 and log C (equal for C = 2, where 002's t = log 2 is
exact). robaudit uses, per sample, the loss **on the boundary reached by lowering Z_y to the
runner-up Z_j with the other logits fixed**: ``t = log(2 + Σ_{i∉{y,j}} e^{Z_i − Z_j}) ∈ [log 2,
log C)`` (``t`` in the section). The *bracket* bounds use ``t = log 2`` for the lower bound (any
misclassifying r has ℓ ≥ log 2) and ``t = log C`` for the upper bound (ℓ ≥ log C misclassifies),
so under the quadratic model the decision radius lies in [lower(log 2), upper(log C)] for certain.

ν and u come from the ``curvature`` section: the finite-difference Hessian at the ε-ball step
(002's choice for ReLU networks; ``theorem1["finite_difference"]``) and the exact Hessian
(``theorem1["exact"]``). They are compared with **attack-found ℓ2 minimal radii** (upper bounds
on the true minimum): the ``minimal`` section's radii when that check ran earlier in the scan
with the ℓ2 norm, otherwise DeepFool's ℓ2 minimal perturbation on the same samples.

**Yu et al.'s indicator (000, Eq. 9)**: the radius at which ``ε‖J‖₁ + ½·d·ε²·max|λ|`` reaches
``L(x)`` (ℓ∞; :func:`robaudit.geometry.second_order_radius`), with J the margin's Jacobian and λ
the eigenvalues of **the margin's finite-difference Hessian** at the same ε-ball step as the
curvature check (for a ReLU network the exact margin Hessian is 0 almost everywhere, so the
exact form would reduce to the first-order radius L/‖J‖₁). Also the ℓ2 form
``ε‖J‖₂ + ½ε²max|λ| = L``. Model-level indicator: the median per-sample radius. Each is
compared with attack-found minimal radii of its norm (``minimal`` section's if that norm, else
DeepFool's) by Spearman's rank correlation (average ranks for ties, computed with torch).

Cost per sample: d + 1 gradients of the margin (its finite-difference spectrum, float64) and
DeepFool in ℓ2 and ℓ∞ where the ``minimal`` section doesn't provide the radii. Measured: 45–60 s
for the 32 default samples of the demo Fashion-MNIST CNN (d = 784) on one CPU thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attacks.deepfool import DeepFool
from ..geometry.bounds import second_order_radius, theorem1_bounds
from ..geometry.hessian import near_zero_fraction
from ..geometry.jacobian import input_jacobian, jacobian_stats
from ..geometry.spectra import LANCZOS_ITERS, analysis_model, fd_spectrum, lanczos_k_for
from ..parts import Part
from ..schema import Section, section
from ..threat import Norm
from ._values import nan_to_none, rounded, rounded_tuple
from .base import CHECKS, Check
from .curvature import HESSIAN_ZERO_THRESHOLD, MARGIN_FD_CACHE

__all__ = ["Theorem1Result", "IndicatorSection", "IndicatorCheck", "spearman", "boundary_loss"]


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n−1 of a 1-D tensor, ties sharing their average rank."""
    order = torch.argsort(v, stable=True)
    r = torch.empty(v.numel(), dtype=torch.float64)
    r[order] = torch.arange(v.numel(), dtype=torch.float64)
    _, inv = torch.unique(v, return_inverse=True)
    sums = torch.zeros(int(inv.max()) + 1, dtype=torch.float64).index_add_(0, inv, r)
    counts = torch.bincount(inv).to(torch.float64)
    return (sums / counts)[inv]


def spearman(a, b) -> float | None:
    """Spearman's ρ of two equally long sequences over the pairs where both are finite (None for
    fewer than 3 such pairs or a constant side)."""
    a = torch.as_tensor([math.nan if v is None else float(v) for v in a], dtype=torch.float64)
    b = torch.as_tensor([math.nan if v is None else float(v) for v in b], dtype=torch.float64)
    ok = torch.isfinite(a) & torch.isfinite(b)
    if int(ok.sum()) < 3:
        return None
    ra, rb = _ranks(a[ok]), _ranks(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = ra.norm() * rb.norm()
    if float(den) == 0.0:
        return None
    return float((ra * rb).sum() / den)


def boundary_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the cross-entropy (nats) once Z_y is lowered to the runner-up's logit Z_j with
    the other logits fixed: ``log(2 + Σ_{i∉{y,j}} exp(Z_i − Z_j))`` ∈ [log 2, log C)."""
    z = logits.to(torch.float64)
    masked = z.scatter(1, y[:, None], float("-inf"))
    j = masked.argmax(1)
    zj = z.gather(1, j[:, None])
    rest = masked.scatter(1, j[:, None], float("-inf"))
    return torch.log(2 + torch.exp(rest - zj).sum(1))


@dataclass(frozen=True)
class Theorem1Result:
    """Theorem 1 (002) per sample with one Hessian (``kind``). ``lower``/``upper``: with the
    per-sample boundary loss t; ``lower_bracket``/``upper_bracket``: t = log 2 / t = log C.
    Fractions over the samples with an attack-found ℓ2 radius r: ``fraction_within`` (lower ≤ r ≤
    upper), ``fraction_within_bracket``, ``fraction_below_lower`` (r < lower: the quadratic model
    overestimates robustness), ``fraction_above_upper``. ``median_ratio_to_lower`` = median r/lower."""

    kind: str
    lower: tuple[float | None, ...]
    upper: tuple[float | None, ...]
    lower_bracket: tuple[float | None, ...]
    upper_bracket: tuple[float | None, ...]
    fraction_within: float | None
    fraction_within_bracket: float | None
    fraction_below_lower: float | None
    fraction_above_upper: float | None
    median_ratio_to_lower: float | None
    spearman_lower: float | None


@section("indicator")
@dataclass(frozen=True)
class IndicatorSection(Section):
    """Second-order bounds/indicators vs. attack-found radii on the curvature check's samples
    (``indices``), pixel space [0,1]. ``t``: per-sample CE threshold (nats) for Theorem 1 (see
    the module docstring); ``theorem1``: keyed "finite_difference" / "exact". ``radii_l2`` /
    ``radii_linf``: attack-found minimal radii (None where none was found) and their sources.
    Eq. 9: ``margin`` L(x) (logits), ``j_l1``/``j_l2`` norms of ∂L/∂x, ``lambda_abs_max`` = max|λ|
    of the margin's finite-difference Hessian (``margin_hessian``) and the fraction of its
    eigenvalues with |λ| < 1e-9 (``margin_hessian_near_zero_fraction``; Yu et al.'s Hessian-zeros
    statistic, complete spectra only), ``radius_linf``/``radius_l2``
    = the radius where the second-order bound reaches L(x); ``indicator_linf``/``indicator_l2`` =
    their medians (the model-level indicator); ``mean_j_l1`` and ``mean_lambda_abs_max`` = Yu et
    al.'s "average magnitude" of both parameter sets. ``spearman_*``: rank correlation of the
    radius with the attack radius of the same norm; ``fraction_radius_below_attack_*``: fraction
    whose Eq. 9 radius does not exceed the attack-found radius."""

    n_samples: int
    indices: tuple[int, ...]
    d: int
    t_choice: str
    t: tuple[float | None, ...]
    loss_values: tuple[float | None, ...]
    theorem1: dict[str, Theorem1Result]
    radii_l2: tuple[float | None, ...]
    radii_l2_source: str
    radii_linf: tuple[float | None, ...]
    radii_linf_source: str
    margin_hessian: str
    margin: tuple[float | None, ...]
    j_l1: tuple[float | None, ...]
    j_l2: tuple[float | None, ...]
    lambda_abs_max: tuple[float | None, ...]
    margin_hessian_near_zero_fraction: tuple[float | None, ...] | None
    margin_hessian_near_zero_fraction_mean: float | None
    radius_linf: tuple[float | None, ...]
    radius_l2: tuple[float | None, ...]
    indicator_linf: float | None
    indicator_l2: float | None
    mean_j_l1: float | None
    mean_lambda_abs_max: float | None
    spearman_linf: float | None
    spearman_l2: float | None
    fraction_radius_below_attack_linf: float | None
    fraction_radius_below_attack_l2: float | None
    aligned_fields: ClassVar = (
        (  # what the JSON reader checks (results.Section)
            "indices",
            "n_samples",
            "t",
            "loss_values",
            "radii_l2",
            "radii_linf",
            "margin",
            "j_l1",
            "j_l2",
            "lambda_abs_max",
            "margin_hessian_near_zero_fraction",
            "radius_linf",
            "radius_l2",
            "theorem1.*.lower",
            "theorem1.*.upper",
            "theorem1.*.lower_bracket",
            "theorem1.*.upper_bracket",
        ),
    )
    sample_index_fields: ClassVar = ("indices",)

    def metrics(self) -> dict[str, float]:
        out = {
            "indicator.radius_linf_median": self.indicator_linf,
            "indicator.radius_l2_median": self.indicator_l2,
            "indicator.mean_j_l1": self.mean_j_l1,
            "indicator.mean_lambda_abs_max": self.mean_lambda_abs_max,
            "indicator.margin_hessian_near_zero_fraction_mean": self.margin_hessian_near_zero_fraction_mean,
            "indicator.spearman_linf": self.spearman_linf,
            "indicator.spearman_l2": self.spearman_l2,
        }
        for key, res in self.theorem1.items():
            out[f"indicator.theorem1.{key}.fraction_within"] = res.fraction_within
            out[f"indicator.theorem1.{key}.fraction_within_bracket"] = res.fraction_within_bracket
        return {k: v for k, v in out.items() if v is not None}

    def metric_names(self) -> tuple[str, ...]:
        return INDICATOR_METRICS


INDICATOR_METRICS = (
    "indicator.radius_linf_median",
    "indicator.radius_l2_median",
    "indicator.mean_j_l1",
    "indicator.mean_lambda_abs_max",
    "indicator.margin_hessian_near_zero_fraction_mean",
    "indicator.spearman_linf",
    "indicator.spearman_l2",
) + tuple(
    f"indicator.theorem1.{key}.{name}"
    for key in ("finite_difference", "exact")
    for name in ("fraction_within", "fraction_within_bracket")
)


def _opt(values) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


def _frac(mask: torch.Tensor, valid: torch.Tensor) -> float | None:
    return float(mask[valid].double().mean()) if bool(valid.any()) else None


def _theorem1(kind: str, c: torch.Tensor, c2: torch.Tensor, cC: torch.Tensor, gnorm, nu, gu, r) -> Theorem1Result:
    lo, up = theorem1_bounds(c, gnorm, nu, gu)
    lo2, _ = theorem1_bounds(c2, gnorm, nu, gu)
    _, upC = theorem1_bounds(cC, gnorm, nu, gu)
    valid = torch.isfinite(r) & torch.isfinite(lo)
    tol = 1e-9
    within = (r >= lo * (1 - tol)) & (r <= up * (1 + tol))
    within_b = (r >= lo2 * (1 - tol)) & (r <= upC * (1 + tol))
    ratio = (r / lo)[valid & (lo > 0)]
    return Theorem1Result(
        kind=kind,
        lower=rounded_tuple(lo),
        upper=rounded_tuple(up),
        lower_bracket=rounded_tuple(lo2),
        upper_bracket=rounded_tuple(upC),
        fraction_within=_frac(within, valid),
        fraction_within_bracket=_frac(within_b, valid),
        fraction_below_lower=_frac(r < lo * (1 - tol), valid),
        fraction_above_upper=_frac(r > up * (1 + tol), valid),
        median_ratio_to_lower=rounded(float(ratio.median())) if ratio.numel() else None,
        spearman_lower=spearman(lo.tolist(), r.tolist()),
    )


@CHECKS.register("indicator")
class IndicatorCheck(Check):
    name = "indicator"
    requires = ("clean", "curvature")
    description = "Theorem 1 bounds (Moosavi-Dezfooli et al.) and Eq. 9 robustness indicator (Yu et al.) vs attack radii"

    def metric_names(self, plan) -> tuple[str, ...]:
        return INDICATOR_METRICS

    def max_passes(self, plan) -> tuple[float, float]:
        """Per curvature sample (at most the curvature check's ``k`` of the ``plan.n``), as if the
        curvature check shared nothing (sharing only removes work): a forward, the margin's
        gradient, its FD Hessian (d + 1 gradients; Lanczos: 1 + its iterations) and DeepFool for
        both norms (max_iter + 1 forwards, max_iter × (candidates − 1) backwards each; one is
        skipped when the minimal check runs). Once per process: the float64 copy's forward."""
        from .base import build_check
        from .cost import deepfool_passes, spread

        curvature = build_check("curvature", dict(plan.config.check_options).get("curvature", ()))
        d = math.prod(plan.input_shape)
        iters = max(lanczos_k_for(d), min(LANCZOS_ITERS, d))
        fd = d + 1 if d <= curvature.full_max_dim else 1 + iters
        df_forward, df_backward = deepfool_passes(DeepFool(), plan.num_classes)
        backward = 1 + fd + 2 * df_backward
        forward = 2 + fd + 2 * df_forward
        return spread((forward, backward), int(curvature.k), plan.n, fixed=(1, 0))

    def compute(self, ctx) -> Part:
        """Per-sample records (table ``samples``) on this process's curvature samples: t, L(x),
        ‖∂L/∂x‖₁/₂, max|λ| and the near-zero fraction of the margin's finite-difference Hessian,
        and DeepFool radii for the norms the ``minimal`` check doesn't provide."""
        curv = ctx.parts["curvature"]
        idx = curv.table("samples").pos_tensor
        K = int(idx.numel())
        part = Part()
        if not K:
            return part
        norm = ctx.config.norm
        eps = float(curv.extra["fd_step"])
        full = bool(curv.extra["full"])
        state: dict = {}
        cols: dict[str, dict[int, torch.Tensor]] = {}

        def put(key, sl, value):
            cols.setdefault(key, {})[sl.start] = value.detach().double().cpu()

        def batch(x, y, sl):
            if "model" not in state:
                state["model"], state["dtype"] = analysis_model(ctx.model, x)
            model = state["model"]
            x_in, x = x, x.to(state["dtype"])
            with torch.no_grad():
                logits = model(x)
            put("t", sl, boundary_loss(logits, y))
            vals, grads = input_jacobian(model, x, y, "margin")
            st = jacobian_stats(grads)
            put("margin", sl, vals)
            put("j_l1", sl, st["l1"])
            put("j_l2", sl, st["l2"])
            shared = ctx.cache.get(MARGIN_FD_CACHE, {})
            positions = idx[sl].tolist()
            if all(p in shared for p in positions):  # the curvature check's sweep computed it
                e, bottom = torch.stack([shared[p] for p in positions]), None
            else:
                gen = ctx.sample_rng("indicator", idx[sl])
                e, _, bottom = fd_spectrum(
                    model, x, y, "margin", norm, eps, full=full, chunk=max(1, int(ctx.batch_size)), generator=gen
                )
            top_abs = e.abs().amax(dim=1)
            if bottom is not None:
                top_abs = torch.maximum(top_abs, bottom.abs().amax(dim=1))
            put("lambda_abs_max", sl, top_abs)
            nz = (
                near_zero_fraction(e.double(), HESSIAN_ZERO_THRESHOLD)
                if bottom is None
                else torch.full_like(top_abs, math.nan)
            )
            put("near_zero", sl, nz)
            for radius_norm in (Norm.L2, Norm.LINF):
                if radius_norm is not self._minimal_norm(ctx.config, ctx.parts):
                    _, norms = DeepFool().minimal_perturbation(ctx.model, x_in, y, radius_norm)
                    put(
                        f"deepfool_{radius_norm.value}",
                        sl,
                        torch.where(torch.isfinite(norms), norms, torch.full_like(norms, math.nan)),
                    )

        d = int(idx.new_tensor(ctx.data.input_shape).prod())
        shared = all(int(p) in ctx.cache.get(MARGIN_FD_CACHE, {}) for p in idx.tolist())
        # the bar's estimate of a sample's gradient passes + HVPs: input gradient, FD Hessian
        # (unless shared), DeepFool (~ its iterations × classes)
        work = 1 + (0 if shared else (3 * d + 1 if full else 161)) + 2 * 50
        ctx.map_batches(batch, indices=idx, description=f"indicator ({K} samples)", work_per_sample=work)
        part.add("samples", idx, **{k: nan_to_none(torch.cat([v[s] for s in sorted(v)])) for k, v in cols.items()})
        return part

    @staticmethod
    def _minimal_norm(config, parts) -> Norm | None:
        """The norm whose radii the ``minimal`` check provides (None if it did not run)."""
        return config.norm if "minimal" in parts else None

    def combine(self, tables, extras, info) -> IndicatorSection:
        curv = info.sections["curvature"]
        idx = list(curv.indices)
        K = len(idx)
        d = curv.d
        eps = float(curv.fd_step)
        full = curv.finite_difference is not None and curv.finite_difference.complete
        t = tables["samples"]

        def col(key: str) -> torch.Tensor:
            return _opt(t.at(key, idx)) if K else torch.empty(0, dtype=torch.float64)

        t_b, L, j1, j2, lam, nz = (col(k) for k in ("t", "margin", "j_l1", "j_l2", "lambda_abs_max", "near_zero"))
        minimal = info.sections.get("minimal")
        radii = {}
        for radius_norm in (Norm.L2, Norm.LINF):
            if minimal is not None and getattr(minimal, "norm", None) == radius_norm.value:
                radii[radius_norm] = (_opt([minimal.radii[i] for i in idx]), f"minimal section ({minimal.method})")
            elif K:
                radii[radius_norm] = (
                    col(f"deepfool_{radius_norm.value}"),
                    "DeepFool (overshoot 0.02), unrefined; an upper bound on the true minimum",
                )
            else:
                radii[radius_norm] = (torch.empty(0, dtype=torch.float64), "none")
        (r2, src2), (rinf, srcinf) = radii[Norm.L2], radii[Norm.LINF]
        # --- Theorem 1
        loss = _opt(curv.loss_values)
        gnorm = _opt(curv.grad_norm)
        C = info.num_classes
        c = t_b - loss
        c2 = math.log(2) - loss
        cC = math.log(C) - loss
        theorem1: dict[str, Theorem1Result] = {}
        for key, spec in (("finite_difference", curv.finite_difference), ("exact", curv.exact)):
            if spec is None or not K:
                continue
            theorem1[key] = _theorem1(spec.kind, c, c2, cC, gnorm, _opt(spec.lambda_max), _opt(spec.gu), r2)
        # --- Eq. 9
        rad_inf = second_order_radius(L, j1, lam, d) if K else torch.empty(0)
        rad_2 = second_order_radius(L, None, lam, norm="l2", j_l2=j2) if K else torch.empty(0)

        def below(rad, att):
            valid = torch.isfinite(att) & torch.isfinite(rad)
            return _frac(rad <= att, valid)

        def med(t):
            t = t[torch.isfinite(t)]
            return rounded(float(t.median())) if t.numel() else None

        return IndicatorSection(
            n_samples=K,
            indices=tuple(int(i) for i in idx),
            d=d,
            t_choice=(
                "t = log(2 + sum_{i not in {y, j}} exp(Z_i - Z_j)), the CE once Z_y is lowered to the runner-up's "
                "logit Z_j (in [log 2, log C)); bracket: t = log 2 for the lower bound, log C for the upper bound"
            ),
            t=rounded_tuple(t_b),
            loss_values=tuple(curv.loss_values),
            theorem1=theorem1,
            radii_l2=rounded_tuple(r2),
            radii_l2_source=src2,
            radii_linf=rounded_tuple(rinf),
            radii_linf_source=srcinf,
            margin_hessian=(
                f"finite difference of the margin's gradient at the curvature check's eps-ball step (eps = {eps:g}, "
                f"{'pixel basis, symmetrized, all eigenvalues' if full else 'Lanczos top/bottom eigenvalues'}); "
                "the exact margin Hessian of a ReLU network is 0 almost everywhere"
            ),
            margin=rounded_tuple(L),
            j_l1=rounded_tuple(j1),
            j_l2=rounded_tuple(j2),
            lambda_abs_max=rounded_tuple(lam),
            margin_hessian_near_zero_fraction=rounded_tuple(nz) if full and K else None,
            margin_hessian_near_zero_fraction_mean=rounded(float(nz.mean())) if full and K else None,
            radius_linf=rounded_tuple(rad_inf),
            radius_l2=rounded_tuple(rad_2),
            indicator_linf=med(rad_inf),
            indicator_l2=med(rad_2),
            mean_j_l1=rounded(float(j1.mean())) if K else None,
            mean_lambda_abs_max=rounded(float(lam.mean())) if K else None,
            spearman_linf=spearman(rad_inf.tolist(), rinf.tolist()) if K else None,
            spearman_l2=spearman(rad_2.tolist(), r2.tolist()) if K else None,
            fraction_radius_below_attack_linf=below(rad_inf, rinf) if K else None,
            fraction_radius_below_attack_l2=below(rad_2, r2) if K else None,
        )
