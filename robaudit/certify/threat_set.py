"""The threat set of a certificate, and the specification matrices of the margins.

A :class:`ThreatSet` is the ε-ball of ``norm`` around each image intersected with the [0,1] box,
in pixel space. Its :meth:`~ThreatSet.concretize` gives the exact minimum of a linear function over
the set for ℓ∞ (the set is a box) and a sound Lagrangian-dual lower bound for ℓ2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ThreatSet", "margin_spec", "other_classes", "Bounds"]

Bounds = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ThreatSet:
    """The ε-ball of ``norm`` ('linf' or 'l2') around each image of ``x`` [B, *shape], intersected
    with the [0,1] box. ``eps``: a float or one radius per sample [B] (pixel scale)."""

    x: torch.Tensor
    eps: float | torch.Tensor
    norm: str = "linf"

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be linf or l2, got {self.norm!r}")
        eps = self.eps
        if not isinstance(eps, torch.Tensor):
            eps = torch.full((self.x.shape[0],), float(eps), dtype=self.x.dtype, device=self.x.device)
        self.eps_t = eps.to(self.x.dtype).reshape(-1, *([1] * (self.x.ndim - 1)))
        self.lo = (self.x - self.eps_t).clamp(min=0.0)
        self.hi = (self.x + self.eps_t).clamp(max=1.0)  # an ℓ2 ball lies in the ℓ∞ ball of the same ε

    def box(self) -> Bounds:
        return self.lo, self.hi

    def take(self, rows: torch.Tensor) -> ThreatSet:
        """The threat sets of the samples ``rows`` (repeats allowed), in that order."""
        return ThreatSet(self.x[rows], self.eps_t.reshape(-1)[rows], self.norm)

    def concretize(self, A: torch.Tensor) -> torch.Tensor:
        """min over the set of Σ A·x' for each row: A [B, K, *shape] → [B, K]."""
        lo, hi = self.lo[:, None], self.hi[:, None]
        box = (A.clamp(min=0) * lo + A.clamp(max=0) * hi).flatten(2).sum(-1)
        if self.norm == "linf":
            return box  # the ℓ∞ ball ∩ box is a box: exact
        return torch.maximum(box, self._l2_dual(A))

    def _l2_dual(self, A: torch.Tensor, points: int = 12, rounds: int = 4) -> torch.Tensor:
        """A lower bound of min Σ a·x' over {‖x' − x‖₂ ≤ ε} ∩ [0,1] by Lagrangian duality: for any
        λ > 0, g(λ) = min_{x' in box} a·x' + (λ/2)(‖x' − x‖² − ε²) ≤ the minimum (weak duality);
        the inner minimum is separable (x'_i = clip(x_i − a_i/λ, lo_i, hi_i)). g is concave in λ;
        λ is searched on grids of log λ around ‖a‖/ε (the ball's own optimum), each round a finer
        grid around the best point so far. Every g(λ) is sound; the best one is returned."""
        B, K = A.shape[:2]
        a = A.flatten(2)
        x, lo, hi = self.x.flatten(1)[:, None], self.lo.flatten(1)[:, None], self.hi.flatten(1)[:, None]
        eps = self.eps_t.flatten()[:, None]
        norm_a = a.norm(dim=-1).clamp(min=1e-30)
        centre = torch.log(norm_a / eps.clamp(min=1e-30))

        def g(log_lam: torch.Tensor) -> torch.Tensor:
            lam = log_lam.exp()
            xp = torch.minimum(torch.maximum(x - a / lam[..., None], lo), hi)
            d = xp - x
            return (a * xp).sum(-1) + 0.5 * lam * ((d * d).sum(-1) - eps * eps)

        best = torch.full((B, K), float("-inf"), dtype=A.dtype, device=A.device)
        best_at, width = centre, 12.0
        for _ in range(rounds):
            step, around = 2 * width / (points - 1), best_at
            for k in range(points):
                t = around - width + k * step
                value = g(t)
                better = value > best
                best = torch.where(better, value, best)
                best_at = torch.where(better, t, best_at)
            width = step
        return best.reshape(B, K)


def margin_spec(y: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """C [B, num_classes − 1, num_classes]: rows e_y − e_j for every j ≠ y, in increasing j."""
    B = y.shape[0]
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    C = eye[y][:, None, :] - eye[None]  # [B, C, C]: row j = e_y − e_j
    keep = torch.ones(B, num_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(B, device=y.device), y] = False
    return C[keep].reshape(B, num_classes - 1, num_classes)


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, num_classes − 1]: the class j of each :func:`margin_spec` row."""
    B = y.shape[0]
    j = torch.arange(num_classes, device=y.device).expand(B, num_classes)
    return j[j != y[:, None]].reshape(B, num_classes - 1)
