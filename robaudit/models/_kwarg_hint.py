"""Which ``--arch-kwargs`` would make a checkpoint fit a registered architecture, when a shape differs.

A state dict saved from ``small-cnn`` with ``width=16`` has ``conv1.weight`` of shape [16, 1, 5, 5]
where the default (``width=32``) builds [32, 1, 5, 5]. For each integer argument of the factory,
the sizes that differ suggest values (a size proportional to the argument: ``got · value / want``);
each candidate is tried by building the architecture on PyTorch's ``meta`` device (no memory, no
computation) and counting the tensors whose shape still differs, greedily, up to three arguments.
Only registry architectures are probed (a user's ``file.py:Class`` is not re-run for a hint).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["suggest_arch_kwargs"]

_RESERVED = ("num_classes", "in_channels", "input_size")
_MAX_CHANGES = 3


def _mismatches(
    net_sd: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> list[tuple[str, list[int], list[int]]]:
    out = []
    for key, want in net_sd.items():
        got = weights.get(key)
        if got is None or tuple(got.shape) != tuple(want.shape):
            out.append((key, list(got.shape) if got is not None else [], list(want.shape)))
    return out


def suggest_arch_kwargs(
    arch: str,
    weights: Mapping[str, torch.Tensor],
    *,
    num_classes: int,
    in_channels: int,
    kwargs: Mapping[str, Any] | None,
    input_size: int | None,
) -> dict[str, int] | None:
    """Integer architecture arguments (changes from ``kwargs``/defaults) under which every tensor
    of ``weights`` has the architecture's shape, or None if no such change is found cheaply."""
    from .architectures import ARCHITECTURES, build_architecture

    if arch.startswith("torchvision:") or ":" in arch or arch not in ARCHITECTURES:
        return None
    try:
        params = inspect.signature(ARCHITECTURES.get(arch)).parameters
    except (TypeError, ValueError):
        return None
    current = {
        n: p.default
        for n, p in params.items()
        if n not in _RESERVED and isinstance(p.default, int) and not isinstance(p.default, bool)
    }
    current.update({k: v for k, v in (kwargs or {}).items() if k in current and isinstance(v, int)})
    if not current:
        return None

    def mismatched(values: dict[str, int]) -> list | None:
        try:
            with torch.device("meta"):
                net = build_architecture(
                    arch,
                    num_classes=num_classes,
                    in_channels=in_channels,
                    kwargs={**(kwargs or {}), **values},
                    input_size=input_size,
                )
        except Exception:  # noqa: BLE001 - an impossible combination is just not a candidate
            return None
        return _mismatches(net.state_dict(), weights)

    values = dict(current)
    bad = mismatched(values)
    changed: dict[str, int] = {}
    for _ in range(_MAX_CHANGES):
        if not bad:
            break
        best: tuple[int, str, int] | None = None
        for name, value in values.items():
            for cand in _candidates(value, bad):
                trial = mismatched({**values, name: cand})
                if trial is not None and len(trial) < len(bad) and (best is None or len(trial) < best[0]):
                    best = (len(trial), name, cand)
        if best is None:
            return None
        values[best[1]] = best[2]
        changed[best[1]] = best[2]
        bad = mismatched(values)
    return changed if changed and bad == [] else None


def _candidates(value: int, bad: list[tuple[str, list[int], list[int]]]) -> set[int]:
    """Values ``got · value / want`` (integral, positive, new) for every differing size."""
    out = set()
    for _, got, want in bad:
        for g, w in zip(got, want):
            if g != w and w > 0 and (g * value) % w == 0 and g * value // w > 0:
                out.add(g * value // w)
    out.discard(value)
    return out
