"""Input-space Hessians of per-sample decision functions: HVPs, full Hessians, spectra, estimators.

Scale and conventions (apply to every function here):

* **Pixel space** [0,1]: ``x`` is the un-normalized input, the model carries its normalization, so
  ``H = ∂²f/∂x_pixel²`` (= the normalized-space Hessian scaled by 1/std² per pair of coordinates).
* The scalar ``f`` is chosen by ``fn``: ``"ce"`` = per-sample cross-entropy ``ℓ`` in nats (the loss
  of Moosavi-Dezfooli et al., 002), ``"margin"`` = ``L(x) = Z_y − max_{i≠y} Z_i`` in logit units
  (Yu et al., 000), or a callable ``(logits, y) -> [B]``. Per-sample values are *summed*, never
  averaged, before differentiating, so every result is each sample's own Hessian (eval mode).
* **Exact** vs **finite-difference**: ``exact``/``func`` are exact second derivatives (double
  backward / forward-over-reverse). ``fd`` is ``(∇f(x+h v) − ∇f(x))/h`` at a stated step ``h``
  in pixel units along ``v`` (step length ``h‖v‖₂``), *not* clipped to [0,1]. For a ReLU network
  the exact Hessian of the margin is 0 almost everywhere and the exact CE Hessian is
  ``Jᵀ(diag p − ppᵀ)J`` (rank ≤ C−1); curvature over a neighbourhood needs ``fd`` with a finite h
  (as 002 does) or a smooth activation. The paper's h = 1.5 on the [0,255] scale is
  ``1.5/255`` in pixel units.
* Flattened vectors: ``d = C·H·W``; operators built by :func:`hvp_operator` accept ``[B, d]`` or
  ``[B, C, H, W]`` and return the same shape.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .. import rng
from .jacobian import ScalarFn, resolve_fn
from .lanczos import lanczos
from .lanczos import randn as _randn
from .passes import record

__all__ = [
    "hvp_exact",
    "hvp_func",
    "hvp_fd",
    "hvp_operator",
    "full_hessian",
    "full_hessians_fd",
    "hessian_eigvals",
    "lanczos",
    "hutchinson_frobenius",
    "cure_direction",
    "cure_direction_norm",
    "near_zero_fraction",
]

Method = Literal["exact", "func", "fd"]


# --------------------------------------------------------------------------- helpers


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f) -> torch.Tensor:
    """Per-sample input gradient of ``f`` (sum of per-sample values, one backward)."""
    return _grads(model, x, y, [f])[0]


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fs) -> list[torch.Tensor]:
    """Per-sample input gradients of each of ``fs`` at ``x``: one forward shared by all, one
    backward each (the same numbers as a forward and backward per function)."""
    x = x.detach().requires_grad_(True)
    out = []
    with torch.enable_grad():
        logits = model(x)
        for k, f in enumerate(fs):
            (g,) = torch.autograd.grad(f(logits, y).sum(), x, retain_graph=k + 1 < len(fs))
            out.append(g.detach())
    record("grad", x.shape[0] * len(fs))
    return out


def _per_sample(h: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A step ``h`` as a float or as a [B,1,...] tensor broadcasting against ``like``."""
    if isinstance(h, torch.Tensor) and h.numel() > 1:
        if not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
            raise ValueError("finite-difference steps h must be positive and finite")
        return h.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    h = float(h)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"finite-difference step h must be a positive finite number, got {h}")
    return h


def _rademacher(shape, generator, dtype, device) -> torch.Tensor:
    return rng.signs(shape, generator, device if device is not None else "cpu", dtype)


# --------------------------------------------------------------------------- Hessian-vector products


def hvp_exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, fn: ScalarFn = "ce") -> torch.Tensor:
    """Exact per-sample ``H_b v_b`` (pixel space) by double backward: ``∇ₓ((∇ₓf)·v)`` with ``create_graph``.

    ``v`` has the shape of ``x``; one forward and two backward passes for the whole batch. A model
    whose gradient does not depend on ``x`` (linear, or margin of a ReLU net) gives exact zeros.
    """
    f = resolve_fn(fn)
    x = x.detach().requires_grad_(True)
    v = v.detach().to(x.dtype).reshape(x.shape)
    record("hvp", x.shape[0])
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(model(x), y).sum(), x, create_graph=True)
        if not g.requires_grad:
            return torch.zeros_like(x).detach()
        (hv,) = torch.autograd.grad((g * v).sum(), x, allow_unused=True)
    return torch.zeros_like(x).detach() if hv is None else hv.detach()


def hvp_func(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, fn: ScalarFn = "ce", vmap: bool = True
) -> torch.Tensor:
    """Exact per-sample ``H_b v_b`` via ``torch.func`` (forward-over-reverse: ``jvp`` of ``grad``).

    With ``vmap=True`` each sample is differentiated as its own 1-sample function, vectorized with
    ``torch.func.vmap`` (an independent cross-check of :func:`hvp_exact`); ``vmap=False`` uses the
    summed-loss trick on the whole batch instead (same result in eval mode, fewer constraints on
    the model's ops).
    """
    f = resolve_fn(fn)
    x = x.detach()
    v = v.detach().to(x.dtype).reshape(x.shape)
    record("hvp", x.shape[0])
    with warnings.catch_warnings():
        # torch's forward-AD decompositions use torch.jit.script internally on first use (a
        # FutureWarning about torch's own code, not the caller's)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        return _hvp_func(f, model, x, y, v, vmap)


def _hvp_func(f, model, x, y, v, vmap: bool) -> torch.Tensor:
    if vmap:

        def single(xi, yi):
            return f(model(xi.unsqueeze(0)), yi.unsqueeze(0)).squeeze(0)

        grad_single = torch.func.grad(single)

        def hvp_single(xi, yi, vi):
            return torch.func.jvp(lambda z: grad_single(z, yi), (xi,), (vi,))[1]

        return torch.func.vmap(hvp_single)(x, y, v).detach()

    def total(z):
        return f(model(z), y).sum()

    return torch.func.jvp(torch.func.grad(total), (x,), (v,))[1].detach()


def hvp_fd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    v: torch.Tensor,
    h: float | torch.Tensor,
    fn: ScalarFn = "ce",
    central: bool = False,
    grad_at_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Finite-difference ``H v ≈ (∇f(x+h v) − ∇f(x))/h`` (002 §3), or with ``central=True``
    ``(∇f(x+h v) − ∇f(x−h v))/(2h)``. Error O(h) (forward) / O(h²) (central) for smooth f.

    ``h`` (float or per-sample [B]) is in pixel units along ``v``; the step length is ``h‖v‖₂`` and
    ``x ± h v`` is *not* clipped to [0,1]. Pass ``grad_at_x`` (= ∇f(x)) to skip recomputing it.
    The gradients at both points are taken in one batched backward.
    """
    f = resolve_fn(fn)
    x = x.detach()
    v = v.detach().to(x.dtype).reshape(x.shape)
    hb = _per_sample(h, x)
    B = x.shape[0]
    record("hvp", B)
    if central:
        g = _grad(model, torch.cat([x + hb * v, x - hb * v]), torch.cat([y, y]), f)
        return (g[:B] - g[B:]) / (2 * hb)
    if grad_at_x is None:
        g = _grad(model, torch.cat([x + hb * v, x]), torch.cat([y, y]), f)
        return (g[:B] - g[B:]) / hb
    return (_grad(model, x + hb * v, y, f) - grad_at_x.reshape(x.shape)) / hb


def hvp_operator(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: ScalarFn = "ce",
    method: Method = "exact",
    h: float | torch.Tensor | None = None,
    central: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ H v`` for the whole batch at ``x``, for :func:`lanczos` / :func:`hutchinson_frobenius`.

    The returned function takes ``[B, d]`` or ``x``-shaped ``v`` and returns the same shape (in
    ``v``'s dtype). ``method``: ``"exact"`` (double backward), ``"func"`` (torch.func) or ``"fd"``
    (step ``h``; ∇f(x) is computed once and reused).
    """
    f = resolve_fn(fn)
    x = x.detach()
    if method == "fd":
        if h is None:
            raise ValueError("method='fd' needs a step h (pixel units)")
        step: float | torch.Tensor = h
        g0 = None if central else _grad(model, x, y, f)

    def op(v: torch.Tensor) -> torch.Tensor:
        vv = v.reshape(x.shape).to(x.dtype)
        if method == "exact":
            out = hvp_exact(model, x, y, vv, f)
        elif method == "func":
            out = hvp_func(model, x, y, vv, f)
        elif method == "fd":
            out = hvp_fd(model, x, y, vv, step, f, central=central, grad_at_x=g0)
        else:
            raise ValueError(f"unknown HVP method {method!r}; expected 'exact', 'func' or 'fd'")
        return out.reshape(v.shape).to(v.dtype)

    return op


# --------------------------------------------------------------------------- full Hessians


def full_hessian(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: ScalarFn = "ce",
    method: Method = "exact",
    h: float | torch.Tensor | None = None,
    chunk: int = 256,
    central: bool = False,
    symmetrize: bool = True,
) -> torch.Tensor:
    """Every sample's full pixel-space Hessian ``[B, d, d]`` (d = C·H·W) in a few vectorized passes.

    The identity basis ``e_1..e_d`` is pushed through batched HVPs, ``chunk`` (sample, basis
    vector) pairs per pass, so there are about ``ceil(B·d/chunk)`` passes, never one per column:

    * ``exact`` — each pass replicates the samples it needs and runs one batched double backward
      (:func:`hvp_exact`); works with any autograd-differentiable model (TorchScript included);
    * ``func`` — forward-over-reverse with ``torch.func``: the primal forward/backward is shared by
      the whole chunk (not replicated) and ``jvp`` is ``vmap``-ed over the basis vectors. Exact too,
      usually several times faster than ``exact``; needs a model that ``torch.func`` can trace
      (plain ``nn.Module``s, no TorchScript);
    * ``fd`` — one batched gradient at ``x + h·e_i`` for all i of the chunk, minus ∇f(x) computed
      once per sample, over h (pixel units; ``central`` differences optional).

    Peak memory grows with ``chunk`` (activations of ``chunk`` inputs / tangents). The result is
    symmetrized ``(H + Hᵀ)/2`` unless ``symmetrize=False``; dtype of ``x``.
    """
    f = resolve_fn(fn)
    x = x.detach()
    B, shape = x.shape[0], x.shape[1:]
    d = shape.numel()
    chunk = max(1, int(chunk))
    if method == "func":
        H = _full_hessian_func(model, x, y, f, chunk)
    elif method in ("exact", "fd"):
        H = _full_hessian_replicated(model, x, y, [f], method, h, chunk, central)[0]
    else:
        raise ValueError(f"unknown Hessian method {method!r}; expected 'exact', 'func' or 'fd'")
    H = H.reshape(B, d, d)
    if symmetrize:
        H = 0.5 * (H + H.transpose(1, 2))
    return H


def full_hessians_fd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fns,
    h: float | torch.Tensor,
    chunk: int = 256,
    symmetrize: bool = True,
) -> list[torch.Tensor]:
    """Finite-difference full Hessians ``[B, d, d]`` of several scalar functions at once, one per
    ``fns`` entry: the same columns as ``full_hessian(..., method="fd", h=h)`` of each (forward
    differences), but every point ``x + h·e_i`` goes through the model once for all functions
    (one forward, one backward per function) — about a third less work per extra function."""
    fs = [resolve_fn(fn) for fn in fns]
    x = x.detach()
    B, d = x.shape[0], x.shape[1:].numel()
    Hs = [H.reshape(B, d, d) for H in _full_hessian_replicated(model, x, y, fs, "fd", h, max(1, int(chunk)), False)]
    return [0.5 * (H + H.transpose(1, 2)) for H in Hs] if symmetrize else Hs


def _full_hessian_replicated(model, x, y, fs, method, h, chunk, central) -> list[torch.Tensor]:
    """Rows of ``[B·d, d]`` for each function of ``fs`` (several only for forward differences):
    (sample, column) pairs, ``chunk`` replicated inputs per pass."""
    B, shape = x.shape[0], x.shape[1:]
    d = shape.numel()
    if method == "fd":
        if h is None:
            raise ValueError("method='fd' needs a step h (pixel units)")
        h_rows = h.to(x.dtype).reshape(B) if isinstance(h, torch.Tensor) and h.numel() > 1 else _per_sample(h, x)
        g0 = None if central else [g.reshape(B, d) for g in _grads(model, x, y, fs)]
    elif len(fs) != 1:
        raise ValueError("several functions in one sweep need method='fd'")
    xf = x.reshape(B, d)
    Hs = [x.new_empty(B * d, d) for _ in fs]
    total = B * d
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        idx = torch.arange(start, stop, device=x.device)
        s, col = idx // d, idx % d
        n = stop - start
        xs = xf[s].reshape(n, *shape)
        ys = y[s]
        basis = torch.zeros(n, d, dtype=x.dtype, device=x.device)
        basis[torch.arange(n, device=x.device), col] = 1.0
        basis = basis.reshape(n, *shape)
        if method == "exact":
            rows = [hvp_exact(model, xs, ys, basis, fs[0])]
        else:
            hs = h_rows[s] if isinstance(h_rows, torch.Tensor) else h_rows
            if central:
                rows = [hvp_fd(model, xs, ys, basis, hs, fs[0], central=True)]
            else:  # hvp_fd's forward difference, the point's forward shared by the functions
                assert g0 is not None  # computed above unless central
                hb = _per_sample(hs, xs)
                record("hvp", n * len(fs))
                rows = [(g - g0[k][s].reshape(xs.shape)) / hb for k, g in enumerate(_grads(model, xs + hb * basis, ys, fs))]
        for H, r in zip(Hs, rows):
            H[start:stop] = r.reshape(n, d)
    return Hs


def _full_hessian_func(model, x, y, f, chunk) -> torch.Tensor:
    """``[B, d, d]`` by ``vmap``(jvp ∘ grad) over basis vectors; primal shared within a group of
    ``min(B, chunk)`` samples, ``max(1, chunk // group)`` basis vectors per pass."""
    B, shape = x.shape[0], x.shape[1:]
    d = shape.numel()
    H = x.new_empty(B, d, d)
    group = min(B, chunk)
    n_vec = max(1, chunk // group)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        for s0 in range(0, B, group):
            xs, ys = x[s0 : s0 + group], y[s0 : s0 + group]
            bs = xs.shape[0]
            grad_total = torch.func.grad(lambda z: f(model(z), ys).sum())  # noqa: B023 - called within this iteration
            push = torch.func.vmap(lambda t: torch.func.jvp(grad_total, (xs,), (t,))[1])  # noqa: B023 - called within this iteration
            for c0 in range(0, d, n_vec):
                cols = torch.arange(c0, min(c0 + n_vec, d), device=x.device)
                n = cols.numel()
                basis = torch.zeros(n, bs, d, dtype=x.dtype, device=x.device)
                basis[torch.arange(n, device=x.device), :, cols] = 1.0
                out = push(basis.reshape(n, bs, *shape))  # [n, bs, ...] = H_b e_col
                record("hvp", n * bs)
                H[s0 : s0 + bs, c0 : c0 + n] = out.reshape(n, bs, d).transpose(0, 1)
    return H


def hessian_eigvals(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: ScalarFn = "ce",
    method: Method = "exact",
    h: float | torch.Tensor | None = None,
    chunk: int = 256,
    central: bool = False,
) -> torch.Tensor:
    """The curvature profile (002): all eigenvalues of each sample's pixel-space Hessian,
    ``[B, d]`` float64, **sorted descending**, via ``torch.linalg.eigvalsh`` of :func:`full_hessian`
    (same ``fn``/``method``/``h`` meaning; state ``h`` when ``method="fd"``)."""
    H = full_hessian(model, x, y, fn, method=method, h=h, chunk=chunk, central=central).to(torch.float64)
    return torch.linalg.eigvalsh(H).flip(-1)


# --------------------------------------------------------------------------- iterative estimators (Lanczos: .lanczos)


def hutchinson_frobenius(
    hvp_fn: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...] | torch.Size,
    n_samples: int,
    generator: torch.Generator | None = None,
    *,
    dist: Literal["rademacher", "gaussian"] = "rademacher",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased per-sample estimate of ``‖H‖_F²`` (002 §4): ``E_z ‖H z‖² = tr(HᵀH)`` for ``z`` with
    ``E[zzᵀ] = I`` (Rademacher ±1 by default, or standard Gaussian).

    ``shape = (B, ...)`` is the shape ``hvp_fn`` takes (``[B, d]`` or x-shaped); ``n_samples`` calls
    of ``hvp_fn``. Returns ``(mean [B], standard error [B])`` where the standard error is the
    sample standard deviation / √n (NaN when ``n_samples == 1``). Units: (fn units / pixel²)².
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    draw = _rademacher if dist == "rademacher" else _randn if dist == "gaussian" else None
    if draw is None:
        raise ValueError(f"unknown probe distribution {dist!r}")
    vals = []
    for _ in range(int(n_samples)):
        z = draw(tuple(shape), generator, dtype, device)
        vals.append(hvp_fn(z).to(dtype).flatten(1).pow(2).sum(dim=1))
    est = torch.stack(vals)  # [n, B]
    mean = est.mean(dim=0)
    if n_samples == 1:
        return mean, torch.full_like(mean, float("nan"))
    return mean, est.std(dim=0, unbiased=True) / math.sqrt(n_samples)


# --------------------------------------------------------------------------- CURE direction


def cure_direction(grad: torch.Tensor) -> torch.Tensor:
    """CURE's direction ``z = sign(∇ℓ)/‖sign(∇ℓ)‖₂`` per sample (002 §4); zero gradient → zero z."""
    s = grad.detach().sign()
    n = s.flatten(1).norm(dim=1).clamp_min(1.0)
    return s / n.view(-1, *([1] * (s.dim() - 1)))


def cure_direction_norm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    h: float | torch.Tensor | None = None,
    fn: ScalarFn = "ce",
    method: Literal["exact", "fd"] = "fd",
    central: bool = False,
) -> torch.Tensor:
    """``‖H z‖₂`` per sample at CURE's direction ``z = sign(∇ℓ)/‖sign(∇ℓ)‖`` (pixel space, ``fn``
    = CE by default).

    ``method="fd"`` (step ``h`` in pixel units, required): ``‖∇ℓ(x+h z) − ∇ℓ(x)‖/h`` — the square
    root of CURE's regularizer divided by h (the regularizer itself is ``(h·result)²``);
    ``method="exact"``: the exact ``‖H z‖`` by double backward (``h`` ignored).
    """
    f = resolve_fn(fn)
    g = _grad(model, x, y, f)
    z = cure_direction(g)
    if method == "exact":
        hz = hvp_exact(model, x, y, z, f)
    elif method == "fd":
        if h is None:
            raise ValueError("method='fd' needs a step h (pixel units; the paper's 1.5 on [0,255] is 1.5/255)")
        hz = hvp_fd(model, x, y, z, h, f, central=central, grad_at_x=None if central else g)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'exact' or 'fd'")
    return hz.flatten(1).norm(dim=1)


def near_zero_fraction(eigvals: torch.Tensor, threshold: float = 1e-9, relative: bool = False) -> torch.Tensor:
    """Per-sample fraction of eigenvalues with ``|λ| < threshold`` (``eigvals [B, d]``).

    With ``relative=True`` the threshold is ``threshold · max|λ|`` of that sample. Yu et al. (000,
    footnote 3) count Hessian eigenvalues below "10e-10" as zero (absolute, scale-dependent);
    robaudit's default 1e-9 is that reading.
    """
    a = eigvals.abs()
    thr = threshold * a.amax(dim=-1, keepdim=True) if relative else threshold
    return ((a < thr) | (a == 0)).to(torch.float64).mean(dim=-1)
