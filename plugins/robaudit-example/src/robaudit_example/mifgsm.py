"""MI-FGSM — Dong, Liao, Pang, Su, Zhu, Hu & Li, *Boosting Adversarial Attacks with Momentum*
(CVPR 2018), Algorithm 1.

g_{t+1} = μ·g_t + ∇ℓ(x_t)/‖∇ℓ(x_t)‖₁;  x_{t+1} = Π(x_t + α·dir(g_{t+1})), α = ε/T, with dir = sign
for ℓ∞ and g/‖g‖₂ for ℓ2 (the paper's ℓ2 variant), Π the projection onto the ε-ball ∩ [0,1]^d.
Defaults are the paper's: T = 10 iterations, μ = 1.0, cross-entropy, start at x. As in robaudit's
PGD, an iterate that is already misclassified is kept, so later steps can't undo a success.
Cost: T forward + T backward passes of the batch (plus one forward per check of the iterate).

    >>> MIFGSM(steps=10).run(model, x, y, ThreatModel(Norm.LINF, 0.1))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.attacks.base import LOSSES, Attack, input_gradient, normalize_direction, project
from robaudit.errors import UsageError
from robaudit.threat import ThreatModel

__all__ = ["MIFGSM"]


@dataclass
class MIFGSM(Attack):
    """steps: T; decay: momentum μ; loss: "ce" (the paper's) or "cw" (C&W margin)."""

    name = "mi-fgsm"
    per_sample_rng = True  # draws nothing at random (starts at x): nothing depends on the batch
    steps: int = 10
    decay: float = 1.0
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError("mi-fgsm: steps must be >= 1")
        if self.decay < 0:
            raise UsageError("mi-fgsm: decay must be >= 0")
        if self.loss not in LOSSES:
            raise UsageError(f"mi-fgsm: unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")

    def _perturb(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        alpha = threat.eps / self.steps
        shape = (-1,) + (1,) * (x.dim() - 1)
        g = torch.zeros_like(x)
        x_adv = x.clone()
        kept = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            _, logits, grad = input_gradient(model, x_adv, y, LOSSES[self.loss], self.counter)
            newly = (logits.argmax(1) != y) & ~found  # x_adv is misclassified: keep it
            kept[newly] = x_adv[newly]
            found |= newly
            l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(shape)
            g = self.decay * g + grad / l1
            x_adv = project(x_adv + alpha * normalize_direction(g, threat.norm), x, threat)
        return torch.where(found.view(shape), kept, x_adv)
