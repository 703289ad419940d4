"""FGSM — Goodfellow, Shlens & Szegedy, *Explaining and Harnessing Adversarial Examples* (ICLR 2015).

One step of size ε along the steepest-ascent direction of the loss at x:
ℓ∞: x + ε·sign(∇ℓ); ℓ2: x + ε·∇ℓ/‖∇ℓ‖₂ (the "fast gradient method"). Cost: 1 forward + 1 backward.

    >>> FGSM().run(model, x, y, ThreatModel(Norm.LINF, 8/255))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..threat import ThreatModel
from .base import ATTACKS, LOSSES, Attack, input_gradient, normalize_direction


@ATTACKS.register("fgsm")
@dataclass
class FGSM(Attack):
    """loss: "ce" (cross-entropy, the paper's) or "cw" (C&W margin loss)."""

    name = "fgsm"
    per_sample_rng = True
    single_step = True
    loss: str = "ce"

    def max_passes(self, num_classes: int) -> tuple[int, int]:
        return 2, 1  # one gradient, then run()'s success check

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        _, _, grad = input_gradient(model, x, y, LOSSES[self.loss], self.counter)
        return x + threat.eps * normalize_direction(grad, threat.norm)
