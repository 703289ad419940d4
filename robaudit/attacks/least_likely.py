"""Iterative least-likely class — Kurakin, Goodfellow & Bengio, *Adversarial examples in the
physical world* (ICLR workshop 2017), §2.3 ("iter. l.l."); one of the attacks of Yu et al.'s
Fig. 4.

A targeted iterative attack towards y_LL = argmin_k Z_k(x), the least-likely class of the clean
input: each step *decreases* the cross-entropy to y_LL,

    ℓ∞:  x ← Proj(x − α·sign(∇ CE(x, y_LL)))      ℓ2:  x ← Proj(x − α·∇CE/‖∇CE‖₂),

started at x (no random start), projected onto the ε-ball ∩ [0,1]^d. Success is plain
misclassification (any class ≠ y), as the base measures it: the first iterate that is misclassified
is kept, so later steps can't undo it. Norms: ℓ∞ (the paper's) and ℓ2. Defaults: ``steps=10``,
``step_size=0.1`` (α = ε/10, as BIM here; the paper uses α = 1/255 and min(255ε+4, 1.25·255ε)
steps). Cost: 1 forward (the clean logits) + per step 1 forward + 1 backward.

    >>> LeastLikely(steps=10).run(model, x, y, ThreatModel(Norm.LINF, 8/255))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..geometry.margin import cross_entropy
from ..threat import ThreatModel
from .base import ATTACKS, Attack, input_gradient, normalize_direction, predict, project

__all__ = ["LeastLikely"]


def _neg_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−CE(logits, target) per sample: ascending it descends the cross-entropy to the target."""
    return -cross_entropy(logits, target)


@ATTACKS.register("least-likely")
@dataclass
class LeastLikely(Attack):
    """Kurakin, Goodfellow & Bengio, *Adversarial examples in the physical world* (ICLR workshop
    2017), iterative least-likely class; ℓ∞ and ℓ2.

    steps: iterations (10); step_size: α as a multiple of ε (0.1, i.e. α = ε/10); no random start.

        >>> LeastLikely().run(model, x, y, ThreatModel(Norm.LINF, 8/255))
    """

    name = "least-likely"
    per_sample_rng = True
    steps: int = 10
    step_size: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.step_size > 0:
            raise UsageError(f"{self.name}: steps must be >= 1 and step_size > 0")

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        alpha = self.step_size * threat.eps
        target = predict(model, x, self.counter).argmin(dim=1)
        x_adv = x.clone()
        kept = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            _, logits, grad = input_gradient(model, x_adv, target, _neg_ce, self.counter)
            newly = (logits.argmax(1) != y) & ~found
            kept[newly] = x_adv[newly]
            found |= newly
            x_adv = project(x_adv + alpha * normalize_direction(grad, threat.norm), x, threat)
        return torch.where(found.view(-1, *[1] * (x.dim() - 1)), kept, x_adv)
