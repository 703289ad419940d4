"""Spectra of input-space Hessians, per sample, in pixel space [0,1]: the full spectrum (exact,
Gauss-Newton for piecewise-linear networks, or finite differences at a stated step), Lanczos ends
for large inputs, and the rank grids the curvature profile is reported on.

Moosavi-Dezfooli et al. (002, "Robustness via curvature regularization, and vice versa") read a
network's curvature from these spectra; :mod:`robaudit.checks.curvature` runs them on a scan's
samples and :mod:`robaudit.checks.indicator` reuses the margin's finite-difference spectrum. Units:
eigenvalues in the function's units per pixel² (cross-entropy: nats; margin: logits).

* **Exact, piecewise-linear nets** (ReLU / max-pool / affine, detected by
  :func:`is_piecewise_linear`): ``H = Jᵀ(diag p − ppᵀ)J`` with ``J = ∂Z/∂x`` (rank ≤ C−1, every
  other eigenvalue exactly 0), from the C×C matrix ``A^½ J Jᵀ A^½`` in C backward passes
  (:func:`gauss_newton_spectrum`), whatever d.
* **Full spectra** (:func:`full_spectra`, :func:`shared_fd_spectra`): the d×d Hessian of
  :func:`robaudit.geometry.full_hessian` (exact or finite differences along the pixel basis),
  symmetrized, ``eigh`` — built for groups of samples whose float64 matrices fit
  :data:`FULL_GROUP_BYTES`.
* **Finite differences at the ε-ball step** (:func:`fd_spectrum`): each Hessian-vector product is
  ``(∇f(x + t v) − ∇f(x))/t`` with the longest step ``t`` that keeps ``x + t v`` inside the ε-ball
  (:func:`robaudit.geometry.norms.ball_step`); Lanczos (:mod:`.lanczos`) above the full-spectrum size.

Second-order work runs on a float64 copy of the model when it converts (:func:`analysis_model`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from ..rng import is_sample_rng
from ..threat import Norm
from .bounds import alignment
from .hessian import Method, full_hessian, full_hessians_fd, hvp_exact, hvp_fd, near_zero_fraction
from .jacobian import input_jacobian, resolve_fn
from .lanczos import lanczos
from .norms import ball_step
from .passes import tick

__all__ = [
    "HESSIAN_FLOAT64",
    "LANCZOS_K",
    "LANCZOS_ITERS",
    "PROFILE_POINTS",
    "analysis_model",
    "is_piecewise_linear",
    "logit_jacobian",
    "gauss_newton_spectrum",
    "full_spectra",
    "shared_fd_spectra",
    "fd_operator",
    "fd_spectrum",
    "lanczos_k_for",
    "lanczos_ranks",
    "profile_ranks",
    "spectrum_stats",
]

LANCZOS_K = 20  # top-k / bottom-k eigenvalues in Lanczos mode
LANCZOS_ITERS = 80
PROFILE_POINTS = 200
# Hessian work in float64 (a copy of the model): ~4x slower than float32 on CPU, but float32 rounding
# in gradient differences hides exact zeros (near-zero fractions) and pollutes small-step differences
HESSIAN_FLOAT64 = True
FULL_GROUP_BYTES = 256 * 2**20  # memory for full d×d Hessians held at once
EIGH_ROWS = 4  # matrices per eigh call (each is LAPACK's own call: the same numbers in any grouping)
EIGH_MAX_DIM = 1024  # above: eigvalsh + Lanczos on the explicit matrix for the top eigenvector


def analysis_model(model: nn.Module, sample: torch.Tensor) -> tuple[nn.Module, torch.dtype]:
    """A float64 copy of ``model`` for second-order work (finite differences cancel badly in
    float32); the model itself, in ``sample``'s dtype, when :data:`HESSIAN_FLOAT64` is off or the
    model can't be copied or converted (some exported graphs bake in their dtype)."""
    if not HESSIAN_FLOAT64:
        return model, sample.dtype
    try:
        m64 = copy.deepcopy(model).double()
        m64.eval()
        with torch.no_grad():
            out = m64(sample[:1].double())
        if out.dtype == torch.float64 and bool(torch.isfinite(out).all()):
            return m64, torch.float64
    except Exception:  # noqa: BLE001 - any failure means "use the original model"
        pass
    return model, sample.dtype


def is_piecewise_linear(model: nn.Module, x: torch.Tensor, num_classes: int, generator=None) -> bool:
    """True when the exact Hessian-vector product of a random combination of the logits is exactly
    zero at ``x`` (ReLU / max-pool / affine networks): the logits are then locally affine."""
    gdev = generator.device if generator is not None else x.device
    w = torch.randn(num_classes, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
    v = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    hv = hvp_exact(model, x, y, v, lambda z, _y: (z * w).sum(1))
    return bool((hv == 0).all())


def logit_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B,C], J [B,C,d])``: one forward, one backward per class (sum trick)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(xg)
        C = z.shape[1]
        rows = [torch.autograd.grad(z[:, c].sum(), xg, retain_graph=c < C - 1)[0].flatten(1) for c in range(C)]
    return z.detach(), torch.stack(rows, dim=1)


def gauss_newton_spectrum(model: nn.Module, x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact CE-Hessian spectrum of a locally affine network: ``H = Jᵀ A J``, ``A = diag p − ppᵀ``.

    The nonzero eigenvalues of H are those of the C×C matrix ``S = A^½ J Jᵀ A^½``; the top
    eigenvector is ``Jᵀ A^½ w / ‖·‖``. Returns ``(eigvals [B, d] descending, u_top [B, d])``."""
    logits, J = logit_jacobian(model, x)
    J = J.to(torch.float64)
    p = logits.to(torch.float64).softmax(dim=1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    w, V = torch.linalg.eigh(A)
    A_half = V @ torch.diag_embed(w.clamp_min(0).sqrt()) @ V.transpose(1, 2)
    M = A_half @ J  # [B, C, d]
    S = M @ M.transpose(1, 2)
    mu, W = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))  # ascending
    mu = mu.flip(-1)
    W = W.flip(-1)
    C = mu.shape[1]
    if d >= C:
        eig = torch.cat([mu, mu.new_zeros(mu.shape[0], d - C)], dim=1)
    else:
        eig = mu[:, :d]
    eig, _ = eig.sort(dim=1, descending=True)
    u = torch.einsum("bcd,bc->bd", M, W[:, :, 0])
    u = u / u.norm(dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    return eig, u


def _top_eigvec(H: torch.Tensor, generator=None) -> torch.Tensor:
    """Unit top eigenvector of each symmetric ``H [B, d, d]`` (eigh up to 1024, else Lanczos on the
    explicit matrix)."""
    d = H.shape[-1]
    if d <= EIGH_MAX_DIM:
        return torch.linalg.eigh(H)[1][:, :, -1]
    _, _, vecs = lanczos(
        lambda v: torch.bmm(H, v.unsqueeze(-1)).squeeze(-1),
        d,
        1,
        min(d, 300),
        generator,
        batch=H.shape[0],
        dtype=H.dtype,
        device=H.device,
        tol=1e-10,
        which="top",
    )
    return vecs[:, 0]


def _full_spectrum(H: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigvals [B, d] descending, top unit eigenvector [B, d])`` of symmetric ``H``."""
    H = H.to(torch.float64)
    d = H.shape[-1]
    if d <= EIGH_MAX_DIM:
        eigs, vecs = [], []
        for s in range(0, H.shape[0], EIGH_ROWS):  # a few matrices per call: the bar moves in between
            w, V = torch.linalg.eigh(H[s : s + EIGH_ROWS])
            eigs.append(w.flip(-1))
            vecs.append(V[:, :, -1])
            tick(w.shape[0] * d)
        return torch.cat(eigs), torch.cat(vecs)
    out = torch.linalg.eigvalsh(H).flip(-1), _top_eigvec(H, generator)
    tick(H.shape[0] * d)
    return out


def full_spectra(
    model, x, y, fn, method: Method, chunk: int, h: float | None = None, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigvals [B, d] descending, top eigvec [B, d])`` of every sample's full Hessian
    (:func:`robaudit.geometry.full_hessian` with ``method``/``h``), built for groups of samples
    whose d×d float64 matrices fit :data:`FULL_GROUP_BYTES`."""
    build = lambda xs, ys: [full_hessian(model, xs, ys, fn, method=method, h=h, chunk=chunk)]  # noqa: E731
    return _grouped_spectra(build, x, y, [generator])[0]


def shared_fd_spectra(model, x, y, fns, eps: float, chunk: int, generators) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`full_spectra` ``(…, fn, "fd", chunk, h=eps, generator)`` of each of ``fns`` with its
    generator — the same numbers — from one sweep of the points ``x + eps·e_i`` (one forward per
    point for all functions: :func:`robaudit.geometry.full_hessians_fd`). Holds len(fns) d×d
    matrices per sample of a group (the groups are :func:`full_spectra`'s)."""
    build = lambda xs, ys: full_hessians_fd(model, xs, ys, fns, eps, chunk)  # noqa: E731
    return _grouped_spectra(build, x, y, generators)


def _grouped_spectra(build, x, y, generators) -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = x[0].numel()
    group = max(1, FULL_GROUP_BYTES // (d * d * 8))
    # one logical draw for every group, per generator
    starts = [g.next_counter() if is_sample_rng(g) else None for g in generators]
    out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in generators]
    for s in range(0, x.shape[0], group):
        for H, gen, start, (eigs, vecs) in zip(build(x[s : s + group], y[s : s + group]), generators, starts, out):
            e, u = _full_spectrum(H, gen.subset(slice(s, s + group), start=start) if start is not None else gen)
            eigs.append(e)
            vecs.append(u)
    return [(torch.cat(eigs), torch.cat(vecs)) for eigs, vecs in out]


def fd_operator(model, x, y, fn, norm: Norm, eps: float, grad0: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ (∇f(x + t v) − ∇f(x))/t`` with the per-sample ball step ``t = eps/‖v‖`` (flat ``[B, d]``)."""

    def op(v: torch.Tensor) -> torch.Tensor:
        vv = v.reshape(x.shape).to(x.dtype)
        t = ball_step(vv, norm, eps)
        return hvp_fd(model, x, y, vv, t, fn, grad_at_x=grad0).reshape(v.shape).to(v.dtype)

    return op


def fd_spectrum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn,
    norm: Norm,
    eps: float,
    *,
    full: bool,
    chunk: int,
    generator=None,
    lanczos_k: int = LANCZOS_K,
    lanczos_iters: int = LANCZOS_ITERS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Finite-difference Hessian spectrum of ``fn`` ("ce" or "margin") at the ball step.

    ``full``: pixel-basis columns at ``h = eps`` (each column moves one pixel by eps, the largest
    move of one pixel inside the ℓ∞ or ℓ2 ball), symmetrized, all eigenvalues; returns
    ``(eigvals [B, d] desc, top eigvec [B, d], bottom eigvals = None)``. Otherwise Lanczos with
    the per-vector ball step: ``(top [B, k] desc, top eigvec [B, d], bottom [B, k] asc)``.
    Full Hessians are built for groups of samples that fit :data:`FULL_GROUP_BYTES`.
    """
    d = x[0].numel()
    if full:
        e, u = shared_fd_spectra(model, x, y, [fn], eps, chunk, [generator])[0]
        return e, u, None
    f = resolve_fn(fn)
    _, g0 = input_jacobian(model, x, y, f)
    op = fd_operator(model, x, y, f, norm, eps, g0)
    k = lanczos_k_for(d, lanczos_k)
    top, bottom, vecs = lanczos(op, d, k, max(k, min(lanczos_iters, d)), generator, batch=x.shape[0], device=x.device)
    return top, vecs[:, 0], bottom


def lanczos_k_for(d: int, k: int = LANCZOS_K) -> int:
    """Eigenvalues taken from each end in Lanczos mode (at most d/2, so the ends don't overlap)."""
    return max(1, min(int(k), d // 2))


def lanczos_ranks(d: int, k: int = LANCZOS_K) -> list[int]:
    """Ranks (0 = largest) of Lanczos mode's columns: top k descending, then bottom k descending."""
    kk = lanczos_k_for(d, k)
    return list(range(kk)) + list(range(d - kk, d))


def profile_ranks(d: int, points: int = PROFILE_POINTS) -> list[int]:
    """At most ``points`` ranks of a d-long sorted spectrum: the first and last quarter of the
    budget densely (the extremes carry the information), the rest evenly spaced in between."""
    if d <= points:
        return list(range(d))
    edge = points // 4
    mid = points - 2 * edge
    inner = torch.linspace(edge, d - edge - 1, mid).round().long().tolist()
    return sorted(set(range(edge)) | set(inner) | set(range(d - edge, d)))


def spectrum_stats(
    eig: torch.Tensor, ranks: list[int], complete: bool, g: torch.Tensor, u: torch.Tensor, zero_threshold: float
) -> dict[str, torch.Tensor]:
    """Per-sample columns of one spectrum (``eig [B, m]`` descending; complete: m = d, else the
    computed ranks in ``ranks`` order): λ_max, λ_min, near-zero fraction (|λ| < ``zero_threshold``,
    complete spectra only, else NaN), alignment |gᵀu|/‖g‖ of the gradient ``g`` with the unit top
    eigenvector ``u``, |gᵀu|, √Σλ² (complete only) and the eigenvalues at the profile ranks."""
    eig = eig.to(torch.float64).cpu()
    gf = g.flatten(1).to(torch.float64).cpu()
    al = alignment(gf, u.to(torch.float64).cpu())
    nan = torch.full((eig.shape[0],), math.nan, dtype=torch.float64)
    return {
        "lam_max": eig[:, 0],
        "lam_min": eig[:, -1],
        "nz": near_zero_fraction(eig, zero_threshold) if complete else nan,
        "align": al,
        "gu": al * gf.norm(dim=1),
        "frob": eig.pow(2).sum(1).sqrt() if complete else nan,
        "profile": eig[:, ranks] if complete else eig,
    }
