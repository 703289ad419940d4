"""Closed-form robustness bounds from first- and second-order information (all per sample).

* :func:`theorem1_bounds`: Theorem 1 of Moosavi-Dezfooli et al. (002) — ℓ2 bounds on the minimal
  perturbation ``r*`` of the *quadratic model* of the loss ``ℓ`` (CE in nats, pixel space):
  ``(‖g‖/ν)(√(1 + 2νc/‖g‖²) − 1) ≤ ‖r*‖ ≤ (|gᵀu|/ν)(√(1 + 2νc/(gᵀu)²) − 1)`` with
  ``c = t − ℓ(x)``, ``g = ∇ℓ(x)``, ``ν = λ_max(H)``, ``u`` its unit eigenvector.
* :func:`second_order_radius`: the ε at which Yu et al.'s (000, Eq. 9) second-order bound on the
  change of the margin ``L`` reaches ``L(x)``.

Both are statements about local Taylor models, not certificates for the network.
"""

from __future__ import annotations

import torch

__all__ = ["theorem1_bounds", "theorem1_simplified", "alignment", "second_order_radius"]


def _t(v, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(torch.float64) if not v.is_floating_point() else v
    return torch.as_tensor(v, dtype=torch.float64 if like is None else like.dtype)


def _smallest_root(a: torch.Tensor, nu: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Smallest α ≥ 0 with ``a·α + (ν/2)·α² = c`` for ``a ≥ 0``, ``c > 0``, written stably as
    ``2c / (a + √(a² + 2νc))`` (= ``(a/ν)(√(1+2νc/a²) − 1)``; → ``c/a`` as ν → 0, no cancellation).
    ``+inf`` when no root exists (``a² + 2νc < 0`` for ν < 0, or a = ν = 0)."""
    disc = a * a + 2 * nu * c
    denom = a + disc.clamp_min(0).sqrt()
    root = 2 * c / denom
    inf = torch.full_like(root, float("inf"))
    return torch.where((disc < 0) | (denom <= 0), inf, root)


def theorem1_bounds(c, g_norm, nu, gu) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` bounds on ``‖r*‖₂`` from Theorem 1 of 002 (tensors broadcast; per sample).

    Inputs (pixel space, loss ``ℓ`` = CE unless the caller uses another loss consistently):
    ``c = t − ℓ(x)`` (e.g. ``t = log 2`` for binary log-loss), ``g_norm = ‖∇ℓ(x)‖₂``,
    ``nu = λ_max(∇²ℓ(x))``, ``gu = gᵀu`` with ``u`` the unit top eigenvector (sign irrelevant).

    Evaluated as ``2c/(a + √(a² + 2νc))`` with ``a = ‖g‖`` (lower) or ``|gᵀu|`` (upper), which equals
    the theorem's form and tends to the linear limits ``c/‖g‖`` and ``c/|gᵀu|`` as ν → 0.
    Edge cases: ``c ≤ 0`` (x already at/over the threshold) → both 0, which is exact since r = 0 is
    feasible; ``gᵀu = 0`` → upper = ``√(2c/ν)``; ``gᵀu = 0`` and ν = 0 → upper = +inf (no step along
    u reaches t). ν < 0 lies outside the theorem; the same smallest-root formula is returned
    (still a valid lower bound; +inf where the quadratic never reaches t).
    """
    c, g_norm, nu, gu = (_t(v) for v in (c, g_norm, nu, gu))
    c, g_norm, nu, gu = torch.broadcast_tensors(c, g_norm, nu, gu)
    pos = c > 0
    cc = torch.where(pos, c, torch.ones_like(c))
    lower = torch.where(pos, _smallest_root(g_norm.abs(), nu, cc), torch.zeros_like(c))
    upper = torch.where(pos, _smallest_root(gu.abs(), nu, cc), torch.zeros_like(c))
    return lower, upper


def theorem1_simplified(c, g_norm, nu, gu) -> tuple[torch.Tensor, torch.Tensor]:
    """The theorem's simplified (looser) form: ``c/‖g‖ − 2νc²/‖g‖³ ≤ ‖r*‖ ≤ c/|gᵀu|`` (c ≤ 0 → 0)."""
    c, g_norm, nu, gu = (_t(v) for v in (c, g_norm, nu, gu))
    c, g_norm, nu, gu = torch.broadcast_tensors(c, g_norm, nu, gu)
    pos = c > 0
    lower = torch.where(pos, c / g_norm - 2 * nu * c**2 / g_norm**3, torch.zeros_like(c))
    upper = torch.where(pos, c / gu.abs(), torch.zeros_like(c))
    return lower, upper


def alignment(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``|gᵀu| / (‖g‖‖u‖)`` per sample (002, Remark 3: alignment of the gradient with the top
    curvature direction). ``g``, ``u``: ``[B, ...]``; 0 where g = 0."""
    gf, uf = g.flatten(1), u.flatten(1).to(g.dtype)
    den = gf.norm(dim=1) * uf.norm(dim=1)
    num = (gf * uf).sum(dim=1).abs()
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def second_order_radius(margin, j_l1, lam_max_abs, dim: int | None = None, *, norm: str = "linf", j_l2=None) -> torch.Tensor:
    """Per-sample radius ε at which Yu et al.'s (000, Eq. 9) bound on the margin change reaches ``L(x)``.

    ℓ∞ (default): ``ε‖J‖₁ + ½‖δ‖₂² max|λ| = L(x)`` with ``‖δ‖₂² = d·ε²`` — the worst case over the
    ℓ∞ ball, attained at its corners δ ∈ {±ε}^d (``dim = d = C·H·W`` is required). Quadratic
    ``(d·Λ/2)ε² + ‖J‖₁ε − L = 0``, solved in closed form as ``ε = 2L/(‖J‖₁ + √(‖J‖₁² + 2dΛL))``.
    ℓ2 (``norm="l2"``, pass ``j_l2 = ‖J‖₂``; ``j_l1`` and ``dim`` ignored): ``ε‖J‖₂ + ½ε²Λ = L``.

    ``margin = L(x)`` (logit units), ``J = ∂L/∂x`` and ``Λ = max|λ_i(∇²L)|``, all pixel space. The
    bound is a Taylor-model indicator, not a certificate: no perturbation with ‖δ‖ < ε can flip the
    *quadratic model's* sign. ``L ≤ 0`` (misclassified) → 0; ``J = 0`` and ``Λ = 0`` → +inf.
    """
    L = _t(margin)
    lam = _t(lam_max_abs).abs()
    if norm == "linf":
        if dim is None or j_l1 is None:
            raise ValueError("the l-inf radius needs j_l1 = ||J||_1 and dim = d")
        a, q = _t(j_l1).abs(), lam * float(dim)
    elif norm == "l2":
        if j_l2 is None:
            raise ValueError("the l2 radius needs j_l2 = ||J||_2")
        a, q = _t(j_l2).abs(), lam
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    L, a, q = torch.broadcast_tensors(L, a, q)
    pos = L > 0
    LL = torch.where(pos, L, torch.ones_like(L))
    return torch.where(pos, _smallest_root(a, q, LL), torch.zeros_like(L))
