"""SPSA — Uesato, O'Donoghue, van den Oord & Kohli, *Adversarial Risk and the Dangers of
Evaluating Against Weak Attacks* (ICML 2018).

Gradient-free: only forward passes (``counter.backward`` stays 0), so it still works where
gradients are masked or useless. Each iteration estimates the gradient of the margin loss
Z_y − max_{i≠y} Z_i at the current point by simultaneous-perturbation finite differences,

    ĝ = 1/n · Σ_j (ℓ(x + δ·v_j) − ℓ(x − δ·v_j)) / (2δ) · v_j,     v_j ∈ {−1, +1}^d (Rademacher),

with n = spsa_samples/2 antithetic pairs, then takes an Adam step *down* the estimate and projects
onto the ε-ball ∩ [0,1]^d. The probe points x ± δ·v are not clipped (the estimate is of the
model's own function). A sample stops (and its point is kept) as soon as it is misclassified.

Norms: ℓ∞ (the paper's) and ℓ2 (same estimate, ℓ2-ball projection). Defaults: ``nb_iter=100``
(the paper runs more, e.g. a few hundred to a thousand; raise it for a final evaluation),
``spsa_samples=128`` model evaluations per sample per iteration, ``delta=0.01``, Adam
``lr=0.01``, ``random_start=True`` (uniform in the ball, as in the reference implementation).
``spsa_batch`` bounds the rows of one forward: the B×spsa_samples probes of an iteration are
evaluated in chunks of at most that many rows (default 1024), so memory stays bounded.
Cost per iteration: spsa_samples + 1 forwards per unfinished sample, no backward.

    >>> SPSA(nb_iter=100).run(model, x, y, ThreatModel(Norm.LINF, 8/255), torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import rng
from ..errors import UsageError
from ..geometry.margin import margin
from ..threat import ThreatModel
from .base import ATTACKS, Attack, predict, project, random_start

__all__ = ["SPSA"]


@ATTACKS.register("spsa")
@dataclass
class SPSA(Attack):
    """Uesato, O'Donoghue, van den Oord & Kohli, *Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks* (ICML 2018), SPSA; ℓ∞ (and ℓ2 by projection); forward passes only.

    nb_iter: iterations (100; the paper uses more); spsa_samples: model evaluations per sample per
    iteration, ±v antithetic pairs, even (128); spsa_batch: max rows per forward (1024); delta:
    probe size (0.01); lr: Adam step on the perturbation (0.01); random_start: uniform in the
    ball (True).

        >>> SPSA(nb_iter=100).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
    """

    name = "spsa"
    per_sample_rng = True
    kind = "gradient-free"
    nb_iter: int = 100
    spsa_samples: int = 128
    spsa_batch: int = 1024
    delta: float = 0.01
    lr: float = 0.01
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.nb_iter < 1:
            raise UsageError(f"{self.name}: nb_iter must be >= 1")
        if self.spsa_samples < 2 or self.spsa_samples % 2:
            raise UsageError(f"{self.name}: spsa_samples must be an even number >= 2 (antithetic pairs)")
        if self.spsa_batch < 2:
            raise UsageError(f"{self.name}: spsa_batch must be >= 2")
        if not (self.delta > 0 and self.lr > 0):
            raise UsageError(f"{self.name}: delta and lr must be > 0")

    def _estimate(self, model, xa: torch.Tensor, ya: torch.Tensor, generator) -> torch.Tensor:
        """SPSA gradient estimate of the margin loss for each row of xa (forwards only)."""
        A = xa.shape[0]
        pairs = self.spsa_samples // 2
        total = A * pairs
        chunk = max(1, self.spsa_batch // 2)  # pairs per forward (2 rows each)
        grad = torch.zeros_like(xa)
        keyed = rng.is_sample_rng(generator)
        if keyed:  # one draw per iteration: pair j of sample i is words [j·w, (j+1)·w) of i's stream
            counter = generator.next_counter()
            words_per_pair = (xa[0].numel() + 31) // 32
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            pair = torch.arange(start, stop, device=xa.device)
            owner = pair // pairs  # which sample each pair probes
            if keyed:
                v = generator.signs(
                    tuple(xa.shape[1:]), dtype=xa.dtype, counter=counter, rows=owner, offset=(pair % pairs) * words_per_pair
                ).to(xa.device)
            else:
                v = torch.randint(0, 2, (stop - start, *xa.shape[1:]), generator=generator, device=xa.device)
                v = v.to(xa.dtype) * 2 - 1
            base = xa[owner]
            probes = torch.cat([base + self.delta * v, base - self.delta * v])
            yy = ya[owner]
            loss = margin(predict(model, probes, self.counter), torch.cat([yy, yy]))
            n = stop - start
            coef = (loss[:n] - loss[n:]) / (2 * self.delta)
            grad.index_add_(0, owner, coef.view(-1, *([1] * (xa.dim() - 1))) * v)
        return grad / pairs

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        x_adv = random_start(x, threat, generator) if self.random_start else x.clone()
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        active = torch.arange(x.shape[0], device=x.device)
        for it in range(self.nb_iter):
            wrong = predict(model, x_adv[active], self.counter).argmax(1) != y[active]
            active = active[~wrong]  # misclassified samples stop here, their point kept
            if active.numel() == 0:
                break
            xa, ya = x_adv[active], y[active]
            g = self._estimate(model, xa, ya, rng.rows(generator, active))
            ma = beta1 * m[active] + (1 - beta1) * g
            va = beta2 * v[active] + (1 - beta2) * g * g
            m[active], v[active] = ma, va
            step = self.lr * (ma / (1 - beta1 ** (it + 1))) / ((va / (1 - beta2 ** (it + 1))).sqrt() + adam_eps)
            x_adv[active] = project(xa - step, x[active], threat)  # descend the margin
        return x_adv
