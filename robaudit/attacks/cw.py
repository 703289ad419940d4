"""C&W-ℓ2 — Carlini & Wagner, *Towards Evaluating the Robustness of Neural Networks*
(IEEE S&P 2017), the untargeted ℓ2 attack.

A minimal-perturbation attack. With the change of variables x' = (tanh(w)+1)/2 (so x' stays in
[0,1] without clipping) it minimises, by Adam on w,

    ‖x' − x‖₂² + c · max(Z_y(x') − max_{i≠y} Z_i(x'), −κ)

(the paper's f₆ for an untargeted attack: the second term stops pulling once the best other logit
beats the true one by κ), and a per-sample binary search over c finds, for each sample, the
smallest c that still gives an adversarial example (c ×10 until one succeeds, then bisection). The
smallest ℓ2 perturbation seen over all iterates of all search steps is kept per sample.

A search step counts as a success for c when its last evaluated iterate is adversarial (the
paper's "smallest c for which the solution x* has f(x*) ≤ 0"); counting any iterate instead lets
Adam's first steps — normalised, so full-size even for a tiny c — cross the boundary along a
sign-like direction and drive c down to useless values (measured: 1.29× the exact minimum on an
affine model instead of 1.02×).

Norm: ℓ2 only. Defaults: ``binary_search_steps=9``, ``max_iterations=100`` (the paper uses 10,000;
raise it for a final evaluation), ``learning_rate=0.01`` (Adam), ``initial_const=1e-3`` (the
paper's initial c), ``confidence=0`` (κ), ``abort_early=False``. ``abort_early=True`` is the
authors' code's rule (a search step stops when the batch's summed objective has not improved by
0.01% over max_iterations/10 iterations); it is off by default because with 100 iterations the
check falls inside Adam's initial transient and ends search steps early (measured: 1.20× the exact
minimum instead of 1.02×). Cost: 1 forward + 1 backward of the batch per iteration,
binary_search_steps × max_iterations iterations.

Under a threat model, ``_perturb`` returns the smallest adversarial example found; the base then
projects it onto the ε-ball, so it counts as a success only when its norm is within ε (a C&W
failure at ε means "no adversarial example of norm ≤ ε found", not "projection of a bigger one").
:meth:`CarliniWagnerL2.minimal_perturbation` gives the per-sample minimal norms directly.

    >>> CarliniWagnerL2(max_iterations=100).run(model, x, y, ThreatModel(Norm.L2, 0.5))
    >>> x_adv, norms = CarliniWagnerL2().minimal_perturbation(model, x, y)   # norms: inf if none
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..geometry.margin import margin
from ..threat import Norm, ThreatModel
from ._minimal import eval_mode
from .base import ATTACKS, Attack, input_gradient

__all__ = ["CarliniWagnerL2"]

_UPPER_UNSET = 1e10  # "no successful c yet" (the authors' code uses the same sentinel)


@ATTACKS.register("cw-l2")
@dataclass
class CarliniWagnerL2(Attack):
    """Carlini & Wagner, *Towards Evaluating the Robustness of Neural Networks* (S&P 2017), ℓ2.

    binary_search_steps: outer steps of the per-sample search over c (9); max_iterations: Adam
    steps per search step (100; the paper 10,000); learning_rate: Adam step on w (0.01);
    initial_const: first c (1e-3); confidence: κ (0); abort_early: stop a search step once the
    batch objective stalls (False).

        >>> CarliniWagnerL2().minimal_perturbation(model, x, y)  # (x_adv, ℓ2 norms; inf if none)
    """

    name = "cw-l2"
    per_sample_rng = True
    norms = (Norm.L2,)
    binary_search_steps: int = 9
    max_iterations: int = 100
    learning_rate: float = 0.01
    initial_const: float = 1e-3
    confidence: float = 0.0
    abort_early: bool = False

    def __post_init__(self) -> None:
        if self.binary_search_steps < 1 or self.max_iterations < 1:
            raise UsageError(f"{self.name}: binary_search_steps and max_iterations must be >= 1")
        if not (self.learning_rate > 0 and self.initial_const > 0 and self.confidence >= 0):
            raise UsageError(f"{self.name}: learning_rate and initial_const must be > 0, confidence >= 0")
        self.last_consts: list[torch.Tensor] = []  # c per sample at each search step (diagnostics)

    # -- the search -----------------------------------------------------------------------------
    def _search(self, model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(smallest adversarial example per sample or x, its ℓ2 norm or inf)."""
        B = x.shape[0]
        dt, dev = x.dtype, x.device
        shape1 = (-1,) + (1,) * (x.dim() - 1)
        kappa = float(self.confidence)
        # tanh-space start: x' = (tanh(w0)+1)/2 ≈ x (|x'−x| ≤ ~1e-6 where x hits 0 or 1)
        lim = 1 - 1e-6
        w0 = torch.atanh((2 * x - 1).clamp(-lim, lim))

        const = torch.full((B,), float(self.initial_const), dtype=dt, device=dev)
        lower = torch.zeros(B, dtype=dt, device=dev)
        upper = torch.full((B,), _UPPER_UNSET, dtype=dt, device=dev)
        best_norm = torch.full((B,), float("inf"), dtype=dt, device=dev)
        best_adv = x.clone()
        self.last_consts = []
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        check_every = max(1, self.max_iterations // 10)
        repeat = self.binary_search_steps >= 10  # the authors' "last step at the upper bound"

        for step in range(self.binary_search_steps):
            if repeat and step == self.binary_search_steps - 1:
                const = torch.where(upper < _UPPER_UNSET, upper, const)
            self.last_consts.append(const.clone())
            c = const.detach()

            def objective_f(logits: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
                return c * margin(logits, yy).clamp(min=-kappa)  # noqa: B023 - called within this iteration

            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            succeeded = torch.zeros(B, dtype=torch.bool, device=dev)
            prev = float("inf")
            for it in range(self.max_iterations):
                t = torch.tanh(w)
                x_adv = (t + 1) / 2
                f_val, logits, g_f = input_gradient(model, x_adv, y, objective_f, self.counter)
                diff = x_adv - x
                dist2 = diff.flatten(1).pow(2).sum(1)
                # bookkeeping at this iterate (its logits come from the same forward)
                z = logits.clone()
                z.scatter_add_(1, y[:, None], torch.full_like(z[:, :1], kappa))
                adv = z.argmax(1) != y
                succeeded = adv  # the search step's outcome: its last evaluated iterate
                dist = dist2.sqrt()
                better = adv & (dist < best_norm)
                best_norm = torch.where(better, dist, best_norm)
                best_adv = torch.where(better.view(shape1), x_adv, best_adv)
                if self.abort_early and it % check_every == 0:
                    total = float((dist2 + f_val).sum())
                    if total > prev - 1e-4 * abs(prev):
                        break
                    prev = total
                # ∂/∂w of ‖x'−x‖² + c·f(x'), with ∂x'/∂w = (1 − tanh²w)/2; then one Adam step
                grad = (2 * diff + g_f) * (1 - t * t) / 2
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * grad * grad
                m_hat = m / (1 - beta1 ** (it + 1))
                v_hat = v / (1 - beta2 ** (it + 1))
                w = w - self.learning_rate * m_hat / (v_hat.sqrt() + adam_eps)

            # per-sample binary search on c
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper < _UPPER_UNSET * 0.1, (lower + upper) / 2, const * 10)
        return best_adv, best_norm

    def minimal_perturbation(self, model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the smallest adversarial example found and its ℓ2 norm (x and inf where
        none was found). The model's mode is handled as in :meth:`run`."""
        with eval_mode(model):
            return self._search(model, x.detach(), y)

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        best_adv, _ = self._search(model, x, y)
        return best_adv
