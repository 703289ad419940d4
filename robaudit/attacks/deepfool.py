"""DeepFool — Moosavi-Dezfooli, Fawzi & Frossard, *DeepFool: a simple and accurate method to fool
deep neural networks* (CVPR 2016), multi-class version (Algorithm 2), ℓ2 and ℓ∞.

A minimal-perturbation attack. At each iteration the classifier is linearised around the current
point; for each candidate class k ≠ y, f_k = Z_k − Z_y and w_k = ∇f_k, and the step goes to the
nearest linearised boundary l = argmin_k |f_k|/‖w_k‖_q (q the dual norm):

    ℓ2:  r = |f_l| / ‖w_l‖₂² · w_l            ℓ∞:  r = |f_l| / ‖w_l‖₁ · sign(w_l)

The steps accumulate into r_tot and the iterate is x + (1+overshoot)·r_tot, clipped to [0,1];
it stops per sample as soon as the label changes. On an affine classifier the first step lands
exactly on the boundary (r is the exact minimal perturbation); the overshoot carries it across.
The authors' code steps with |f_l| + 1e-4 so that the iterate cannot converge onto the boundary
from inside (an exact logit tie, which argmax resolves to y, or steps partly cut off by the [0,1]
clip: both stall DeepFool at "margin 0" for ever). Here the first step uses |f_l| alone, so on an
affine model the returned norm is exactly (1+overshoot) × the minimum, and the + 1e-4 applies
from the second step on, only to samples the first step did not fool.

Candidates are the true class and the num_candidates − 1 other classes with the highest clean
logits. Defaults: ``num_candidates=10``, ``overshoot=0.02``, ``max_iter=50``. Cost per iteration:
1 forward + (num_candidates − 1) backwards of the samples still unfooled (one backward per
candidate difference f_k, summed over the batch: the "sum trick", each sample's own gradient),
plus 1 forward for the final label check.

Under a threat model, ``_perturb`` returns DeepFool's point; the base projects it onto the ε-ball,
so it counts only if its norm is within ε. :func:`minimal_perturbation` gives the per-sample norms
and :func:`refine_minimal_perturbation` tightens them by bisection with a per-sample-ε PGD.

    >>> DeepFool().run(model, x, y, ThreatModel(Norm.L2, 0.5))
    >>> x_adv, norms = DeepFool().minimal_perturbation(model, x, y, Norm.LINF)
    >>> radii = refine_minimal_perturbation(model, x, y, Norm.LINF, norms, lambda: PGD(steps=20))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from ..geometry.passes import record
from ..rng import rows
from ..threat import Norm, ThreatModel
from ._minimal import eval_mode, pgd_eps
from .base import ATTACKS, LOSSES, Attack, PassCounter, lp_norm, predict
from .pgd import PGD

__all__ = ["DeepFool", "refine_minimal_perturbation"]

_XI = 1e-4  # added to |f_l| from the second step on (the authors' code adds it at every step)


def _candidate_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cand: torch.Tensor | None,
    num_candidates: int,
    counter: PassCounter | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """One forward, then one backward per candidate difference f_k = Z_{cand_k} − Z_y.

    Returns (logits [B,K], f [B,C] or None, grads [B,C,...] or None, cand [B,C]) with C the number
    of other candidate classes; f and grads are None when every sample is already fooled (no
    backward is then made). ``cand`` (other classes, per sample) is chosen from these logits when
    None. Counted as 1 forward + C backwards of the batch.
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        if cand is None:
            masked = logits.detach().scatter(1, y[:, None], float("-inf"))
            cand = masked.topk(min(num_candidates, logits.shape[1]) - 1, dim=1).indices
        if counter is not None:
            counter.add(x.shape[0], backward=False)
        if not (logits.detach().argmax(1) == y).any():
            return logits.detach(), None, None, cand
        z_y = logits.gather(1, y[:, None])
        f = logits.gather(1, cand) - z_y  # [B, C]
        grads = []
        C = cand.shape[1]
        for k in range(C):
            (g,) = torch.autograd.grad(f[:, k].sum(), xg, retain_graph=k < C - 1)
            grads.append(g)
            record("grad", x.shape[0])
            if counter is not None:
                counter.backward += x.shape[0]
    return logits.detach(), f.detach(), torch.stack(grads, dim=1), cand


@ATTACKS.register("deepfool")
@dataclass
class DeepFool(Attack):
    """Moosavi-Dezfooli, Fawzi & Frossard, *DeepFool* (CVPR 2016), ℓ2 and ℓ∞.

    num_candidates: classes considered, the true one included (10, top by clean logit);
    overshoot: the total step is scaled by 1+overshoot (0.02); max_iter: linearisation steps (50).
    Per iteration: 1 forward + (num_candidates − 1) backwards of the unfooled samples.

        >>> DeepFool().minimal_perturbation(model, x, y, Norm.L2)  # (x_adv, norms; inf if none)
    """

    name = "deepfool"
    per_sample_rng = True
    num_candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50

    def __post_init__(self) -> None:
        if self.num_candidates < 2 or self.max_iter < 1 or self.overshoot < 0:
            raise UsageError(f"{self.name}: need num_candidates >= 2, max_iter >= 1, overshoot >= 0")

    def _deepfool(
        self, model, x: torch.Tensor, y: torch.Tensor, norm: Norm
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(last iterate per sample, fooled?, iterations used per sample)."""
        B = x.shape[0]
        shape1 = (-1,) + (1,) * (x.dim() - 1)
        x_cur = x.clone()
        r_tot = torch.zeros_like(x)
        fooled = torch.zeros(B, dtype=torch.bool, device=x.device)
        iters = torch.zeros(B, dtype=torch.long, device=x.device)
        active = torch.arange(B, device=x.device)
        cand_all: torch.Tensor | None = None
        for it in range(self.max_iter + 1):
            if active.numel() == 0:
                break
            if it == self.max_iter:  # final label check of the last iterate, no gradient
                logits = predict(model, x_cur[active], self.counter)
                fooled[active] = logits.argmax(1) != y[active]
                break
            ya = y[active]
            logits, f, grads, cand = _candidate_gradients(
                model,
                x_cur[active],
                ya,
                None if cand_all is None else cand_all[active],
                self.num_candidates,
                self.counter,
            )
            if cand_all is None:
                cand_all = cand
            now = logits.argmax(1) != ya
            fooled[active[now]] = True
            if f is None:
                break
            assert grads is not None  # with f: _candidate_gradients returns both or neither
            keep = ~now
            idx, f, grads = active[keep], f[keep], grads[keep]
            if idx.numel() == 0:
                active = idx
                continue
            flat = grads.flatten(2)  # [A, C, d]
            wn = flat.abs().sum(2) if norm is Norm.LINF else flat.norm(p=2, dim=2)
            dist = torch.where(wn > 0, f.abs() / wn.clamp_min(1e-30), torch.full_like(wn, float("inf")))
            nearest = dist.argmin(1)
            f_l = f.gather(1, nearest[:, None]).squeeze(1).abs()
            if it > 0:  # see the module docstring: the authors' +1e-4, from the second step on
                f_l = f_l + _XI
            wn_l = wn.gather(1, nearest[:, None]).squeeze(1)
            w_l = grads[torch.arange(idx.numel(), device=x.device), nearest]
            ok = torch.isfinite(dist.gather(1, nearest[:, None]).squeeze(1))
            if norm is Norm.LINF:
                scale = torch.where(ok, f_l / wn_l.clamp_min(1e-30), torch.zeros_like(f_l))
                r = scale.view(shape1) * w_l.sign()
            else:
                scale = torch.where(ok, f_l / wn_l.clamp_min(1e-30).pow(2), torch.zeros_like(f_l))
                r = scale.view(shape1) * w_l
            r_tot[idx] = r_tot[idx] + r
            x_cur[idx] = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(0.0, 1.0)
            iters[idx] += 1
            active = idx
        return x_cur, fooled, iters

    def minimal_perturbation(
        self, model, x: torch.Tensor, y: torch.Tensor, norm: Norm | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, DeepFool's adversarial example and its ℓp norm (x and inf where DeepFool
        did not change the label within max_iter; 0 for a sample that is already misclassified)."""
        norm = Norm.parse(norm)
        with eval_mode(model):
            x = x.detach()
            x_last, fooled, _ = self._deepfool(model, x, y, norm)
        shape1 = (-1,) + (1,) * (x.dim() - 1)
        x_adv = torch.where(fooled.view(shape1), x_last, x)
        norms = torch.where(fooled, lp_norm(x_adv - x, norm), torch.full_like(fooled, float("inf"), dtype=x.dtype))
        return x_adv, norms

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        x_last, _, _ = self._deepfool(model, x, y, threat.norm)
        return x_last


def refine_minimal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str,
    upper: torch.Tensor,
    attack_factory: Callable[[], PGD] | None = None,
    steps: int = 8,
    generator=None,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """Tighten per-sample minimal radii by bisection on ε ∈ [0, upper_i] with a per-sample-ε PGD.

    ``upper``: a radius at which each sample is known to be adversarial (DeepFool's or C&W's norms;
    inf or 0 entries are returned unchanged). ``attack_factory`` builds the PGD whose settings are
    used (steps, step-size rule, restarts, random start, loss; default ``PGD()``); ``steps``:
    bisection steps. Each step runs that PGD once on all remaining samples at once, every sample
    at its own ε_i = (lo_i+hi_i)/2: success sets hi_i to the norm of the adversarial point found
    (≤ ε_i), failure sets lo_i = ε_i. Returns hi, so the result never exceeds ``upper``; a PGD
    miss leaves it unchanged, so the refined radius is an upper bound on the true minimum like
    ``upper`` itself. Passes are added to ``counter`` (default: the factory's attack's counter).

        >>> _, ub = DeepFool().minimal_perturbation(model, x, y, Norm.LINF)
        >>> radii = refine_minimal_perturbation(model, x, y, Norm.LINF, ub, lambda: PGD(steps=20))
    """
    norm = Norm.parse(norm)
    attack = attack_factory() if attack_factory is not None else PGD()
    if not isinstance(attack, PGD):
        raise UsageError("refine_minimal_perturbation: attack_factory must build a PGD-family attack (pgd, bim)")
    if steps < 0:
        raise UsageError("refine_minimal_perturbation: steps must be >= 0")
    counter = counter if counter is not None else attack.counter
    rel_step = attack._alpha(ThreatModel(norm, 1.0))  # PGD's own step rule, as a fraction of ε
    x = x.detach()
    hi = upper.detach().to(dtype=x.dtype, device=x.device).clone()
    lo = torch.zeros_like(hi)
    todo = torch.isfinite(hi) & (hi > 0)
    with eval_mode(model):
        for _ in range(steps):
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            mid = (lo[idx] + hi[idx]) / 2
            xs = x[idx]
            x_adv, found = pgd_eps(
                model,
                xs,
                y[idx],
                norm,
                mid,
                steps=attack.steps,
                rel_step=rel_step,
                restarts=attack.restarts,
                random_start=attack.random_start,
                loss_fn=LOSSES[attack.loss],
                counter=counter,
                generator=rows(generator, idx),
            )
            reached = torch.minimum(lp_norm(x_adv - xs, norm), mid)
            hi[idx] = torch.where(found, torch.minimum(hi[idx], reached), hi[idx])
            lo[idx] = torch.minimum(torch.where(found, lo[idx], mid), hi[idx])
    return hi
