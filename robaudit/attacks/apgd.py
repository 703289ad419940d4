"""APGD — Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks* (ICML 2020).

Auto-PGD: projected gradient ascent with momentum whose step size is halved at checkpoints when the
loss stops increasing often enough, restarting from the best point found. Three registered
variants, all ℓ∞ and ℓ2, with AutoAttack's ("standard" version) defaults:

* ``apgd-ce``  — untargeted, cross-entropy loss;
* ``apgd-dlr`` — untargeted, Difference-of-Logits-Ratio loss −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3);
* ``apgd-t``   — targeted DLR loss −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2), one run per target class t
  among the ``n_target_classes`` highest-scoring wrong classes of the clean input.

One iteration = 1 forward + 1 backward of the samples not yet misclassified; a run costs a sample
at most ``n_iter + 1`` of them (the gradient at the random start, then one per step until it is
broken: a broken sample keeps its first misclassified iterate and is not iterated further, so its
result and cost don't depend on its batch). Restarts and targets only attack the samples still
correctly classified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import rng
from ..errors import UsageError
from ..geometry.margin import cross_entropy, margin
from ..threat import Norm, ThreatModel
from .base import ATTACKS, Attack, input_gradient, normalize_direction, predict, project

__all__ = ["APGDCE", "APGDDLR", "APGDTargeted", "dlr_loss", "dlr_targeted_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RowLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y, batch rows)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR loss (to maximise): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12).

    π orders the logits decreasingly; needs at least 3 classes. Invariant to shifting and
    rescaling the logits, which is what makes it robust to gradient masking by logit scaling.
    """
    z_sorted = logits.sort(dim=1, descending=True).values
    return -margin(logits, y) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample targeted DLR loss (to maximise): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12).

    Needs at least 4 classes.
    """
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def checkpoints(n_iter: int) -> list[int]:
    """Step counts after which APGD checks whether to halve its step size: ⌊p_j·N⌋ for
    p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), in AutoAttack's integer form
    (intervals of ⌊0.22N⌋, shrinking by ⌊0.03N⌋ down to ⌊0.06N⌋, each at least 1).
    For N = 100: [22, 41, 57, 70, 80, 87, 93, 99]."""
    k = max(int(0.22 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    out, t = [], k
    while t <= n_iter:
        out.append(t)
        k = max(k - size_decr, k_min)
        t += k
    return out


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] → [B,1,...,1] to broadcast over ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class _APGD(Attack):
    """Shared core loop of the three APGD variants (not registered)."""

    name = "apgd"
    per_sample_rng = True
    norms = (Norm.LINF, Norm.L2)
    n_iter: int = 100
    n_restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    initial_step: float = 2.0

    _min_classes = 2

    def __post_init__(self) -> None:
        if self.n_iter < 1 or self.n_restarts < 1:
            raise UsageError(f"{self.name}: n_iter and n_restarts must be >= 1")
        if not 0.0 < self.rho <= 1.0:
            raise UsageError(f"{self.name}: rho must be in (0, 1], got {self.rho}")
        if not 0.0 <= self.momentum <= 1.0:
            raise UsageError(f"{self.name}: momentum must be in [0, 1], got {self.momentum}")
        if not self.initial_step > 0:
            raise UsageError(f"{self.name}: initial_step must be > 0, got {self.initial_step}")

    # -- pieces -----------------------------------------------------------------------------

    def _check_classes(self, num_classes: int) -> None:
        if num_classes < self._min_classes:
            raise UsageError(
                f"attack {self.name!r} needs a model with at least {self._min_classes} classes (its DLR loss "
                f"divides by a difference of the sorted logits); this one has {num_classes}: use apgd-ce"
            )

    @staticmethod
    def _start(x: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        """AutoAttack's random start: ℓ∞ x + ε·t/‖t‖∞ with t ~ U(−1,1)^d; ℓ2 x + ε·t/‖t‖₂ with
        t ~ N(0, I) (a point on the sphere); then clipped to [0,1]. ``generator``: a SampleRNG
        (one stream per row) or a torch.Generator."""
        if threat.norm is Norm.LINF:
            t = 2 * rng.uniform(x.shape, generator, x.device, x.dtype) - 1
            n = t.flatten(1).abs().amax(dim=1)
        else:
            t = rng.normal(x.shape, generator, x.device, x.dtype)
            n = t.flatten(1).norm(p=2, dim=1)
        return (x + threat.eps * t / _bview(n.clamp_min(1e-12), t)).clamp(0.0, 1.0)

    def _run_once(
        self, model, x: torch.Tensor, y: torch.Tensor, loss_fn: RowLossFn, threat: ThreatModel, generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run on a batch. Returns (point, broken, margin at the point): the first
        misclassified iterate where one was found, else the highest-loss iterate. ``loss_fn(logits,
        y, rows)`` gets the batch rows it is evaluated on. A sample stops being iterated once it is
        misclassified (its point is kept), so its passes and its result don't depend on the
        other samples of the batch."""
        checks = set(checkpoints(self.n_iter))
        everyone = torch.arange(x.shape[0], device=x.device)
        x_adv = self._start(x, threat, generator)
        loss, logits, grad = input_gradient(model, x_adv, y, lambda z, yy: loss_fn(z, yy, everyone), self.counter)
        broken = logits.argmax(1) != y
        x_found = x_adv.clone()
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        margin_best = margin(logits, y)

        step = torch.full((x.shape[0],), self.initial_step * threat.eps, device=x.device, dtype=x.dtype)
        x_old = x_adv.clone()
        prev_loss = loss.clone()
        n_increase = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)
        loss_best_last_check = loss_best.clone()
        reduced_last_check = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        last_check = 0

        for i in range(self.n_iter):
            act = (~broken).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            a = self.momentum if i > 0 else 1.0
            xa, xs, ya = x_adv[act], x[act], y[act]
            z = project(xa + _bview(step[act], xa) * normalize_direction(grad[act], threat.norm), xs, threat)
            x_next = project(xa + a * (z - xa) + (1 - a) * (xa - x_old[act]), xs, threat)
            x_old[act], x_adv[act] = xa, x_next

            loss_a, logits_a, grad_a = input_gradient(model, x_next, ya, lambda zz, yy: loss_fn(zz, yy, act), self.counter)
            grad[act] = grad_a
            wrong = logits_a.argmax(1) != ya
            x_found[act[wrong]] = x_next[wrong]  # keep the first success
            broken[act[wrong]] = True

            improved = loss_a > loss_best[act]
            better = act[improved]
            x_best[better] = x_next[improved]
            grad_best[better] = grad_a[improved]
            loss_best[better] = loss_a[improved]
            margin_best[better] = margin(logits_a, ya)[improved]

            n_increase[act] += (loss_a > prev_loss[act]).long()
            prev_loss[act] = loss_a
            if i + 1 in checks:
                k = i + 1 - last_check
                # condition 1: too few steps increased the loss since the last checkpoint;
                # condition 2: the step was not reduced at the last checkpoint and the best loss
                # did not improve since (AutoAttack leaves it off at the first checkpoint).
                oscillating = n_increase.to(loss.dtype) < self.rho * k
                stalled = ~reduced_last_check & (loss_best_last_check >= loss_best)
                reduce = oscillating | stalled
                reduced_last_check = reduce
                loss_best_last_check = loss_best.clone()
                step = torch.where(reduce, step / 2, step)
                r = _bview(reduce, x)
                x_adv = torch.where(r, x_best, x_adv)  # restart from the best point
                grad = torch.where(r, grad_best, grad)
                last_check = i + 1
                n_increase.zero_()

        point = torch.where(_bview(broken, x), x_found, x_best)
        return point, broken, margin_best

    def _loss(self) -> LossFn:
        raise NotImplementedError

    # -- driver ------------------------------------------------------------------------------

    def _plan(self, clean_logits: torch.Tensor) -> list[int | None]:
        """Target ranks to attack (None: untargeted). Overridden by the targeted variant."""
        return [None]

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        clean_logits = predict(model, x, self.counter)
        self._check_classes(clean_logits.shape[1])
        broken = clean_logits.argmax(1) != y  # already misclassified: x itself is the answer
        best = x.clone()
        best_margin = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=clean_logits.dtype)
        order = clean_logits.argsort(dim=1, descending=True)
        for rank in self._plan(clean_logits):
            for _ in range(self.n_restarts):
                todo = ~broken
                if not bool(todo.any()):
                    return best
                idx = todo.nonzero().squeeze(1)
                xs, ys = x[idx], y[idx]
                if rank is None:
                    base = self._loss()
                    loss_fn = lambda logits, yy, rows_, f=base: f(logits, yy)  # noqa: E731
                else:
                    target = order[idx, rank]
                    loss_fn = lambda logits, yy, rows_, t=target: dlr_targeted_loss(logits, yy, t[rows_])  # noqa: E731
                point, ok, m = self._run_once(model, xs, ys, loss_fn, threat, rng.rows(generator, idx))
                # keep a success, else the point closest to the decision boundary over all runs
                take = ok | (m < best_margin[idx])
                best[idx[take]] = point[take]
                best_margin[idx[take]] = m[take]
                broken[idx] = ok
        return best


@ATTACKS.register("apgd-ce")
@dataclass
class APGDCE(_APGD):
    """APGD-CE — Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks* (ICML 2020). Norms: ℓ∞, ℓ2.

    Untargeted APGD on the cross-entropy loss. Arguments (AutoAttack's defaults):
    n_iter=100 steps per run; n_restarts=1 runs from independent random starts (only on samples
    still correctly classified); rho=0.75 (halve the step at a checkpoint when fewer than
    rho·(steps since the last one) increased the loss); momentum=0.75 (weight of the new
    projected step, 1 − momentum on the previous displacement); initial_step=2.0 (η⁰ = 2ε).
    Checkpoints at p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) of n_iter.

        >>> APGDCE(n_iter=100).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
    """

    name = "apgd-ce"

    def _loss(self) -> LossFn:
        return cross_entropy


@ATTACKS.register("apgd-dlr")
@dataclass
class APGDDLR(_APGD):
    """APGD-DLR — Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks* (ICML 2020). Norms: ℓ∞, ℓ2.

    Untargeted APGD on the DLR loss −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 1e-12) (needs ≥ 3
    classes). Arguments as apgd-ce: n_iter=100, n_restarts=1, rho=0.75, momentum=0.75,
    initial_step=2.0.

        >>> APGDDLR().run(model, x, y, ThreatModel(Norm.L2, 0.5), generator)
    """

    name = "apgd-dlr"
    _min_classes = 3

    def _loss(self) -> LossFn:
        return dlr_loss


@ATTACKS.register("apgd-t")
@dataclass
class APGDTargeted(_APGD):
    """APGD-T — Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks* (ICML 2020). Norms: ℓ∞, ℓ2.

    Targeted APGD on the targeted DLR loss −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 1e-12) (needs
    ≥ 4 classes), run for each target t among the n_target_classes=9 highest-scoring other classes
    of the clean input (AutoAttack's standard version; capped at K − 1), n_restarts=1 each, on the
    samples not yet broken. Other arguments as apgd-ce: n_iter=100, rho=0.75, momentum=0.75,
    initial_step=2.0. Cost: up to n_target_classes · n_restarts · (n_iter + 1) gradient passes.

        >>> APGDTargeted(n_target_classes=9).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
    """

    name = "apgd-t"
    n_target_classes: int = 9
    _min_classes = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_target_classes < 1:
            raise UsageError(f"{self.name}: n_target_classes must be >= 1")

    def _plan(self, clean_logits: torch.Tensor) -> list[int | None]:
        # rank 0 is the predicted class (= y for the samples attacked); targets are ranks 1..n
        return list(range(1, min(self.n_target_classes, clean_logits.shape[1] - 1) + 1))
