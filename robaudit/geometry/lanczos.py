"""Batched symmetric Lanczos with full reorthogonalization: the top/bottom eigenvalues of B
operators at once (Hessians given as Hessian-vector products, :func:`robaudit.geometry.hvp_operator`).

Units are the operator's (for the input-space Hessians of :mod:`.hessian`: nats or logits per
pixel², pixel scale [0,1]). Random start and restart vectors come from a torch.Generator or, for
results independent of batch composition, one stream per row from a :class:`robaudit.rng.SampleRNG`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .. import rng

__all__ = ["lanczos", "randn"]


def randn(shape, generator, dtype, device) -> torch.Tensor:
    """Gaussian draws from a torch.Generator, or one stream per row from a SampleRNG."""
    return rng.normal(shape, generator, device if device is not None else "cpu", dtype)


def _restart_vectors(shape, generator, dtype, device, j: int) -> torch.Tensor:
    """Lanczos restart candidates at iteration ``j``. Only some rows break down, so a SampleRNG
    draws them from a stream of their own at counter j (the other rows' streams don't move)."""
    if rng.is_sample_rng(generator):
        return generator.fork("lanczos-restart").normal(shape[1:], dtype=dtype, counter=j).to(device)
    return randn(shape, generator, dtype, device)


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
        q = randn((B, dim), generator, dtype, device)
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
