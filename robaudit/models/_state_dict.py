"""State dicts: find them inside checkpoint objects, fit key prefixes, load strictly with useful errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["extract_weights", "fit_keys", "load_strict", "nonfinite_warning", "classifier_key", "first_conv_key"]

NESTED_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "ema",
    "ema_state_dict",
    "model_ema",
    "module",
    "weights",
    "params",
)
_EXAMPLES = 5


def is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_weights(obj: Any, where: str, *, allow_module: bool, depth: int = 0) -> dict[str, torch.Tensor] | nn.Module:
    """Find the state dict (or, with ``allow_module``, a whole nn.Module) inside a loaded checkpoint."""
    if allow_module and isinstance(obj, nn.Module):
        return obj
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth < 3:
        for key in NESTED_KEYS:
            if key in obj and _holds_weights(obj[key], allow_module):
                return extract_weights(obj[key], where, allow_module=allow_module, depth=depth + 1)
        found = [k for k, v in obj.items() if _holds_weights(v, allow_module)]
        if len(found) == 1:
            return extract_weights(obj[found[0]], where, allow_module=allow_module, depth=depth + 1)
    if isinstance(obj, Mapping):
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise CheckpointError(
            f"{where} holds a dict with keys {keys} but no state dict of tensors; "
            f"re-save it with torch.save(model.state_dict(), path)"
        )
    raise CheckpointError(
        f"{where} holds a {type(obj).__name__}, not a state dict; re-save it with torch.save(model.state_dict(), path)"
    )


def _holds_weights(obj: Any, allow_module: bool) -> bool:
    if is_state_dict(obj) or (allow_module and isinstance(obj, nn.Module)):
        return True
    nested = (v for v in obj.values() if isinstance(v, (Mapping, nn.Module))) if isinstance(obj, Mapping) else ()
    return any(_holds_weights(v, allow_module) for v in nested)


def _common_prefix(keys: list[str]) -> str | None:
    """The first dotted component shared by every key (``"module."``), or None."""
    if not keys or any("." not in k for k in keys):
        return None
    first = keys[0].split(".", 1)[0] + "."
    return first if all(k.startswith(first) for k in keys) else None


def fit_keys(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (DataParallel's ``module.``, then ``model.``/any shared one) when that makes keys fit."""
    sd = dict(sd)
    for _ in range(3):
        if set(sd) == expected:
            return sd
        prefix = _common_prefix(list(sd))
        if prefix is None:
            return sd
        stripped = {k[len(prefix) :]: v for k, v in sd.items()}
        if prefix == "module." or set(stripped) == expected:
            sd = stripped
        else:
            return sd
    return sd


def load_strict(net: nn.Module, sd: dict[str, torch.Tensor], *, where: str, arch: str) -> None:
    """``net.load_state_dict(sd, strict=True)``; mismatches become one CheckpointError line saying what to do."""
    own = net.state_dict()
    sd = dict(sd)
    for key in own:  # checkpoints from before PyTorch 0.4.1 lack BatchNorm's counter; it is unused in eval
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = own[key]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{where} does not fit --arch {arch}: " + _key_report(missing, unexpected, sd, own))
    for key, tensor in sd.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{where} does not fit --arch {arch}: " + _shape_report(key, tensor, own))
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where} does not fit --arch {arch}: {str(exc).splitlines()[0]}") from None


def _key_report(missing: list[str], unexpected: list[str], sd: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    prefix = _wrapper_prefix(missing, unexpected)
    if prefix:
        hint = f"checkpoint keys have prefix {prefix!r}; was it saved from a wrapper? Re-save the inner model's state_dict()"
    else:
        hint = "wrong --arch or --arch-kwargs?"
    return ", ".join(parts) + f"; {hint}"


def _wrapper_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """A first key component (``"backbone."``) that, stripped from the unexpected keys, supplies every missing key."""
    counts = Counter(k.split(".", 1)[0] + "." for k in unexpected if "." in k)
    for prefix, _ in counts.most_common(3):
        stripped = {k[len(prefix) :] for k in unexpected if k.startswith(prefix)}
        if missing and set(missing) <= stripped:
            return prefix
    return None


def _examples(keys: list[str]) -> str:
    more = f", ... {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


def _shape_report(key: str, tensor: torch.Tensor, own: Mapping[str, torch.Tensor]) -> str:
    got, want = list(tensor.shape), list(own[key].shape)
    text = f"{key} has shape {got} in the checkpoint but {want} in the architecture"
    head = classifier_key(own)
    if head is not None and key.rsplit(".", 1)[0] == head.rsplit(".", 1)[0] and got[:1] != want[:1]:
        return text + f"; the checkpoint has {got[0]} classes; pass --num-classes {got[0]} or use the matching dataset"
    first = first_conv_key(own)
    if key == first and len(got) == 4 and got[1] != want[1]:
        return text + f"; the checkpoint takes {got[1]}-channel input; use the matching dataset or --input-shape"
    return text + "; wrong --arch, --arch-kwargs or --input-shape?"


def classifier_key(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The last weight with >= 2 dims (the classifier), in state-dict order."""
    keys = [k for k, v in sd.items() if k.endswith("weight") and v.ndim >= 2]
    return keys[-1] if keys else None


def first_conv_key(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The first 4-D weight (the stem conv), in state-dict order."""
    return next((k for k, v in sd.items() if k.endswith("weight") and v.ndim == 4), None)


def nonfinite_warning(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """``"3 of 62 tensors contain NaN/Inf: a, b, c"`` or None."""
    floats = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    bad = [k for k, v in floats.items() if not bool(torch.isfinite(v).all())]
    if not bad:
        return None
    return f"{len(bad)} of {len(floats)} tensors contain NaN/Inf: {_examples(bad)}"
