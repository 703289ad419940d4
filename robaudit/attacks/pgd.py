"""PGD — Madry, Makelov, Schmidt, Tsipras & Vladu, *Towards Deep Learning Models Resistant to
Adversarial Attacks* (ICLR 2018).

Projected steepest ascent on the loss inside the ε-ball ∩ [0,1]^d, from a uniform random start,
with restarts. Defaults: 20 steps, step size α = 2.5·ε/steps (Madry et al.'s rule, so the walk
can cross the ball), 1 restart, cross-entropy loss (``loss="cw"`` gives the C&W margin loss
inside ℓ∞ PGD, the "C&W" column of Yu et al.'s tables). A sample counts as broken if *any*
iterate of any restart is misclassified: that iterate is kept and the sample is not iterated
further (so later steps can't undo a success, and its passes and result don't depend on the other
samples of the batch). Cost per step: 1 forward + 1 backward of the samples not yet broken.

    >>> PGD(steps=20).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..rng import rows
from ..threat import ThreatModel
from .base import ATTACKS, LOSSES, Attack, input_gradient, normalize_direction, predict, project, random_start


@ATTACKS.register("pgd")
@dataclass
class PGD(Attack):
    """steps: iterations per restart; step_size: α as a multiple of ε per step, default 2.5/steps
    (None); restarts: independent random starts; random_start: False starts at x (BIM)."""

    name = "pgd"
    per_sample_rng = True
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise UsageError(f"{self.name}: steps and restarts must be >= 1")
        if self.loss not in LOSSES:
            raise UsageError(f"{self.name}: unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")

    def max_passes(self, num_classes: int) -> tuple[int, int]:
        # per restart: `steps` gradients and one forward of the last iterate (run()'s success
        # check after the last restart)
        return self.restarts * (self.steps + 1), self.restarts * self.steps

    def _alpha(self, threat: ThreatModel) -> float:
        rel = self.step_size if self.step_size is not None else 2.5 / self.steps
        return rel * threat.eps

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        loss_fn = LOSSES[self.loss]
        alpha = self._alpha(threat)
        best = x.clone()
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        work = self.restarts * (self.steps + 1)
        for restart in range(self.restarts):
            idx = (~broken).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            # the rows still iterating, compacted: a sample stops at its first misclassified
            # iterate (kept as its answer), so its passes and result don't depend on the batch
            act, xs, ys = idx, x[idx], y[idx]
            x_adv = random_start(xs, threat, rows(generator, idx)) if self.random_start else xs.clone()
            for step in range(self.steps):
                _, logits, grad = input_gradient(model, x_adv, ys, loss_fn, self.counter)
                wrong = logits.argmax(1) != ys
                if bool(wrong.any()):
                    best[act[wrong]] = x_adv[wrong]
                    broken[act[wrong]] = True
                    keep = ~wrong
                    act, xs, ys, x_adv, grad = act[keep], xs[keep], ys[keep], x_adv[keep], grad[keep]
                    if act.numel() == 0:
                        break
                x_adv = project(x_adv + alpha * normalize_direction(grad, threat.norm), xs, threat)
                self._report((restart * (self.steps + 1) + step + 1) / work)
            if act.numel():  # the last iterate was never tested
                best[act] = x_adv
                if restart + 1 < self.restarts:  # after the last restart run()'s success check tests it
                    broken[act] = predict(model, x_adv, self.counter).argmax(1) != ys
            self._report((restart + 1) * (self.steps + 1) / work)
        return best


@ATTACKS.register("bim")
@dataclass
class BIM(PGD):
    """BIM / I-FGSM — Kurakin, Goodfellow & Bengio, *Adversarial examples in the physical world*
    (ICLR workshop 2017): PGD started at x (no random start). Defaults: 10 steps of α = ε/10, so
    the walk can reach the ball's surface along any sign pattern."""

    name = "bim"
    steps: int = 10
    step_size: float | None = 0.1
    random_start: bool = False


@ATTACKS.register("cw-pgd")
@dataclass
class CWPGD(PGD):
    """ℓ∞/ℓ2 PGD on the C&W margin loss max_{i≠y} Z_i − Z_y (Carlini & Wagner 2017, f_6) instead of
    cross-entropy: the "C&W" column of Yu et al.'s tables. Same defaults as PGD (20 steps,
    α = 2.5ε/steps, random start)."""

    name = "cw-pgd"
    loss: str = "cw"
