"""Helpers for minimal-perturbation attacks: a per-sample radius ε (one value per sample in a
tensor) where :mod:`robaudit.attacks.base` has one ε per batch.

* :func:`project_eps` — projection onto {x+δ : ‖δ‖ ≤ ε_i} ∩ [0,1]^d with ε_i per sample;
* :func:`random_start_eps` — a uniform point of each sample's own ball;
* :func:`pgd_eps` — the PGD loop of :class:`robaudit.attacks.pgd.PGD` (same step rule, kept
  first-misclassified iterate, restarts) with a per-sample ε, used by the bisection in
  :func:`robaudit.attacks.deepfool.refine_minimal_perturbation`;
* :func:`eval_mode` — the mode handling of :meth:`Attack.run` for the ``minimal_perturbation``
  entry points, which bypass ``run``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .. import rng
from ..threat import Norm
from .base import PassCounter, input_gradient, normalize_direction, predict

__all__ = ["project_eps", "random_start_eps", "pgd_eps", "eval_mode"]


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode, restoring a training-mode module afterwards (as :meth:`Attack.run`)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def project_eps(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm, eps: torch.Tensor) -> torch.Tensor:
    """Project onto {x+δ : ‖δ‖ ≤ eps[i]} ∩ [0,1]^d per sample (ℓ∞: exact; ℓ2: radial rescale, clip)."""
    delta = x_adv - x
    e = eps.to(dtype=x.dtype, device=x.device)
    if norm is Norm.LINF:
        ev = _view(e, delta)
        delta = torch.maximum(torch.minimum(delta, ev), -ev)
    else:
        n = delta.flatten(1).norm(p=2, dim=1)
        factor = (e / n.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * _view(factor, delta)
    return (x + delta).clamp(0.0, 1.0)


def random_start_eps(x: torch.Tensor, norm: Norm, eps: torch.Tensor, generator) -> torch.Tensor:
    """A uniform point of each sample's ball of radius eps[i], clipped to [0,1]."""
    e = eps.to(dtype=x.dtype, device=x.device)
    if norm is Norm.LINF:
        u = rng.uniform(x.shape, generator, x.device, x.dtype)
        delta = (2 * u - 1) * _view(e, x)
    else:
        d = x[0].numel()
        g = rng.normal(x.shape, generator, x.device, x.dtype)
        g = g / _view(g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12), g)
        r = rng.uniform((x.shape[0],), generator, x.device, x.dtype) ** (1.0 / d)
        delta = g * _view(r * e, g)
    return (x + delta).clamp(0.0, 1.0)


def pgd_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm,
    eps: torch.Tensor,
    *,
    steps: int,
    rel_step: float,
    restarts: int,
    random_start: bool,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    counter: PassCounter | None,
    generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD with a per-sample radius: step α_i = rel_step·eps[i]. Returns (x_adv, found), where
    x_adv is the first misclassified iterate of a sample (or its last iterate) and ``found`` says
    whether a misclassified point inside its own ball was seen. Cost per step: 1 forward +
    1 backward of the (remaining) batch, plus one forward per restart for the last iterate."""
    alpha = _view(rel_step * eps.to(dtype=x.dtype, device=x.device), x)
    best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = ~broken
        if not todo.any():
            break
        idx = todo.nonzero().squeeze(1)
        xs, ys, es, al = x[idx], y[idx], eps[idx], alpha[idx]
        x_adv = random_start_eps(xs, norm, es, rng.rows(generator, idx)) if random_start else xs.clone()
        found = torch.zeros(xs.shape[0], dtype=torch.bool, device=x.device)
        kept = x_adv.clone()
        for _ in range(steps):
            _, logits, grad = input_gradient(model, x_adv, ys, loss_fn, counter)
            newly = (logits.argmax(1) != ys) & ~found
            kept[newly] = x_adv[newly]
            found |= newly
            x_adv = project_eps(x_adv + al * normalize_direction(grad, norm), xs, norm, es)
        last_wrong = predict(model, x_adv, counter).argmax(1) != ys
        best[idx] = torch.where(_view(found, x), kept, x_adv)
        broken[idx] = found | last_wrong
    return best, broken
