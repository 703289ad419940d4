"""Independent runs of each sample packed into shared model calls (APGD's restarts and targets, FAB-T's targets).

AutoAttack runs APGD-T's 9 targets (and FAB-T's) one after the other, each on the samples the
earlier ones left robust. At the tail of a cascade that is a few dozen samples per call, 9 × 100
times: per-call overhead dominates, on a GPU the device idles. The runs of a sample are
independent (each has its own start and target), so they can share model calls. This module
schedules them, **per sample**, so that a sample's result and its pass count don't depend on the
other samples of the batch:

* run q + 1 of a sample starts ``stagger`` ticks after its run q started (``None``: once run q
  ended — one after the other, as AutoAttack; 0: all runs at once), unless a run of the sample
  has already succeeded;
* once run p of a sample succeeds, its later runs are cancelled (AutoAttack would not have
  started them) and its earlier runs go on (they take precedence if they succeed too);
* the sample's answer is that of AutoAttack's order: the point of its *first* successful run
  (lowest index), else the best-scoring point over all runs (lowest score, ties: lowest run).

Every tick evaluates all active rows (runs) in one model call (chunks of ``max_rows``), so a
packed run computes exactly what the run alone would (same start, same iterates), only sooner.
A smaller ``stagger`` costs passes on runs cancelled by an earlier run's success.
"""

from __future__ import annotations

import torch

from .. import rng

__all__ = ["RunSchedule", "RunResults", "resolve_stagger", "run_starts"]


def resolve_stagger(stagger: int | None, n_iter: int) -> int | None:
    """Ticks between the starts of a sample's runs. ``None`` (the default): APGD's first step-size
    checkpoint, ⌊0.22·n_iter⌋ (at least 1) — a sample broken within its first run's first
    ⌊0.22·n_iter⌋ iterations (most broken samples) never starts a second run, a robust one has up
    to ~5 runs going at once; 0: all runs at once; negative: one after the other (None returned)."""
    if stagger is None:
        return max(int(0.22 * n_iter), 1)
    return None if stagger < 0 else int(stagger)


def run_starts(
    start, x: torch.Tensor, samples: torch.Tensor, runs: torch.Tensor, generator, base: int = 0, fork=None
) -> torch.Tensor:
    """Random starts ``start(x_rows, generator)`` of runs ``runs`` of ``samples`` (``x``: their
    inputs, one row each). From a SampleRNG, run q's start is draw ``base + q`` of its sample's
    stream, or with ``fork`` (run → tag) the first draw of its sample's stream forked with
    ``fork(q)`` — whenever it starts (what the runs one after the other drew); from a
    torch.Generator, its next numbers."""
    if not rng.is_sample_rng(generator):
        return start(x, generator)
    out = torch.empty_like(x)
    for q in runs.unique().tolist():
        rows_ = (runs == q).nonzero().squeeze(1)
        r = rows_.to(x.device)
        streams = generator.subset(samples[rows_]).fork(fork(q)) if fork else generator.subset(samples[rows_], start=base + q)
        out[r] = start(x[r], streams)
    return out


class RunSchedule:
    """Which runs start at each tick, per sample (CPU bookkeeping, vectorized over samples).

    A tick evaluates every active row once; a run's first tick is its initial evaluation, each
    later tick one iteration."""

    def __init__(self, n_samples: int, n_runs: int, stagger: int | None) -> None:
        self.S, self.Q = int(n_samples), int(n_runs)
        self.stagger = stagger
        self.tick = 0
        self.next_run = torch.zeros(self.S, dtype=torch.long)
        self.first_ok = torch.full((self.S,), self.Q, dtype=torch.long)  # lowest run that succeeded
        self.active = torch.zeros(self.S, dtype=torch.long)
        self.newest_start = torch.zeros(self.S, dtype=torch.long)

    @property
    def finished(self) -> torch.Tensor:
        """[S] bool: no run going and none left to start."""
        return (self.active == 0) & ((self.next_run >= self.Q) | (self.first_ok < self.Q))

    def starts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, runs) starting at this tick (CPU long tensors)."""
        out_s, out_q = [], []
        for _ in range(self.Q):
            ready = self.active == 0
            if self.stagger is not None:
                ready = ready | (self.tick - self.newest_start >= self.stagger)
            can = ready & (self.next_run < self.Q) & (self.first_ok >= self.Q)
            if not bool(can.any()):
                break
            s = can.nonzero().squeeze(1)
            out_s.append(s)
            out_q.append(self.next_run[s].clone())
            self.next_run[s] += 1
            self.active[s] += 1
            self.newest_start[s] = self.tick
        if not out_s:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return torch.cat(out_s), torch.cat(out_q)

    def end_tick(
        self, samples: torch.Tensor, runs: torch.Tensor, ok: torch.Tensor, done: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """After a tick, given each row's sample, run and flags (CPU): ``ok`` (the run has
        succeeded) and ``done`` (the run is over). Returns (finished rows: their result counts,
        removed rows: finished or cancelled)."""
        if bool(ok.any()):
            self.first_ok.scatter_reduce_(0, samples[ok], runs[ok], reduce="amin")
        cancelled = runs > self.first_ok[samples]
        finished = done & ~cancelled
        removed = finished | cancelled
        if bool(removed.any()):
            self.active.index_add_(0, samples[removed], torch.full((int(removed.sum()),), -1, dtype=torch.long))
        self.tick += 1
        return finished, removed

    def fraction(self, samples: torch.Tensor, progress: torch.Tensor) -> float:
        """Share of the work done (0..1): a finished sample counts 1, another (runs ended + the
        active runs' ``progress`` in [0,1]) / runs."""
        per = (self.next_run - self.active).to(torch.float64)
        if samples.numel():
            per = per.index_add(0, samples, progress.to(torch.float64))
        per = torch.where(self.finished, torch.ones_like(per), (per / max(self.Q, 1)).clamp(max=1.0))
        return float(per.mean()) if self.S else 1.0


class RunResults:
    """Each sample's answer over its runs, in AutoAttack's order: the point of its lowest
    successful run, else the lowest score over all runs (ties: the lowest run; scores of +inf or
    NaN are never taken, the sample then keeps ``x``)."""

    def __init__(self, x: torch.Tensor, n_runs: int) -> None:
        S = x.shape[0]
        self.Q = int(n_runs)
        self.ok_point = x.clone()
        self.ok_run = torch.full((S,), self.Q, dtype=torch.long, device=x.device)
        self.best_point = x.clone()
        self.best_score = torch.full((S,), float("inf"), dtype=torch.float64, device=x.device)
        self.best_run = torch.full((S,), self.Q, dtype=torch.long, device=x.device)

    def add(
        self, samples: torch.Tensor, runs: torch.Tensor, points: torch.Tensor, ok: torch.Tensor, scores: torch.Tensor
    ) -> None:
        """Finished runs (all on the points' device). At most one successful run per sample may
        finish per call (the schedule cancels later runs of a sample once one succeeded)."""
        if bool(ok.any()):
            s, q = samples[ok], runs[ok]
            take = q < self.ok_run[s]
            self.ok_point[s[take]] = points[ok][take]
            self.ok_run[s[take]] = q[take]
        score = scores.to(torch.float64)
        finite = score < float("inf")  # NaN compares False too
        if not bool(finite.any()):
            return
        s, q, score, pts = samples[finite], runs[finite], score[finite], points[finite]
        # lexicographic minimum of (score, run) per sample over these rows and the current best
        lowest = self.best_score.scatter_reduce(0, s, score, reduce="amin")
        at_min = score == lowest[s]
        run_min = self.best_run.where(self.best_score == lowest, torch.full_like(self.best_run, self.Q))
        run_min = run_min.scatter_reduce(0, s[at_min], q[at_min], reduce="amin")
        win = at_min & (q == run_min[s])
        ws = s[win]
        self.best_point[ws] = pts[win]
        self.best_score[ws] = score[win]
        self.best_run[ws] = q[win]

    def final(self) -> torch.Tensor:
        """[S, ...] answers."""
        found = (self.ok_run < self.Q).view(-1, *([1] * (self.ok_point.dim() - 1)))
        return torch.where(found, self.ok_point, self.best_point)
