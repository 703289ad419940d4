"""Threat models on pixel space [0,1]: a norm (``linf`` or ``l2``) and a radius ε."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

from .errors import UsageError

__all__ = ["Norm", "ThreatModel", "parse_eps", "parse_eps_list", "format_eps", "MAX_SWEEP"]

MAX_SWEEP = 1000  # radii in one start:stop:count sweep; each one reruns every attack


class Norm(str, Enum):
    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        if isinstance(value, Norm):
            return value
        v = str(value).strip().lower().replace("ℓ", "l")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "l_inf": cls.LINF, "l2": cls.L2, "2": cls.L2, "l_2": cls.L2}
        if v not in aliases:
            raise UsageError(f"unknown norm {value!r}; use 'linf' or 'l2'")
        return aliases[v]


def parse_eps(text: str | float) -> float:
    """``'8/255'`` → 0.03137..., ``'0.1'`` → 0.1. ε is on the [0,1] pixel scale."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"cannot read epsilon {text!r}; write a number like 0.1 or a fraction like 8/255") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"epsilon must be a finite number >= 0, got {text!r}")
    return value


def parse_eps_list(text: str) -> list[float]:
    """``'0.1,0.2'``, ``'2/255,8/255'`` or a sweep ``'0:0.3:7'`` (start:stop:count, evenly spaced,
    both ends included) → sorted unique floats on the [0,1] pixel scale."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UsageError("empty epsilon list; give e.g. --eps 8/255, --eps 0.1,0.2 or a sweep --eps 0:0.3:7")
    values: set[float] = set()
    for part in parts:
        if part.count(":") == 2:
            start, stop, count = part.split(":")
            lo, hi = parse_eps(start), parse_eps(stop)
            try:
                k = int(count)
            except ValueError:
                k = 0
            if k < 2 or hi <= lo:
                raise UsageError(f"epsilon sweep {part!r} must be start:stop:count with start < stop and count >= 2")
            if k > MAX_SWEEP:
                raise UsageError(
                    f"epsilon sweep {part!r} asks for {k} radii; at most {MAX_SWEEP} (every radius reruns every attack)"
                )
            values.update(round(lo + (hi - lo) * i / (k - 1), 12) for i in range(k))
        else:
            values.add(parse_eps(part))
    return sorted(values)


def format_eps(eps: float) -> str:
    """Readable ε: a k/255 fraction when it is one, else a short decimal."""
    k = eps * 255
    if not math.isfinite(k):
        return f"{eps:g}"
    if eps > 0 and abs(k - round(k)) < 1e-6 and eps < 1 and round(k) not in (0,) and abs(eps * 10 - round(eps * 10)) > 1e-9:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm
    eps: float

    def __str__(self) -> str:
        return f"{self.norm.value}@{format_eps(self.eps)}"
