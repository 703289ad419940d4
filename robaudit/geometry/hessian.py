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
from typing import Callable, Literal

import torch
from torch import nn

from .. import rng
from .jacobian import ScalarFn, resolve_fn

__all__ = [
    "hvp_exact",
    "hvp_func",
    "hvp_fd",
    "hvp_operator",
    "full_hessian",
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
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(model(x), y).sum(), x)
    return g.detach()


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


def _randn(shape, generator, dtype, device) -> torch.Tensor:
    """Gaussian draws from a torch.Generator, or one stream per row from a SampleRNG."""
    return rng.normal(shape, generator, device if device is not None else "cpu", dtype)


def _rademacher(shape, generator, dtype, device) -> torch.Tensor:
    return rng.signs(shape, generator, device if device is not None else "cpu", dtype)


def _restart_vectors(shape, generator, dtype, device, j: int) -> torch.Tensor:
    """Lanczos restart candidates at iteration ``j``. Only some rows break down, so a SampleRNG
    draws them from a stream of their own at counter j (the other rows' streams don't move)."""
    if rng.is_sample_rng(generator):
        return generator.fork("lanczos-restart").normal(shape[1:], dtype=dtype, counter=j).to(device)
    return _randn(shape, generator, dtype, device)


# --------------------------------------------------------------------------- Hessian-vector products


def hvp_exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, fn: ScalarFn = "ce") -> torch.Tensor:
    """Exact per-sample ``H_b v_b`` (pixel space) by double backward: ``∇ₓ((∇ₓf)·v)`` with ``create_graph``.

    ``v`` has the shape of ``x``; one forward and two backward passes for the whole batch. A model
    whose gradient does not depend on ``x`` (linear, or margin of a ReLU net) gives exact zeros.
    """
    f = resolve_fn(fn)
    x = x.detach().requires_grad_(True)
    v = v.detach().to(x.dtype).reshape(x.shape)
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
        g0 = None if central else _grad(model, x, y, f)

    def op(v: torch.Tensor) -> torch.Tensor:
        vv = v.reshape(x.shape).to(x.dtype)
        if method == "exact":
            out = hvp_exact(model, x, y, vv, f)
        elif method == "func":
            out = hvp_func(model, x, y, vv, f)
        elif method == "fd":
            out = hvp_fd(model, x, y, vv, h, f, central=central, grad_at_x=g0)
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
        H = _full_hessian_replicated(model, x, y, f, method, h, chunk, central)
    else:
        raise ValueError(f"unknown Hessian method {method!r}; expected 'exact', 'func' or 'fd'")
    H = H.reshape(B, d, d)
    if symmetrize:
        H = 0.5 * (H + H.transpose(1, 2))
    return H


def _full_hessian_replicated(model, x, y, f, method, h, chunk, central) -> torch.Tensor:
    """Rows of ``[B·d, d]``: (sample, column) pairs, ``chunk`` replicated inputs per pass."""
    B, shape = x.shape[0], x.shape[1:]
    d = shape.numel()
    if method == "fd":
        if h is None:
            raise ValueError("method='fd' needs a step h (pixel units)")
        h_rows = h.to(x.dtype).reshape(B) if isinstance(h, torch.Tensor) and h.numel() > 1 else _per_sample(h, x)
        g0 = None if central else _grad(model, x, y, f).reshape(B, d)
    xf = x.reshape(B, d)
    H = x.new_empty(B * d, d)
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
            rows = hvp_exact(model, xs, ys, basis, f)
        else:
            hs = h_rows[s] if isinstance(h_rows, torch.Tensor) else h_rows
            if central:
                rows = hvp_fd(model, xs, ys, basis, hs, f, central=True)
            else:
                rows = hvp_fd(model, xs, ys, basis, hs, f, grad_at_x=g0[s])
        H[start:stop] = rows.reshape(n, d)
    return H


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
            grad_total = torch.func.grad(lambda z: f(model(z), ys).sum())
            push = torch.func.vmap(lambda t: torch.func.jvp(grad_total, (xs,), (t,))[1])
            for c0 in range(0, d, n_vec):
                cols = torch.arange(c0, min(c0 + n_vec, d), device=x.device)
                n = cols.numel()
                basis = torch.zeros(n, bs, d, dtype=x.dtype, device=x.device)
                basis[torch.arange(n, device=x.device), :, cols] = 1.0
                out = push(basis.reshape(n, bs, *shape))  # [n, bs, ...] = H_b e_col
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


# --------------------------------------------------------------------------- iterative estimators


def lanczos(
    hvp_fn: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    k: int,
    iters: int,
    generator: torch.Generator | None = None,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    v0: torch.Tensor | None = None,
    tol: float | None = None,
    which: Literal["top", "bottom", "both"] = "both",
    return_info: bool = False,
):
    """Batched symmetric Lanczos with full reorthogonalization over ``B`` operators at once.

    ``hvp_fn`` maps ``[B, d]`` → ``[B, d]`` (row b = H_b v_b; see :func:`hvp_operator`). At most
    ``min(iters, d)`` calls to ``hvp_fn`` (one per iteration, each a batch of B HVPs). The start
    vector is ``v0`` or Gaussian from ``generator``. Every new Lanczos vector is Gram–Schmidt
    orthogonalized twice against all previous ones (float64 by default). On breakdown (an invariant
    Krylov subspace, e.g. a low-rank Hessian) the sample restarts with a random vector orthogonal to
    the basis and a zero off-diagonal, so ``iters = d`` recovers the whole spectrum.

    With ``tol``, a sample's Ritz pairs are taken at the first iteration where the residuals
    ``|β_m s_{m,i}|`` of its requested extreme pairs (``which``) are ≤ ``tol · max|θ|`` (each Ritz
    value is then within that residual of an eigenvalue); the loop stops once every sample is
    there. A sample's result thus doesn't depend on the other samples of the batch.
    ``generator``: a torch.Generator, or a SampleRNG (one stream per sample).

    Returns ``(top [B,k] descending, bottom [B,k] ascending, top_vecs [B,k,d])`` (row j of
    ``top_vecs`` is the unit Ritz vector of ``top[:, j]``), plus an info dict ``{n_hvp, iters,
    residual_top, residual_bottom, converged}`` when ``return_info=True``.
    """
    m = min(int(iters), int(dim))
    if which not in ("top", "bottom", "both"):
        raise ValueError(f"which must be 'top', 'bottom' or 'both', got {which!r}")
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= min(iters, dim); got k={k}, iters={iters}, dim={dim}")
    if v0 is not None:
        device = v0.device if device is None else device
        B = v0.shape[0]
        q = v0.detach().reshape(B, dim).to(device=device, dtype=dtype)
    else:
        B = int(batch)
        q = _randn((B, dim), generator, dtype, device)
    device = q.device
    q = q / q.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    Q = torch.zeros(B, m, dim, dtype=dtype, device=device)
    alpha = torch.zeros(B, m, dtype=dtype, device=device)
    beta = torch.zeros(B, m, dtype=dtype, device=device)
    anorm = torch.zeros(B, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    n_used, n_hvp = m, 0
    done_at = torch.zeros(B, dtype=torch.long, device=device)  # iteration count at which a sample converged

    def ritz(n: int, rows: torch.Tensor | None = None):
        a = alpha if rows is None else alpha[rows]
        bt = beta if rows is None else beta[rows]
        T = torch.diag_embed(a[:, :n])
        if n > 1:
            off = bt[:, : n - 1]
            T = T + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
        theta, S = torch.linalg.eigh(T)
        res = (bt[:, n - 1 : n] * S[:, n - 1, :]).abs()
        return theta, S, res

    def orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = torch.einsum("bkd,bd->bk", basis, w)
        w = w - torch.einsum("bkd,bk->bd", basis, c1)
        c2 = torch.einsum("bkd,bd->bk", basis, w)
        return w - torch.einsum("bkd,bk->bd", basis, c2), c1

    for j in range(m):
        Q[:, j] = q
        w = hvp_fn(q).reshape(B, dim).to(dtype)
        n_hvp += 1
        w, c = orthogonalize(w, Q[:, : j + 1])
        alpha[:, j] = c[:, j]
        b = w.norm(dim=1)
        prev = beta[:, j - 1] if j > 0 else torch.zeros_like(b)
        anorm = torch.maximum(anorm, alpha[:, j].abs() + b + prev)
        beta[:, j] = b
        if j + 1 < m:
            broke = b <= 1e-10 * anorm + tiny
            q = w / b.clamp_min(tiny)[:, None]
            if bool(broke.any()):
                r = _restart_vectors((B, dim), generator, dtype, device, j)
                r, _ = orthogonalize(r, Q[:, : j + 1])
                r = r / r.norm(dim=1, keepdim=True).clamp_min(tiny)
                q = torch.where(broke[:, None], r, q)
                beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        if tol is not None and j + 1 >= k:
            theta, _, res = ritz(j + 1)
            scale = theta.abs().amax(dim=1, keepdim=True)
            ok_top = (res[:, -k:] <= tol * scale).all(dim=1)
            ok_bot = (res[:, :k] <= tol * scale).all(dim=1)
            ok = ok_top if which == "top" else ok_bot if which == "bottom" else ok_top & ok_bot
            done_at = torch.where(ok & (done_at == 0), torch.full_like(done_at, j + 1), done_at)
            if bool((done_at > 0).all()):
                n_used = j + 1
                break

    # each sample's Ritz pairs from its own iterations: up to where it converged (its first
    # iterations don't depend on the others, so a sample's result doesn't depend on its batch)
    n_b = torch.where(done_at > 0, done_at, torch.full_like(done_at, n_used))
    top = torch.empty(B, k, dtype=dtype, device=device)
    bottom = torch.empty(B, k, dtype=dtype, device=device)
    vecs = torch.empty(B, k, dim, dtype=dtype, device=device)
    r_top = torch.empty(B, k, dtype=dtype, device=device)
    r_bot = torch.empty(B, k, dtype=dtype, device=device)
    scale = torch.empty(B, 1, dtype=dtype, device=device)
    for n in sorted(set(n_b.tolist())):
        rows = (n_b == n).nonzero().squeeze(1)
        theta, S, res = ritz(n, rows)
        top[rows] = theta[:, -k:].flip(-1)
        bottom[rows] = theta[:, :k]
        v = torch.einsum("bnd,bnk->bkd", Q[rows, :n], S[:, :, -k:].flip(-1))
        vecs[rows] = v / v.norm(dim=2, keepdim=True).clamp_min(tiny)
        r_top[rows], r_bot[rows] = res[:, -k:].flip(-1), res[:, :k]
        scale[rows] = theta.abs().amax(dim=1, keepdim=True)
    if not return_info:
        return top, bottom, vecs
    if tol is None:
        converged = torch.ones(B, dtype=torch.bool, device=device)
    else:
        ok_top = (r_top <= tol * scale).all(dim=1)
        ok_bot = (r_bot <= tol * scale).all(dim=1)
        converged = ok_top if which == "top" else ok_bot if which == "bottom" else ok_top & ok_bot
    info = {"n_hvp": n_hvp, "iters": n_used, "residual_top": r_top, "residual_bottom": r_bot, "converged": converged}
    return top, bottom, vecs, info


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
