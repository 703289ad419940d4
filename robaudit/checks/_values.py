"""Section values as JSON-native numbers: significant digits, NaN ↔ None (JSON has no NaN), the
summaries over samples that ignore missing values. Shared by the curvature and indicator checks."""

from __future__ import annotations

import math
from typing import overload

import torch

__all__ = ["rounded", "rounded_tuple", "finite_median", "finite_mean", "nan_to_none", "none_to_nan_rows"]


def rounded(v: float | None, digits: int = 7) -> float | None:
    """``v`` to ``digits`` significant digits; None for None, NaN and ±inf."""
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


@overload
def rounded_tuple(t: torch.Tensor, digits: int = 7) -> tuple[float | None, ...]: ...
@overload
def rounded_tuple(t: None, digits: int = 7) -> None: ...
@overload
def rounded_tuple(t: torch.Tensor | None, digits: int = 7) -> tuple[float | None, ...] | None: ...
def rounded_tuple(t: torch.Tensor | None, digits: int = 7) -> tuple[float | None, ...] | None:
    """Each value of ``t`` by :func:`rounded`; None for None."""
    if t is None:
        return None
    return tuple(rounded(float(v), digits) for v in t.detach().double().cpu().tolist())


def finite_median(t: torch.Tensor | None) -> float | None:
    """The median of the finite values (None: none, or ``t`` is None)."""
    if t is None:
        return None
    t = t[torch.isfinite(t)]
    return float(t.median()) if t.numel() else None


def finite_mean(t: torch.Tensor | None) -> float | None:
    """The mean of the finite values (None: none, or ``t`` is None)."""
    if t is None:
        return None
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else None


def nan_to_none(t: torch.Tensor) -> list:
    """Per-sample values (1-D) or rows (2-D) as JSON-native lists, NaN → None."""

    def one(v: float):
        return None if math.isnan(v) else float(v)

    if t.dim() == 1:
        return [one(v) for v in t.tolist()]
    return [[one(v) for v in row] for row in t.tolist()]


def none_to_nan_rows(rows: list) -> list:
    """The inverse of :func:`nan_to_none` for rows: None → NaN."""
    return [[math.nan if v is None else v for v in row] for row in rows]
