"""Input gradients ("Jacobians") of per-sample decision functions and their statistics (Yu et al., 000 §4).

Scale: everything is in **pixel space** [0,1]: ``x`` is the un-normalized input and the model
carries its normalization inside, so a gradient here is ``∂f/∂x_pixel = (∂f/∂x_normalized) / std``.

The scalar differentiated is chosen by ``fn``:

* ``"margin"``: the decision function ``L(x) = Z_y(x) − max_{i≠y} Z_i(x)`` in logit units (000 Eq. 1),
  the quantity whose Jacobian Yu et al. study;
* ``"ce"``: the per-sample cross-entropy ``ℓ(x) = −log softmax(Z(x))_y`` in nats (the loss of 002);
* or any callable ``(logits [B,K], y [B]) -> [B]`` returning one value per sample.

Per-sample values are summed (never averaged) before differentiating, so row ``b`` of the result
is sample ``b``'s own exact gradient (samples do not interact in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .margin import cross_entropy, margin
from .passes import record

__all__ = ["input_jacobian", "jacobian_stats", "resolve_fn", "ScalarFn"]

ScalarFn = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "margin": margin,
    "ce": cross_entropy,
}


def resolve_fn(fn: ScalarFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``"margin"`` → L(x) (logit units), ``"ce"`` → per-sample cross-entropy (nats), or a callable."""
    if callable(fn):
        return fn
    try:
        return _FNS[fn]
    except KeyError:
        raise ValueError(f"unknown scalar function {fn!r}; expected one of {sorted(_FNS)} or a callable") from None


def input_jacobian(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn: ScalarFn = "margin"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [B], grads [B, ...])``: the per-sample scalar ``fn`` at ``x`` and its exact
    pixel-space gradient ``∂fn_b/∂x_b`` (one forward, one backward, input gradient only).

    ``fn="margin"`` (default) gives Yu et al.'s Jacobian ``J = ∂L/∂x``; ``fn="ce"`` the loss gradient
    ``g = ∇ℓ(x)`` of Moosavi-Dezfooli et al. The model should be in eval mode (train-mode
    BatchNorm would couple the samples of the batch).
    """
    f = resolve_fn(fn)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = f(model(x), y)
        if values.shape != (x.shape[0],):
            raise ValueError(f"fn must return one value per sample (shape [{x.shape[0]}]), got {tuple(values.shape)}")
        (grads,) = torch.autograd.grad(values.sum(), x)
    record("grad", x.shape[0])
    return values.detach(), grads.detach()


def jacobian_stats(grads: torch.Tensor, zero_threshold: float = 1e-3) -> dict[str, torch.Tensor]:
    """Per-sample statistics of input gradients ``grads [B, ...]`` (each a tensor of shape [B]).

    * ``l1``, ``l2``, ``linf``: norms of the flattened gradient (pixel-space units: fn-units per
      unit of pixel intensity in [0,1]). ``l1`` is the dual norm of ℓ∞, i.e. the first-order change
      ``ε‖J‖₁`` of an ℓ∞ attack of radius ε (000 Eq. 9);
    * ``zero_frac``: fraction of entries with ``|g| < zero_threshold``. Yu et al. (000, footnote 3)
      count Jacobian entries below "10e-3" as zeros; robaudit reads that as 1e-3 (the default).
      The threshold is absolute, so it depends on the scale (pixel space, margin vs. CE).
    """
    flat = grads.detach().flatten(1)
    a = flat.abs()
    return {
        "l1": a.sum(dim=1),
        "l2": flat.norm(p=2, dim=1),
        "linf": a.amax(dim=1),
        "zero_frac": (a < zero_threshold).to(flat.dtype).mean(dim=1),
    }
