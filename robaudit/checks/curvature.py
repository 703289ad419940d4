# Why this module is long: its docstring (60 lines) is the check's reference (what each spectrum is, the
# step rule, scales, reading, cost); the code is the section type and the check, the primitives are in
# robaudit.geometry.spectra.
"""Check ``curvature``: input-space curvature of the cross-entropy loss (Moosavi-Dezfooli et al., 002).

On the first ``k`` clean-correct samples (dataset order; default :data:`K_SAMPLES` = 32) of the
scan, for the per-sample cross-entropy ``ℓ(x) = −log softmax(Z(x))_y`` in **nats**, w.r.t. the
**pixel-space** input ``x ∈ [0,1]^d`` (the model carries its normalization):

* **Spectra of the Hessian H = ∇²ℓ(x)**, two of them, each labelled in the section:

  - ``exact``: the exact second derivative. For a piecewise-linear network (ReLU / max-pool /
    affine — detected by an exact Hessian-vector product of a random combination of the logits
    being exactly 0) it is ``Jᵀ(diag p − ppᵀ)J`` with ``J = ∂Z/∂x`` (rank ≤ C−1, every other
    eigenvalue exactly 0), computed from the C×C matrix ``A^½ J Jᵀ A^½`` in C backward passes,
    whatever d. For any other network: the full Hessian by forward-over-reverse / double backward
    (:func:`robaudit.geometry.full_hessian`) when ``d ≤`` :data:`FULL_SPECTRUM_MAX_DIM`, else
    the top-k and bottom-k eigenvalues by Lanczos (:data:`LANCZOS_K`, :data:`LANCZOS_ITERS`).
  - ``finite_difference``: the curvature over the threat model's neighbourhood, as 002 does for a
    ReLU network (whose exact Hessian is only the softmax part). Each Hessian-vector product is
    ``H v ≈ (∇ℓ(x + t v) − ∇ℓ(x))/t`` with **the longest step t that keeps x + t v inside the
    scan's ε-ball**: ``t = ε_max/‖v‖`` in the threat norm (ℓ∞ or ℓ2, ``ε_max`` = the largest
    scan ε, times :data:`FD_BALL_FRACTION`). For the full spectrum (``d ≤``
    :data:`FULL_SPECTRUM_MAX_DIM`) the columns are taken along the pixel basis ``e_i``, so every
    column moves one pixel by ``h = ε_max`` (ℓ∞ and ℓ2 alike; the matrix is symmetrized,
    ``(H+Hᵀ)/2``, before ``eigh``); above that, Lanczos with the same per-vector rule. The
    steps are not clipped to [0,1]. Conversions: 002's h = 1.5 on the [0,255] scale is a step
    of ℓ2 length 0.0059 here, far inside an ε = 0.1 ℓ∞ ball (corner at ℓ2 distance 0.1·√784 =
    2.8); robaudit's CURE hardener penalizes ‖Hz‖ at an ℓ2 step of 2.0 ≈ 0.8·ε√d on 28×28.

  Per spectrum: per-sample λ_max, λ_min, the fraction of |λ| < :data:`HESSIAN_ZERO_THRESHOLD`
  (Yu et al.'s "10e-10", 000 footnote 3; absolute, in nats/pixel²; only for complete spectra),
  the alignment ``|gᵀu|/‖g‖`` of the gradient ``g = ∇ℓ(x)`` with the top eigenvector u (002
  Remark 3: 0.43 natural vs 0.90 adversarially fine-tuned on CIFAR-10) and the curvature profile
  = eigenvalues sorted descending, per rank the mean and the 25/75 % quantiles over the samples,
  on at most :data:`robaudit.geometry.spectra.PROFILE_POINTS` ranks (all of the first and last 50, evenly spaced between).
* ``‖H‖_F`` per sample by Hutchinson (``E‖Hz‖² = ‖H‖²_F`` over Rademacher z;
  :data:`HUTCHINSON_PROBES` probes), with its standard error, for the exact HVP and for the
  finite-difference HVP at the ball step (each pixel ±ε for ℓ∞, ℓ2 length ε for ℓ2).
* ``‖Hz‖`` at CURE's direction ``z = sign(∇ℓ)/‖sign(∇ℓ)‖₂`` (unit ℓ2), exact and finite
  difference at the ball step: for ℓ∞ ``t = ε√(nnz)``, i.e. x + t z is **the FGSM point**
  ``x + ε·sign(∇ℓ)``, so the finite-difference ‖Hz‖ is ``‖∇ℓ(x_FGSM) − ∇ℓ(x)‖₂ / (ε√d)``.

All Hessian work runs in float64 on a copy of the model when the model converts (``dtype`` in
the section says which; :data:`robaudit.geometry.spectra.HESSIAN_FLOAT64`). Units: eigenvalues and ‖H‖_F, ‖Hz‖ in nats per
pixel² ([0,1] scale).

Reading (measured on the demo Fashion-MNIST CNN vs. the same net after one epoch of PGD
fine-tuning at ε = 0.1, tests/test_geometry_real.py): ‖Hz‖ at the FGSM point falls 10× and
Yu et al.'s margin-Hessian max|λ| 14×, but the pixel-basis finite-difference λ_max *rises* (0.30
→ 0.87) and the exact λ_max barely moves (0.35 → 0.34): single-pixel ε-moves flip ReLUs of the
fine-tuned net's first layer more often. At the ε-ball step of a ReLU network nearly every pixel
flips some unit, so the finite-difference near-zero fraction is ≈ 0; the exact spectrum's is
1 − rank/d ≥ 1 − (C−1)/d.

Cost per sample: d + 1 gradients (finite-difference spectrum; Lanczos: LANCZOS_ITERS), C backward
passes (exact spectrum of a piecewise-linear net; otherwise d Hessian-vector products), 2 ×
HUTCHINSON_PROBES + 2 Hessian-vector products (the scan's estimate bounds it:
:meth:`CurvatureCheck.max_passes`). Measured: 45 s for the 32 default samples of the
demo Fashion-MNIST CNN (d = 784) on one CPU thread, float64 (about 4× less in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.hessian import cure_direction, hutchinson_frobenius, hvp_exact, hvp_fd, hvp_operator
from ..geometry.jacobian import input_jacobian, resolve_fn
from ..geometry.lanczos import lanczos
from ..geometry.norms import ball_step
from ..geometry.spectra import (
    LANCZOS_ITERS,
    LANCZOS_K,
    analysis_model,
    fd_operator,
    fd_spectrum,
    full_spectra,
    gauss_newton_spectrum,
    is_piecewise_linear,
    lanczos_k_for,
    lanczos_ranks,
    profile_ranks,
    shared_fd_spectra,
    spectrum_stats,
)
from ..parts import Part, first_correct
from ..schema import Section, section
from ._values import finite_mean, finite_median, nan_to_none, none_to_nan_rows, rounded_tuple
from .base import CHECKS, Check

__all__ = [
    "K_SAMPLES",
    "FULL_SPECTRUM_MAX_DIM",
    "SpectrumSummary",
    "CurvatureSection",
    "CurvatureCheck",
]

K_SAMPLES = 32  # first k clean-correct samples
FULL_SPECTRUM_MAX_DIM = 4096  # full spectra up to this input dimension, Lanczos above
HUTCHINSON_PROBES = 16
HESSIAN_ZERO_THRESHOLD = 1e-9  # Yu et al. footnote 3 ("10e-10"), absolute
FD_BALL_FRACTION = 1.0  # finite-difference steps reach this fraction of the ε-ball's boundary
# ScanContext.cache key: {scan position: eigenvalues [d] of the margin's pixel-basis FD Hessian},
# left by the curvature check for the indicator check when both run (one sweep, not two)
MARGIN_FD_CACHE = "curvature:margin-fd-eigvals"


# --------------------------------------------------------------------------- section


@dataclass(frozen=True)
class SpectrumSummary:
    """One Hessian spectrum over the samples (units: nats per pixel², pixel scale [0,1]).

    kind: how it was computed (exact / finite difference, basis, step). complete: all d
    eigenvalues (False: only the top and bottom ``LANCZOS_K`` by Lanczos). Per sample:
    ``lambda_max``, ``lambda_min`` (the smallest computed), ``near_zero_fraction`` (|λ| <
    ``zero_threshold``; None unless complete), ``alignment`` = |gᵀu|/‖g‖₂ with u the unit top
    eigenvector, ``gu`` = |gᵀu| (nats/pixel). Profile: eigenvalue ranks (0 = largest) and, per
    rank, the mean, median and 25/75 % quantiles over the samples (the mean follows the few samples
    with large curvature, the median the typical one); ``frobenius`` = √Σλ² per sample
    (complete spectra only)."""

    kind: str
    complete: bool
    zero_threshold: float
    lambda_max: tuple[float | None, ...]
    lambda_min: tuple[float | None, ...]
    near_zero_fraction: tuple[float | None, ...] | None
    alignment: tuple[float | None, ...]
    gu: tuple[float | None, ...]
    frobenius: tuple[float | None, ...] | None
    profile_ranks: tuple[int, ...]
    profile_mean: tuple[float | None, ...]
    profile_q25: tuple[float | None, ...]
    profile_q75: tuple[float | None, ...]
    lambda_max_median: float | None
    lambda_max_mean: float | None
    lambda_min_median: float | None
    near_zero_fraction_mean: float | None
    alignment_mean: float | None
    profile_median: tuple[float | None, ...] = ()  # per rank; () in results written before 0.1.0's report
    aligned_fields: ClassVar = (  # what the JSON reader checks (results.Section)
        ("profile_ranks", "profile_mean", "profile_q25", "profile_q75", "profile_median"),
    )


@section("curvature")
@dataclass(frozen=True)
class CurvatureSection(Section):
    """Input-space curvature of the per-sample cross-entropy (nats) on the first ``n_samples``
    clean-correct samples (``indices``, dataset order), pixel space [0,1], d = C·H·W.

    ``exact`` and ``finite_difference`` are the two spectra (see :class:`SpectrumSummary` and the
    module docstring for the step rule); ``fd_step`` = ε_max·FD_BALL_FRACTION, the per-pixel step
    of the pixel-basis finite differences (and of the Rademacher probes under ℓ∞). Per sample:
    ``loss`` ℓ(x) (nats), ``grad_norm`` ‖∇ℓ(x)‖₂ (nats/pixel), ``frobenius_*`` Hutchinson
    estimates of ‖H‖_F with standard errors ``*_se`` (``n_probes`` Rademacher probes), ``hz_*``
    = ‖Hz‖₂ at CURE's z, ``cure_step`` = the ℓ2 length of the finite-difference step along z.
    ``dtype``: precision of the Hessian work. ``exact_method``: "gauss-newton" (the network is
    piecewise linear: exact), "full" or "lanczos"."""

    loss: str
    scale: str
    norm: str
    eps: float
    fd_step: float
    d: int
    dtype: str
    n_samples: int
    indices: tuple[int, ...]
    exact_method: str
    piecewise_linear: bool
    loss_values: tuple[float | None, ...]
    grad_norm: tuple[float | None, ...]
    exact: SpectrumSummary | None
    finite_difference: SpectrumSummary | None
    n_probes: int
    frobenius_exact: tuple[float | None, ...]
    frobenius_exact_se: tuple[float | None, ...]
    frobenius_fd: tuple[float | None, ...]
    frobenius_fd_se: tuple[float | None, ...]
    hz_exact: tuple[float | None, ...]
    hz_fd: tuple[float | None, ...]
    cure_step: tuple[float | None, ...]
    aligned_fields: ClassVar = (
        (  # what the JSON reader checks (results.Section)
            "indices",
            "n_samples",
            "loss_values",
            "grad_norm",
            "frobenius_exact",
            "frobenius_exact_se",
            "frobenius_fd",
            "frobenius_fd_se",
            "hz_exact",
            "hz_fd",
            "cure_step",
            *(
                f"{spectrum}.{name}"
                for spectrum in ("exact", "finite_difference")
                for name in ("lambda_max", "lambda_min", "near_zero_fraction", "alignment", "gu", "frobenius")
            ),
        ),
    )
    sample_index_fields: ClassVar = ("indices",)

    def _med(self, values) -> float | None:
        vals = [v for v in values if v is not None]
        return float(torch.tensor(vals, dtype=torch.float64).median()) if vals else None

    def metrics(self) -> dict[str, float]:
        out: dict[str, float | None] = {}
        fd, ex = self.finite_difference, self.exact
        if fd is not None:
            out.update(
                {
                    "curvature.lambda_max_median": fd.lambda_max_median,
                    "curvature.lambda_max_mean": fd.lambda_max_mean,
                    "curvature.lambda_min_median": fd.lambda_min_median,
                    "curvature.near_zero_fraction_mean": fd.near_zero_fraction_mean,
                    "curvature.alignment_mean": fd.alignment_mean,
                }
            )
        if ex is not None:
            out.update(
                {
                    "curvature.exact.lambda_max_median": ex.lambda_max_median,
                    "curvature.exact.near_zero_fraction_mean": ex.near_zero_fraction_mean,
                    "curvature.exact.alignment_mean": ex.alignment_mean,
                }
            )
        out["curvature.frobenius_median"] = self._med(self.frobenius_fd)
        out["curvature.exact.frobenius_median"] = self._med(self.frobenius_exact)
        out["curvature.hz_median"] = self._med(self.hz_fd)
        out["curvature.exact.hz_median"] = self._med(self.hz_exact)
        return {k: v for k, v in out.items() if v is not None}

    def metric_names(self) -> tuple[str, ...]:
        return CURVATURE_METRICS


CURVATURE_METRICS = (
    "curvature.lambda_max_median",
    "curvature.lambda_max_mean",
    "curvature.lambda_min_median",
    "curvature.near_zero_fraction_mean",
    "curvature.alignment_mean",
    "curvature.exact.lambda_max_median",
    "curvature.exact.near_zero_fraction_mean",
    "curvature.exact.alignment_mean",
    "curvature.frobenius_median",
    "curvature.exact.frobenius_median",
    "curvature.hz_median",
    "curvature.exact.hz_median",
)


def _summary(kind: str, ranks: list[int], complete: bool, per: dict[str, torch.Tensor]) -> SpectrumSummary:
    """The SpectrumSummary of the samples whose per-sample columns are ``per`` (see
    :func:`robaudit.geometry.spectra.spectrum_stats`; ``profile`` [K, R])."""
    lam_max, lam_min, sel = per["lam_max"], per["lam_min"], per["profile"]
    nz = per["nz"] if complete else None
    al = per["align"]
    q = torch.quantile(sel, torch.tensor([0.25, 0.75, 0.5], dtype=torch.float64), dim=0) if sel.shape[0] else None
    return SpectrumSummary(
        kind=kind,
        complete=complete,
        zero_threshold=HESSIAN_ZERO_THRESHOLD,
        lambda_max=rounded_tuple(lam_max),
        lambda_min=rounded_tuple(lam_min),
        near_zero_fraction=rounded_tuple(nz),
        alignment=rounded_tuple(al),
        gu=rounded_tuple(per["gu"]),
        frobenius=rounded_tuple(per["frob"]) if complete else None,
        profile_ranks=tuple(int(r) for r in ranks),
        profile_mean=rounded_tuple(sel.mean(0)) if sel.shape[0] else (),
        profile_q25=rounded_tuple(q[0]) if q is not None else (),
        profile_q75=rounded_tuple(q[1]) if q is not None else (),
        profile_median=rounded_tuple(q[2]) if q is not None else (),
        lambda_max_median=finite_median(lam_max),
        lambda_max_mean=finite_mean(lam_max),
        lambda_min_median=finite_median(lam_min),
        near_zero_fraction_mean=finite_mean(nz),
        alignment_mean=finite_mean(al),
    )


_SPECTRUM_COLUMNS = ("lam_max", "lam_min", "nz", "align", "gu", "frob", "profile")
_SAMPLE_COLUMNS = ("loss", "grad_norm", "fro_ex", "fro_ex_se", "fro_fd", "fro_fd_se", "hz_ex", "hz_fd", "cure_step")


# --------------------------------------------------------------------------- check


@CHECKS.register("curvature")
class CurvatureCheck(Check):
    """Hessian spectra (exact and at the ε-ball's finite-difference scale), ‖H‖_F, ‖Hz‖ at CURE's
    direction and gradient/top-eigenvector alignment, on the first ``k`` clean-correct samples."""

    name = "curvature"
    requires = ("clean",)

    def metric_names(self, plan) -> tuple[str, ...]:
        return CURVATURE_METRICS

    description = "input-space curvature of the loss: Hessian spectra, ||H||_F, ||Hz|| (Moosavi-Dezfooli et al.)"

    k: int = K_SAMPLES
    full_max_dim: int = FULL_SPECTRUM_MAX_DIM
    n_probes: int = HUTCHINSON_PROBES

    def max_passes(self, plan) -> tuple[float, float]:
        """Per analysed sample (at most ``k`` of the ``plan.n``): 1 gradient; the exact spectrum's
        C backwards (piecewise linear) or d exact HVPs (Lanczos: its iterations), whichever is more;
        the FD spectrum's d + 1 gradients per function (two when the indicator's margin Hessian
        shares the sweep; Lanczos: 1 + its iterations); n_probes + 1 exact and n_probes + 1 FD
        HVPs. Once per process: the float64 copy's forward and the piecewise-linear probe's HVP.
        An exact HVP counts as 2 passes with a backward (forward, backward, double backward)."""
        from .cost import spread

        d, C = math.prod(plan.input_shape), int(plan.num_classes)
        full = d <= self.full_max_dim
        iters = max(lanczos_k_for(d), min(LANCZOS_ITERS, d))
        exact = max(C, 2 * (d if full else iters))
        fd = (d + 1) * (2 if "indicator" in plan.config.checks else 1) if full else 1 + iters
        grads = 1 + exact + fd + 3 * int(self.n_probes) + 3
        return spread((grads, grads), int(self.k), plan.n, fixed=(3, 2))

    def compute(self, ctx) -> Part:
        """Spectra of this process's first ``k`` clean-correct samples (a superset of its share
        of the scan's first k: the section keeps those)."""
        norm = ctx.config.norm
        eps = float(max(ctx.eps)) * FD_BALL_FRACTION  # the finite-difference step scale
        idx = torch.tensor(first_correct(ctx.local("clean"), self.k), dtype=torch.long)
        d = int(math.prod(ctx.data.input_shape))
        full = d <= self.full_max_dim
        K = int(idx.numel())
        part = Part()
        if not K:
            return part
        # model-level decisions, the same in every process: the float64 copy, and whether the
        # network is piecewise linear (probed at scan position 0 with a model-level generator)
        probe = ctx.data.batch([0]).to(ctx.device)
        model, dt = analysis_model(ctx.model, probe)
        pl = is_piecewise_linear(model, probe.to(dt), ctx.data.num_classes, ctx.generator("curvature:piecewise-linear"))
        exact_method = "gauss-newton" if pl else "full" if full else "lanczos"
        rows: dict[str, dict[int, torch.Tensor]] = {}  # column → {batch start: values}
        # pixel-basis FD Hessians of the margin for the indicator check (Lanczos mode: its
        # directions depend on the function, nothing to share)
        share = full and "indicator" in ctx.config.checks
        ctx.cache.pop(MARGIN_FD_CACHE, None)
        # (a full spectrum's eigendecomposition counts d: robaudit.geometry.passes.tick)
        exact_work = {"gauss-newton": 0, "full": 2 * d, "lanczos": max(LANCZOS_K, min(LANCZOS_ITERS, d))}[exact_method]
        fd_work = (3 * d + 1) * (2 if share else 1) if full else 2 * max(LANCZOS_K, min(LANCZOS_ITERS, d)) + 1

        def batch(x, y, sl):
            def put(key, value):  # keyed by batch start: a batch retried after OOM overwrites its entries
                rows.setdefault(key, {})[sl.start] = value.detach().to(torch.float64).cpu()

            gen = ctx.sample_rng("curvature", idx[sl])
            x = x.to(dt)
            chunk = max(1, int(ctx.batch_size))
            loss, g = input_jacobian(model, x, y, "ce")
            put("loss", loss)
            put("grad_norm", g.flatten(1).norm(dim=1))
            # exact spectrum
            if exact_method == "gauss-newton":
                eig, u = gauss_newton_spectrum(model, x, d)
            elif exact_method == "full":
                try:
                    eig, u = full_spectra(model, x, y, "ce", "func", chunk, generator=gen)
                except Exception:  # noqa: BLE001 - torch.func can't trace some models (TorchScript)
                    eig, u = full_spectra(model, x, y, "ce", "exact", chunk, generator=gen)
            else:
                op = hvp_operator(model, x, y, "ce", method="exact")
                kk = lanczos_k_for(d)
                top, bot, vecs = lanczos(op, d, kk, max(kk, min(LANCZOS_ITERS, d)), gen, batch=x.shape[0], device=x.device)
                eig, u = torch.cat([top, bot.flip(-1)], dim=1), vecs[:, 0]
            ranks = profile_ranks(d) if exact_method != "lanczos" else lanczos_ranks(d)
            for key, value in spectrum_stats(eig, ranks, exact_method != "lanczos", g, u, HESSIAN_ZERO_THRESHOLD).items():
                put(f"ex.{key}", value)
            # finite-difference spectrum at the ball step; when the indicator check runs too, its
            # margin FD Hessian (same samples, points, step and chunks) comes from the same sweep
            if share:
                (e, u), (e_margin, _) = shared_fd_spectra(
                    model, x, y, ["ce", "margin"], eps, chunk, [gen, ctx.sample_rng("indicator", idx[sl])]
                )
                bottom = None
                store = ctx.cache.setdefault(MARGIN_FD_CACHE, {})
                store.update({int(p): e_margin[i] for i, p in enumerate(idx[sl].tolist())})
            else:
                e, u, bottom = fd_spectrum(model, x, y, "ce", norm, eps, full=full, chunk=chunk, generator=gen)
            fd_eig = e if bottom is None else torch.cat([e, bottom.flip(-1)], dim=1)
            for key, value in spectrum_stats(
                fd_eig, profile_ranks(d) if full else lanczos_ranks(d), full, g, u, HESSIAN_ZERO_THRESHOLD
            ).items():
                put(f"fd.{key}", value)
            # Hutchinson (Rademacher probes), exact and finite difference
            shape = tuple(x.shape)
            f_ex, se_ex = hutchinson_frobenius(
                hvp_operator(model, x, y, "ce", method="exact"), shape, self.n_probes, gen, dtype=dt, device=x.device
            )
            f_fd, se_fd = hutchinson_frobenius(
                fd_operator(model, x, y, resolve_fn("ce"), norm, eps, g), shape, self.n_probes, gen, dtype=dt, device=x.device
            )
            put("fro_ex", f_ex.clamp_min(0).sqrt())
            put("fro_fd", f_fd.clamp_min(0).sqrt())
            # standard error of ‖H‖_F from that of ‖H‖_F² (delta method: se/(2‖H‖_F))
            put("fro_ex_se", se_ex / (2 * f_ex.clamp_min(0).sqrt()).clamp_min(1e-300))
            put("fro_fd_se", se_fd / (2 * f_fd.clamp_min(0).sqrt()).clamp_min(1e-300))
            # ‖Hz‖ at CURE's direction
            z = cure_direction(g)
            t = ball_step(z, norm, eps)
            put("hz_ex", hvp_exact(model, x, y, z, "ce").flatten(1).norm(dim=1))
            put("hz_fd", hvp_fd(model, x, y, z, t, "ce", grad_at_x=g).flatten(1).norm(dim=1))
            put("cure_step", t * z.flatten(1).norm(dim=1))

        # the bar's estimate of a sample's gradient passes + HVPs (robaudit.geometry.passes)
        work = 1 + exact_work + fd_work + 3 * self.n_probes + 4
        ctx.map_batches(batch, indices=idx, description=f"curvature ({K} samples)", work_per_sample=work)
        cat = {k: torch.cat([v[s] for s in sorted(v)]) for k, v in rows.items()}
        columns = {k: nan_to_none(v) for k, v in cat.items()}
        part.add("samples", idx, **columns)
        part.extra = {
            "exact_method": exact_method,
            "piecewise_linear": bool(pl),
            "dtype": str(dt).replace("torch.", ""),
            "full": full,
            "fd_step": eps,
        }
        return part

    def combine(self, tables, extras, info) -> CurvatureSection:
        norm = info.config.norm
        eps_max = float(max(info.eps))
        eps = eps_max * FD_BALL_FRACTION
        d = int(math.prod(info.input_shape))
        full = d <= self.full_max_dim
        chosen = first_correct(info.clean(), self.k)
        K = len(chosen)
        meta: dict = next((e for e in extras if "exact_method" in e), {})
        exact = fd = None
        cols: dict[str, torch.Tensor] = {}
        if K:
            t = tables["samples"]
            for key in t.data:
                if key != "positions":
                    cols[key] = (
                        torch.tensor([math.nan if v is None else v for v in t.at(key, chosen)], dtype=torch.float64)
                        if not key.endswith(".profile")
                        else torch.tensor(none_to_nan_rows(t.at(key, chosen)), dtype=torch.float64)
                    )
            method = meta["exact_method"]
            kk = lanczos_k_for(d)
            exact_kind = {
                "gauss-newton": "exact: J^T (diag p - p p^T) J (the network is piecewise linear, so this is the exact Hessian a.e.)",
                "full": "exact: full Hessian by forward-over-reverse autodiff",
                "lanczos": f"exact: top/bottom {kk} eigenvalues by Lanczos on exact Hessian-vector products",
            }[method]
            ex_complete = method != "lanczos"
            exact = _summary(
                exact_kind,
                profile_ranks(d) if ex_complete else lanczos_ranks(d),
                ex_complete,
                {k: cols[f"ex.{k}"] for k in _SPECTRUM_COLUMNS},
            )
            fd_kind = (
                f"finite difference: pixel-basis columns (grad(x + h e_i) - grad(x))/h, h = {eps:g} per pixel "
                f"(the largest single-pixel move inside the {norm.value} eps-ball), symmetrized"
                if full
                else f"finite difference: top/bottom {kk} eigenvalues by Lanczos, each step to the {norm.value} eps-ball's boundary (eps = {eps:g})"
            )
            fd = _summary(
                fd_kind, profile_ranks(d) if full else lanczos_ranks(d), full, {k: cols[f"fd.{k}"] for k in _SPECTRUM_COLUMNS}
            )
        empty: tuple = ()

        def column(key: str):
            return rounded_tuple(cols[key]) if K else empty

        return CurvatureSection(
            loss="cross-entropy (nats), per sample",
            scale="pixel space [0,1]; eigenvalues, ||H||_F and ||Hz|| in nats per pixel^2",
            norm=norm.value,
            eps=eps_max,
            fd_step=eps,
            d=d,
            dtype=meta.get("dtype", "float32"),
            n_samples=K,
            indices=tuple(chosen),
            exact_method=meta.get("exact_method", "none"),
            piecewise_linear=bool(meta.get("piecewise_linear", False)),
            loss_values=column("loss"),
            grad_norm=column("grad_norm"),
            exact=exact,
            finite_difference=fd,
            n_probes=int(self.n_probes),
            frobenius_exact=column("fro_ex"),
            frobenius_exact_se=column("fro_ex_se"),
            frobenius_fd=column("fro_fd"),
            frobenius_fd_se=column("fro_fd_se"),
            hz_exact=column("hz_ex"),
            hz_fd=column("hz_fd"),
            cure_step=column("cure_step"),
        )
