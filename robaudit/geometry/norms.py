"""Per-sample norms in the threat model's norm (ℓ∞ or ℓ2, pixel scale [0,1]) and the step that
reaches the ε-ball's boundary."""

from __future__ import annotations

import torch

from ..threat import Norm

__all__ = ["lp_norm", "ball_step"]


def lp_norm(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample ‖v‖ (ℓ∞ or ℓ2) over all non-batch dimensions."""
    flat = v.flatten(1)
    return flat.abs().amax(dim=1) if norm is Norm.LINF else flat.norm(p=2, dim=1)


def ball_step(v: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Per-sample step ``t = eps/‖v‖`` (threat norm) that puts ``x + t v`` on the ε-ball's boundary
    (``[B]``; directions with zero norm get t = eps)."""
    n = lp_norm(v, norm)
    return torch.where(n > 0, eps / n.clamp_min(torch.finfo(n.dtype).tiny), torch.full_like(n, eps))
