"""What a check's :meth:`~robaudit.checks.base.Check.max_passes` counts with: the plan it gets and the
shared arithmetic (model passes per scanned sample, an upper bound; :mod:`robaudit.estimate` sums
them and times one batch before a scan).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import MetricPlan

__all__ = ["PassPlan", "deepfool_passes", "spread"]


@dataclass(frozen=True)
class PassPlan(MetricPlan):
    """The plan :meth:`Check.max_passes` gets from the estimate: n, this process's scanned samples
    (the bound is per one of them); data_n, the data set's samples (a model-level check's batch)."""

    n: int = 1
    data_n: int = 1


def deepfool_passes(attack, num_classes: int) -> tuple[int, int]:
    """(forward, backward) passes of one sample in :meth:`DeepFool.minimal_perturbation`: max_iter
    iterations of one forward and (candidates − 1) backwards, then the last iterate's forward; a
    backward counted with a forward of its own."""
    backward = int(attack.max_iter) * (min(int(attack.num_candidates), int(num_classes)) - 1)
    return int(attack.max_iter) + 1 + backward, backward


def spread(per_sample: tuple[float, float], k: int, n: int, fixed: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Per scanned sample (of ``n``): ``per_sample`` passes on at most ``k`` of them, plus ``fixed``
    passes once per process."""
    n = max(1, int(n))
    share = min(int(k), n) / n
    return per_sample[0] * share + fixed[0] / n, per_sample[1] * share + fixed[1] / n
