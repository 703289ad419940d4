"""Counting the differentiation work of a check: input-gradient passes and Hessian-vector products.

Units, per *sample*: one ``grad`` is one input gradient of one scalar function of one sample
(a backward pass of one row; an FD Hessian-vector product costs one, a shared forward with
several functions costs one per function); one ``hvp`` is one Hessian-vector product of one
sample, exact (double backward or forward-over-reverse) or finite-difference (so a full d×d
Hessian of a sample is d of them). The engine opens a :func:`ledger` around each check and
records the totals in the result (``ScanResult.passes``).

    >>> with ledger() as counts:
    ...     hvp_exact(model, x, y, v)
    >>> counts["hvp"]                      # x.shape[0]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["ledger", "record", "tick", "watch"]

_CURRENT: ContextVar[dict | None] = ContextVar("robaudit_passes", default=None)
_WATCH: ContextVar[list | None] = ContextVar("robaudit_passes_watch", default=None)


def record(kind: str, rows: int) -> None:
    """Add ``rows`` (samples) to counter ``kind`` ("grad" or "hvp") of the open ledger, if any,
    and tell the innermost :func:`watch` how many units (grad + hvp) it has seen."""
    counts = _CURRENT.get()
    if counts is not None:
        counts[kind] = counts.get(kind, 0) + int(rows)
    tick(rows)


def tick(units: int) -> None:
    """Tell the innermost :func:`watch` that ``units`` more of its work are done, without counting
    them as passes (e.g. an eigendecomposition: d units per sample)."""
    watcher = _WATCH.get()
    if watcher is not None:
        watcher[1] += int(units)
        watcher[0](watcher[1])


@contextmanager
def watch(callback) -> Iterator[None]:
    """Call ``callback(units)`` (grad + hvp rows recorded since the block began) at every record:
    what moves a progress bar within a batch of geometry work."""
    token = _WATCH.set([callback, 0])
    try:
        yield
    finally:
        _WATCH.reset(token)


@contextmanager
def ledger() -> Iterator[dict]:
    """A fresh ``{"grad": 0, "hvp": 0}`` that :func:`record` adds to while the block runs
    (nested ledgers: the inner one counts, the outer one gets its totals when it closes)."""
    counts = {"grad": 0, "hvp": 0}
    outer = _CURRENT.get()
    token = _CURRENT.set(counts)
    try:
        yield counts
    finally:
        _CURRENT.reset(token)
        if outer is not None:
            for k, v in counts.items():
                outer[k] = outer.get(k, 0) + v
