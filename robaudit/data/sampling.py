"""Which samples ``--n N`` takes: the first N, or a seeded class-stratified subset.

``first`` keeps RobustBench's convention (the first N in the dataset's own order): deterministic,
and comparable with published numbers. On a folder whose files are sorted by class it would take
the first class only, so image folders default to ``stratified``: every class gets
``N·n_c/n_total`` samples (largest remainders, ties to the lower class index), drawn uniformly
without replacement with a generator seeded from (``--seed``, class), and the chosen samples are
scanned in dataset order. The same seed and folder give the same subset on any machine.
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import UsageError
from .spec import SAMPLE_MODES

__all__ = ["select", "resolve_mode"]


def resolve_mode(requested: str | None, default: str) -> str:
    mode = (requested or default).strip().lower()
    if mode not in SAMPLE_MODES:
        raise UsageError(f"--sample must be one of {', '.join(SAMPLE_MODES)}, got {requested!r}")
    return mode


def _class_seed(seed: int, cls: int) -> int:
    digest = hashlib.sha256(f"robaudit-sample:{seed}:{cls}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Per-class sample counts summing to n, proportional to ``counts`` (largest remainder)."""
    total = int(counts.sum())
    exact = counts.double() * n / total
    quota = exact.floor().long()
    left = n - int(quota.sum())
    if left:
        # largest fractional part first; ties to the lower class index (stable sort)
        order = torch.argsort(-(exact - quota.double()), stable=True)
        order = order[counts[order] > quota[order]]
        quota[order[:left]] += 1
    return quota


def select(labels: torch.Tensor, n: int | None, mode: str, seed: int) -> torch.Tensor | None:
    """Positions (ascending) of the samples to scan, or None for all of them."""
    total = int(labels.numel())
    if n is None or n >= total:
        return None
    if mode == "first":
        return torch.arange(n)
    labels = labels.long()
    classes, counts = torch.unique(labels, return_counts=True)
    quota = _quotas(counts, n)
    chosen = []
    for cls, q in zip(classes.tolist(), quota.tolist()):
        if q == 0:
            continue
        members = (labels == cls).nonzero().squeeze(1)
        g = torch.Generator().manual_seed(_class_seed(seed, cls))
        chosen.append(members[torch.randperm(members.numel(), generator=g)[:q]])
    return torch.sort(torch.cat(chosen)).values
