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

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from .. import rng
from ..errors import UsageError
from ..geometry.margin import cross_entropy, margin
from ..threat import Norm, ThreatModel
from ._runs import RunResults, RunSchedule, resolve_stagger, run_starts
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
    # Ticks between the starts of a sample's runs (targets × restarts) packed into shared model
    # calls (robaudit.attacks._runs): None = ⌊0.22·n_iter⌋, 0 = all at once, -1 = one after the
    # other. Changes the cost, never the result (not a hyper-parameter: not in params()).
    stagger: int | None = field(default=None, repr=False, compare=False)

    _min_classes = 2
    _batch_rows = None  # rows of the batch given to run(): the default cap of a packed call

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

    # -- the packed runs -------------------------------------------------------------------

    def _evaluate(self, model, points: torch.Tensor, ys: torch.Tensor, targets: torch.Tensor):
        """(loss, logits, gradient) at ``points`` in model calls of at most ``max_rows`` rows."""
        step = max(1, int(self.max_rows or self._batch_rows or points.shape[0]))
        outs = []
        for s in range(0, points.shape[0], step):
            outs.append(
                input_gradient(
                    model,
                    points[s : s + step],
                    ys[s : s + step],
                    partial(self._row_loss, target=targets[s : s + step]),
                    self.counter,
                )
            )
        if len(outs) == 1:
            return outs[0]
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def _row_loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row loss to maximise (``target``: each row's target class; unused when untargeted)."""
        return self._loss()(logits, y)

    def _step(self, st: dict, threat: ThreatModel) -> torch.Tensor:
        """Each active row's next iterate (momentum 1 at a run's first iteration)."""
        xa, x0 = st["x_adv"], st["x0"]
        a = torch.where(st["it"] > 0, self.momentum, 1.0).to(xa.dtype)
        z = project(xa + _bview(st["step"], xa) * normalize_direction(st["grad"], threat.norm), x0, threat)
        return project(xa + _bview(a, xa) * (z - xa) + _bview(1 - a, xa) * (xa - st["x_old"]), x0, threat)

    def _fixed(self, st: dict, threat: ThreatModel) -> torch.Tensor:
        """[R] bool: rows at a fixed point of the iteration, whose remaining iterations are provably
        identical to this one (for a deterministic model): the input gradient is exactly zero, so
        the step is P(x_adv) whatever the step size; x_adv = P(x_adv) and x_old = x_adv, so the
        momentum term is zero and the next iterate is x_adv again, with the same loss, logits and
        zero gradient; and x_best = x_adv with a zero gradient, so a checkpoint's restart from the
        best point changes nothing either. The run's answer is then already final: x_best and
        margin_best, not misclassified (a misclassified row is done anyway). Rows with a nonzero
        or non-finite gradient never qualify."""
        flat = st["grad"].flatten(1)
        zero = (flat == 0).all(dim=1)
        if not bool(zero.any()):
            return zero
        r = zero.nonzero().squeeze(1)
        xa = st["x_adv"][r]
        still = (
            ((st["x_old"][r] == xa) & (st["x_best"][r] == xa) & (project(xa, st["x0"][r], threat) == xa)).flatten(1).all(dim=1)
        )
        still &= (st["grad_best"][r].flatten(1) == 0).all(dim=1)
        return zero.index_put((r,), still)

    def _update(self, st: dict, x_next, loss, logits, grad, is_check: torch.Tensor, check_now: bool) -> torch.Tensor:
        """One iteration's bookkeeping for the active rows (Croce & Hein's Algorithm 1). Returns
        the rows now misclassified."""
        y = st["y"]
        st["x_old"], st["x_adv"], st["grad"] = st["x_adv"], x_next, grad
        wrong = logits.argmax(1) != y
        improved = loss > st["loss_best"]
        r = _bview(improved, x_next)
        st["x_best"] = torch.where(r, x_next, st["x_best"])
        st["grad_best"] = torch.where(r, grad, st["grad_best"])
        st["loss_best"] = torch.where(improved, loss, st["loss_best"])
        st["margin_best"] = torch.where(improved, margin(logits, y), st["margin_best"])
        st["n_increase"] = st["n_increase"] + (loss > st["prev_loss"]).long()
        st["prev_loss"] = loss
        i = st["it"]
        if check_now:
            chk = is_check[i + 1]
            k = (i + 1 - st["last_check"]).to(loss.dtype)
            # condition 1: too few steps increased the loss since the last checkpoint;
            # condition 2: the step was not reduced at the last checkpoint and the best loss
            # did not improve since (AutoAttack leaves it off at the first checkpoint).
            oscillating = st["n_increase"].to(loss.dtype) < self.rho * k
            stalled = ~st["reduced_last_check"] & (st["loss_best_last_check"] >= st["loss_best"])
            reduce = (oscillating | stalled) & chk
            st["reduced_last_check"] = torch.where(chk, reduce, st["reduced_last_check"])
            st["loss_best_last_check"] = torch.where(chk, st["loss_best"], st["loss_best_last_check"])
            st["step"] = torch.where(reduce, st["step"] / 2, st["step"])
            rr = _bview(reduce, x_next)
            st["x_adv"] = torch.where(rr, st["x_best"], st["x_adv"])  # restart from the best point
            st["grad"] = torch.where(rr, st["grad_best"], st["grad"])
            st["last_check"] = torch.where(chk, i + 1, st["last_check"])
            st["n_increase"] = torch.where(chk, torch.zeros_like(st["n_increase"]), st["n_increase"])
        st["it"] = i + 1
        return wrong

    @staticmethod
    def _init(x0, y, target, x_start, loss, logits, grad, step0: float) -> dict:
        """State of runs just evaluated at their start points."""
        n = x0.shape[0]
        dev = x0.device
        return {
            "x0": x0,
            "y": y,
            "target": target,
            "x_adv": x_start,
            "x_old": x_start,
            "grad": grad,
            "x_best": x_start,
            "grad_best": grad,
            "loss_best": loss,
            "margin_best": margin(logits, y),
            "step": torch.full((n,), step0, device=dev, dtype=x0.dtype),
            "prev_loss": loss,
            "n_increase": torch.zeros(n, dtype=torch.long, device=dev),
            "loss_best_last_check": loss,
            "reduced_last_check": torch.ones(n, dtype=torch.bool, device=dev),
            "last_check": torch.zeros(n, dtype=torch.long, device=dev),
            "it": torch.zeros(n, dtype=torch.long, device=dev),
        }

    def _loss(self) -> LossFn:
        raise NotImplementedError

    # -- driver ------------------------------------------------------------------------------

    def _runs(self, num_classes: int) -> int:
        """Runs of a sample: targets × restarts."""
        return self.n_restarts

    def max_passes(self, num_classes: int) -> tuple[int, int]:
        # the clean forward, n_iter + 1 gradients per run (its start and n_iter steps), run()'s success check
        grads = self._runs(num_classes) * (self.n_iter + 1)
        return grads + 2, grads

    def _plan(self, clean_logits: torch.Tensor) -> list[int | None]:
        """Target ranks to attack (None: untargeted). Overridden by the targeted variant."""
        return [None]

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        """Every (target, restart) run of every clean-correct sample, packed by
        :class:`~robaudit.attacks._runs.RunSchedule`: run q of a sample draws its random start
        from that sample's stream at position q (what the runs one after the other drew), and
        the answer is AutoAttack's: the first successful run's point, else the point closest to
        the decision boundary over all runs."""
        clean_logits = predict(model, x, self.counter)
        self._check_classes(clean_logits.shape[1])
        self._batch_rows = x.shape[0]  # packed calls never take more rows than the batch given
        best = x.clone()
        todo = (clean_logits.argmax(1) == y).nonzero().squeeze(1)  # misclassified: x is the answer
        if todo.numel() == 0:
            return best
        runs = [(rank, r) for rank in self._plan(clean_logits) for r in range(self.n_restarts)]
        xs, ys = x[todo], y[todo]
        order = clean_logits[todo].argsort(dim=1, descending=True)
        targets = torch.stack([order[:, rank] if rank is not None else torch.full_like(ys, -1) for rank, _ in runs], dim=1)
        gen = rng.rows(generator, todo)
        base = gen.position if rng.is_sample_rng(gen) else 0
        schedule = RunSchedule(xs.shape[0], len(runs), resolve_stagger(self.stagger, self.n_iter))
        results = RunResults(xs, len(runs))
        is_check = torch.zeros(self.n_iter + 2, dtype=torch.bool)
        is_check[checkpoints(self.n_iter)] = True
        is_check_dev = is_check.to(x.device)
        st: dict | None = None
        s_cpu = q_cpu = it_cpu = torch.zeros(0, dtype=torch.long)
        step0 = self.initial_step * threat.eps
        while not bool(schedule.finished.all()):
            new_s, new_q = schedule.starts()
            points = []
            if st is not None:
                x_next = self._step(st, threat)
                points.append(x_next)
            if new_s.numel():
                starts = run_starts(lambda z, g: self._start(z, threat, g), xs[new_s.to(x.device)], new_s, new_q, gen, base)
                points.append(starts)
            sd = new_s.to(x.device)
            y_eval = torch.cat(([st["y"]] if st is not None else []) + [ys[sd]])
            t_eval = torch.cat(([st["target"]] if st is not None else []) + [targets[sd, new_q.to(x.device)]])
            x_eval = torch.cat(points) if len(points) > 1 else points[0]
            loss, logits, grad = self._evaluate(model, x_eval, y_eval, t_eval)
            R = 0 if st is None else st["x_adv"].shape[0]
            wrong_parts = []
            if st is not None:
                check_now = bool(is_check[it_cpu + 1].any())
                wrong_parts.append(self._update(st, x_next, loss[:R], logits[:R], grad[:R], is_check_dev, check_now))
                it_cpu = it_cpu + 1
            if new_s.numel():
                fresh = self._init(
                    xs[sd], ys[sd], targets[sd, new_q.to(x.device)], starts, loss[R:], logits[R:], grad[R:], step0
                )
                st = fresh if st is None else {k: torch.cat([st[k], fresh[k]]) for k in st}
                s_cpu, q_cpu = torch.cat([s_cpu, new_s]), torch.cat([q_cpu, new_q])
                it_cpu = torch.cat([it_cpu, torch.zeros_like(new_s)])
                wrong_parts.append(logits[R:].argmax(1) != ys[sd])
            wrong = torch.cat(wrong_parts)
            assert st is not None  # every running row has its state once started
            wrong_cpu = wrong.cpu()
            done_cpu = wrong_cpu | (it_cpu >= self.n_iter)
            if self.stop_at_fixed_points:
                done_cpu |= self._fixed(st, threat).cpu()  # their later iterations can't change anything
            finished, removed = schedule.end_tick(s_cpu, q_cpu, wrong_cpu, done_cpu)
            if bool(finished.any()):
                f = finished.to(x.device)
                point = torch.where(_bview(wrong[f], x_eval), x_eval[f], st["x_best"][f])
                results.add(s_cpu[finished].to(x.device), q_cpu[finished].to(x.device), point, wrong[f], st["margin_best"][f])
            if bool(removed.any()):
                keep = ~removed
                kd = keep.to(x.device)
                st = {k: v[kd] for k, v in st.items()} if bool(keep.any()) else None
                s_cpu, q_cpu, it_cpu = s_cpu[keep], q_cpu[keep], it_cpu[keep]
            if self.progress is not None:
                self._report(schedule.fraction(s_cpu, (it_cpu + 1).double() / (self.n_iter + 1)))
        best[todo] = results.final()
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

    def _row_loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dlr_targeted_loss(logits, y, target)

    def _runs(self, num_classes: int) -> int:
        return min(self.n_target_classes, num_classes - 1) * self.n_restarts

    def _plan(self, clean_logits: torch.Tensor) -> list[int | None]:
        # rank 0 is the predicted class (= y for the samples attacked); targets are ranks 1..n
        return list(range(1, min(self.n_target_classes, clean_logits.shape[1] - 1) + 1))
