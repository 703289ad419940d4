"""FAB-T — Croce & Hein, *Minimally distorted adversarial examples with a fast adaptive boundary
attack* (ICML 2020), targeted version, as in AutoAttack's standard recipe.

FAB looks for the *smallest* perturbation that changes the class. At the current point x⁽ⁱ⁾ it
linearizes the decision boundary between the true class y and a target t,
``g(z) = (Z_t − Z_y)(x⁽ⁱ⁾) + ∇(Z_t − Z_y)(x⁽ⁱ⁾)ᵀ(z − x⁽ⁱ⁾) = 0``, and computes the minimal ℓp
step onto that hyperplane *within the box [0,1]^d* from both x⁽ⁱ⁾ (δ⁽ⁱ⁾) and the original x
(δ_orig) — :func:`boundary_projection`, exact and batched. The next point is the biased convex
combination

    x⁽ⁱ⁺¹⁾ = clip₀¹((1 − α)(x⁽ⁱ⁾ + η δ⁽ⁱ⁾) + α (x + η δ_orig)),  α = min(‖δ⁽ⁱ⁾‖ / (‖δ⁽ⁱ⁾‖ + ‖δ_orig‖), α_max),

(η > 1 overshoots to land on the other side). When x⁽ⁱ⁺¹⁾ is misclassified it is recorded if it is
the smallest so far and pulled back towards x: x⁽ⁱ⁺¹⁾ ← x + β (x⁽ⁱ⁺¹⁾ − x). On an affine model the
linearization is exact, so the first step already lands on the minimal perturbation (× η).

One iteration costs one forward + one backward of the batch (the gradient of Z_t − Z_y) and one
forward to test the new point. The targeted version needs no full Jacobian: one scalar per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import rng
from ..errors import UsageError
from ..threat import Norm, ThreatModel
from ._runs import RunResults, RunSchedule, resolve_stagger, run_starts
from .base import ATTACKS, Attack, _view, input_gradient, lp_norm, predict

__all__ = ["FABTargeted", "boundary_projection"]

_BIG = 1e30  # breakpoint of a coordinate the hyperplane does not depend on (never reached)


def boundary_projection(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    """δ of minimal ℓ∞ or ℓ2 norm with ``w·(p + δ) = b`` and ``p + δ ∈ [0,1]^d``, per row.

    points, w: [B, d]; b: [B]. Where the hyperplane is out of the box's reach, the move that gets
    closest to it (every coordinate pushed to its bound). Exact: along the minimizer's path
    ``δ_i = sign(w_i)·min(t·s_i, room_i)`` (s_i = 1 for ℓ∞, |w_i| for ℓ2; room_i the distance to the
    box in that direction) the achieved ``w·δ`` is piecewise linear and nondecreasing in t, so the
    answer is read off sorted breakpoints with cumulative sums — no iterative search."""
    c = b - (w * points).sum(dim=1)  # required change of w·z
    sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w = w * sign[:, None]
    c = c * sign
    aw = w.abs()
    room = torch.where(w > 0, 1.0 - points, points)  # distance to the box along sign(w_i); unused where w_i = 0
    active = aw > 0
    if norm is Norm.LINF:
        scale = torch.ones_like(aw)
        t = torch.where(active, room, _BIG)
    else:
        scale = aw
        t = torch.where(active, room / torch.where(active, aw, 1.0), _BIG)
    t_sorted, order = t.sort(dim=1)
    saturated = (aw * room).gather(1, order)  # a coordinate's contribution once it hits the box
    slope = (aw * scale).gather(1, order)  # its contribution per unit t before that
    cum_sat = saturated.cumsum(dim=1)
    slope_left = slope.sum(dim=1, keepdim=True) - slope.cumsum(dim=1)
    reach = cum_sat + t_sorted * slope_left  # w·δ achieved at each breakpoint
    k = (reach < c[:, None]).sum(dim=1)  # first breakpoint that reaches c
    d = w.shape[1]
    feasible = k < d
    kk = k.clamp(max=d - 1)[:, None]
    prev = (kk - 1).clamp_min(0)
    first = kk == 0
    sat_before = torch.where(first, torch.zeros_like(c[:, None]), cum_sat.gather(1, prev))
    slope_before = torch.where(first, slope.sum(dim=1, keepdim=True), slope_left.gather(1, prev))
    t_lo = torch.where(first, torch.zeros_like(c[:, None]), t_sorted.gather(1, prev))
    t_star = ((c[:, None] - sat_before) / slope_before.clamp_min(1e-30)).clamp(min=t_lo, max=t_sorted.gather(1, kk))
    t_star = torch.where(feasible[:, None], t_star, torch.full_like(t_star, _BIG))
    return torch.sign(w) * torch.minimum(t_star * scale, room)


@ATTACKS.register("fab-t")
@dataclass
class FABTargeted(Attack):
    """FAB-T — Croce & Hein, *Minimally distorted adversarial examples with a fast adaptive boundary
    attack* (ICML 2020), targeted, as in AutoAttack's standard version. Norms: ℓ∞, ℓ2.

    For each target t among the n_target_classes=9 highest-scoring other classes of the clean input
    (capped at K − 1), on the samples not yet broken within ε: n_restarts=1 runs (the first from x,
    later ones from a random point at distance ε/2) of n_iter=100 FAB steps towards the boundary
    between y and t, keeping the smallest misclassified point. alpha_max=0.1 (largest weight of the
    step from the original point), eta=1.05 (overshoot past the linearized boundary), beta=0.9
    (backward step towards x after a success). Cost: up to n_target_classes · n_restarts · n_iter
    iterations of one forward + one backward and one forward.

        >>> FABTargeted(n_target_classes=9).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
    """

    name = "fab-t"
    _batch_rows = None  # rows of the batch given to run(): the default cap of a packed call
    per_sample_rng = True
    norms = (Norm.LINF, Norm.L2)
    n_iter: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    # ticks between the starts of a sample's runs packed into shared model calls (as APGD's)
    stagger: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_iter < 1 or self.n_restarts < 1 or self.n_target_classes < 1:
            raise UsageError(f"{self.name}: n_iter, n_restarts and n_target_classes must be >= 1")
        if not 0.0 <= self.alpha_max <= 1.0:
            raise UsageError(f"{self.name}: alpha_max must be in [0, 1], got {self.alpha_max}")
        if not self.eta >= 1.0:
            raise UsageError(f"{self.name}: eta (overshoot) must be >= 1, got {self.eta}")
        if not 0.0 < self.beta < 1.0:
            raise UsageError(f"{self.name}: beta (backward step) must be in (0, 1), got {self.beta}")

    def max_passes(self, num_classes: int) -> tuple[int, int]:
        # per run and iteration a gradient and a forward at the new point; the clean forward and
        # run()'s success check
        steps = min(self.n_target_classes, num_classes - 1) * self.n_restarts * self.n_iter
        return 2 * steps + 2, steps

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        """Every (target, restart) run of every clean-correct sample, packed by
        :class:`~robaudit.attacks._runs.RunSchedule`: a run is cancelled once an earlier run of its
        sample is within ε (AutoAttack would not have started it), and the answer is the first run
        within ε's smallest point, else the smallest point over all runs — what the runs one after
        the other give. Run q of a sample draws its random start (restarts > 0) from that sample's
        stream forked for (target, restart), "fab:<rank>:<restart>" — what the runs one after the other draw."""
        clean_logits = predict(model, x, self.counter)
        if clean_logits.shape[1] < 2:
            raise UsageError(f"attack {self.name!r} needs a model with at least 2 classes")
        self._batch_rows = x.shape[0]  # packed calls never take more rows than the batch given
        best = x.clone()
        todo = (clean_logits.argmax(1) == y).nonzero().squeeze(1)  # misclassified: x itself
        if todo.numel() == 0:
            return best
        ranks = range(1, min(self.n_target_classes, clean_logits.shape[1] - 1) + 1)
        runs = [(rank, r) for rank in ranks for r in range(self.n_restarts)]
        xs, ys = x[todo], y[todo]
        order = clean_logits[todo].argsort(dim=1, descending=True)
        targets = torch.stack([order[:, rank] for rank, _ in runs], dim=1)
        restart = torch.tensor([r for _, r in runs], dtype=torch.long)
        gen = rng.rows(generator, todo)
        schedule = RunSchedule(xs.shape[0], len(runs), resolve_stagger(self.stagger, self.n_iter))
        results = RunResults(xs, len(runs))
        st: dict | None = None
        s_cpu = q_cpu = it_cpu = torch.zeros(0, dtype=torch.long)
        dev = x.device
        while not bool(schedule.finished.all()):
            new_s, new_q = schedule.starts()
            if new_s.numel():
                sd, qd = new_s.to(dev), new_q.to(dev)
                x0 = xs[sd]
                x1 = x0.clone()
                again = restart[new_q] > 0
                if bool(again.any()):
                    rows_ = again.nonzero().squeeze(1)
                    x1[rows_.to(dev)] = run_starts(
                        lambda z, g: self._start(z, threat, g),
                        x0[rows_.to(dev)],
                        new_s[rows_],
                        new_q[rows_],
                        gen,
                        fork=lambda q: "fab:{}:{}".format(*runs[q]),
                    )
                fresh = {
                    "x0": x0,
                    "y": ys[sd],
                    "target": targets[sd, qd],
                    "x1": x1,
                    "best": x0.clone(),
                    "best_norm": torch.full((x0.shape[0],), float("inf"), device=dev, dtype=x.dtype),
                }
                st = fresh if st is None else {k: torch.cat([st[k], fresh[k]]) for k in st}
                s_cpu, q_cpu = torch.cat([s_cpu, new_s]), torch.cat([q_cpu, new_q])
                it_cpu = torch.cat([it_cpu, torch.zeros_like(new_s)])
            assert st is not None  # every running row has its state once started
            fixed = self._iterate(model, st, threat.norm)
            it_cpu = it_cpu + 1
            ok = st["best_norm"] <= threat.eps
            done = it_cpu >= self.n_iter
            if self.stop_at_fixed_points:
                done |= fixed.cpu()  # their later iterations would repeat this one exactly
            finished, removed = schedule.end_tick(s_cpu, q_cpu, ok.cpu(), done)
            if bool(finished.any()):
                f = finished.to(dev)
                results.add(s_cpu[finished].to(dev), q_cpu[finished].to(dev), st["best"][f], ok[f], st["best_norm"][f])
            if bool(removed.any()):
                keep = ~removed
                kd = keep.to(dev)
                st = {k: v[kd] for k, v in st.items()} if bool(keep.any()) else None
                s_cpu, q_cpu, it_cpu = s_cpu[keep], q_cpu[keep], it_cpu[keep]
            if self.progress is not None:
                self._report(schedule.fraction(s_cpu, it_cpu.double() / self.n_iter))
        best[todo] = results.final()
        return best

    def _iterate(self, model, st: dict, norm: Norm) -> torch.Tensor:
        """One FAB iteration of every row of ``st`` (x0, y, target, x1, best, best_norm), in
        model calls of at most ``max_rows`` rows: the gradient of Z_t − Z_y at x1, the step onto
        the linearized boundary (from x1 and from x0), a forward at the new point.

        Returns the rows at a fixed point: a zero input gradient at x1 (the step then only pulls
        x1 towards x by α_max) and a new point bitwise equal to x1, correctly classified. For a
        deterministic model every later iteration of such a row computes exactly this one again
        (same point, same gradient, same test), so its run's answer is already final."""
        x, x1, y, target = st["x0"], st["x1"], st["y"], st["target"]
        n = x.shape[0]
        chunk = max(1, int(self.max_rows or self._batch_rows or n))
        df_parts, dg_parts = [], []
        for s in range(0, n, chunk):
            t = target[s : s + chunk]

            def diff(logits, yy, t=t):  # Z_t − Z_y: > 0 once the target beats the true class
                return logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, yy[:, None]).squeeze(1)

            d, _, g = input_gradient(model, x1[s : s + chunk], y[s : s + chunk], diff, self.counter)
            df_parts.append(d)
            dg_parts.append(g)
        df, dg = torch.cat(df_parts), torch.cat(dg_parts)
        x0f = x.flatten(1)
        w = dg.flatten(1)
        b = (w * x1.flatten(1)).sum(dim=1) - df  # the linearized boundary: w·z = b
        step = boundary_projection(torch.cat((x1.flatten(1), x0f)), torch.cat((w, w)), torch.cat((b, b)), norm)
        d1, d2 = step[:n].view_as(x), step[n:].view_as(x)
        a1 = lp_norm(d1, norm).clamp_min(1e-8)
        a2 = lp_norm(d2, norm).clamp_min(1e-8)
        alpha = _view((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), x)
        x1 = ((1 - alpha) * (x1 + self.eta * d1) + alpha * (x + self.eta * d2)).clamp(0.0, 1.0)
        wrong = torch.cat([predict(model, x1[s : s + chunk], self.counter).argmax(1) for s in range(0, n, chunk)]) != y
        fixed = (w == 0).all(dim=1) & ~wrong
        if bool(fixed.any()):
            fixed &= (x1 == st["x1"]).flatten(1).all(dim=1)
        size = lp_norm(x1 - x, norm)
        improved = wrong & (size < st["best_norm"])
        st["best"] = torch.where(_view(improved, x), x1, st["best"])
        st["best_norm"] = torch.where(improved, size, st["best_norm"])
        st["x1"] = torch.where(_view(wrong, x), x + self.beta * (x1 - x), x1)
        return fixed

    def minimal_run(
        self,
        model,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor,
        threat: ThreatModel,
        random_start: bool = False,
        generator=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run towards ``target``: (the smallest misclassified point found, its ‖δ‖ in the
        threat norm; x and inf where none was found). ε only sets the random start's radius (ε/2)."""
        x1 = self._start(x, threat, generator) if random_start else x.clone()
        st = {
            "x0": x,
            "y": y,
            "target": target,
            "x1": x1,
            "best": x.clone(),
            "best_norm": torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype),
        }
        for it in range(self.n_iter):
            self._iterate(model, st, threat.norm)
            self._report((it + 1) / self.n_iter)
        return st["best"], st["best_norm"]

    @staticmethod
    def _start(x: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        """A random point at distance ε/2 from x (ℓ∞: scaled uniform noise; ℓ2: scaled Gaussian),
        clipped. ``generator``: a SampleRNG (one stream per row) or a torch.Generator."""
        if threat.norm is Norm.LINF:
            t = 2 * rng.uniform(x.shape, generator, x.device, x.dtype) - 1
        else:
            t = rng.normal(x.shape, generator, x.device, x.dtype)
        t = t / _view(lp_norm(t, threat.norm).clamp_min(1e-12), t)
        return (x + 0.5 * threat.eps * t).clamp(0.0, 1.0)
