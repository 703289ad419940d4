"""PGD adversarial training (``pgd-at``, Madry et al. 2018) and a regularizer combined with it
(``--combine pgd-at``, Yu et al. 2018 Table 2 "Ours+AdvTrain").

The adversarial examples come from robaudit's own PGD (:mod:`robaudit.attacks.pgd`, eval mode,
weights untouched, α = 2.5ε/steps) at the run's threat model, pixel space [0,1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import UsageError
from ..geometry.margin import cross_entropy
from .regularizers import HARDENERS, Cure, Hardener, StepContext, StepOutput, ce_grad_norm, eval_mode

__all__ = ["PGDAT", "Combined", "adversarial_batch"]


def _pgd(steps: int):
    from ..attacks.pgd import PGD

    return PGD(steps=steps)


def adversarial_batch(model, x, y, ctx: StepContext, steps: int) -> torch.Tensor:
    """robaudit's PGD (eval mode, weights untouched) at ctx.threat."""
    return _pgd(steps).run(model, x, y, ctx.threat, ctx.generator).x_adv.detach()


@HARDENERS.register("pgd-at")
@dataclass
class PGDAT(Hardener):
    """Madry et al. 2018: train on robaudit's PGD adversarial examples (steps PGD steps, α = 2.5ε/steps)."""

    name: ClassVar[str] = "pgd-at"
    description: ClassVar[str] = "PGD adversarial training (Madry et al. 2018)"
    measure_name: ClassVar[str] = "‖∇CE‖₂"
    double_backward: ClassVar[bool] = False
    options: ClassVar[dict[str, str]] = {"pgd_steps": "steps"}

    steps: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError("pgd-at: --pgd-steps must be >= 1")

    @classmethod
    def around(cls, base: Hardener, steps: int = 10) -> Combined:
        """``base`` plus this method's adversarial CE (``--combine pgd-at``)."""
        return Combined(base=base, steps=steps)

    def loss(self, model, x, y, ctx):
        x_adv = adversarial_batch(model, x, y, ctx, self.steps)
        ce = cross_entropy(model(x_adv), y)  # train mode: the primary loss
        return StepOutput(loss=ce.mean(), ce=float(ce.detach().mean()), penalty=math.nan)

    def measure(self, model, x, y, threat):
        return ce_grad_norm(model, x, y)


@dataclass
class Combined(Hardener):
    """A regularizer plus the adversarial CE of pgd-at (Yu et al. Table 2 "Ours+AdvTrain").

    The adversarial CE runs in eval mode (the clean batch is the train-mode pass)."""

    base: Hardener = field(default_factory=Cure)
    steps: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.base, (PGDAT, Combined)) or self.base.certified:
            raise UsageError(
                "--combine pgd-at adds PGD adversarial training to a regularizer; use it with cure, jacobian or ce-grad"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}+pgd-at"

    @property
    def measure_name(self) -> str:  # type: ignore[override]
        return self.base.measure_name

    def params(self) -> dict:
        return {**self.base.params(), "combine": "pgd-at", "pgd_steps": self.steps}

    def resolve(self, threat, input_shape) -> None:
        self.base.resolve(threat, input_shape)

    def prepare(self, model, input_shape) -> None:
        self.base.prepare(model, input_shape)

    def loss(self, model, x, y, ctx):
        x_adv = adversarial_batch(model, x, y, ctx, self.steps)
        out = self.base.loss(model, x, y, ctx)
        with eval_mode(model, ctx.separate_eval):
            adv_ce = cross_entropy(model(x_adv), y).mean()
        return StepOutput(loss=out.loss + adv_ce, ce=out.ce, penalty=out.penalty, adv_ce=float(adv_ce.detach()))

    def measure(self, model, x, y, threat):
        return self.base.measure(model, x, y, threat)
