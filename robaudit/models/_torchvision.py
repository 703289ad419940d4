"""torchvision classifiers by name, and their published weights from the local torch hub cache.

``torchvision:NAME`` builds ``torchvision.models.get_model(NAME, weights=None)``. Published weights
(``torchvision:NAME:WEIGHTS`` or ``--weights WEIGHTS``, e.g. ``IMAGENET1K_V2`` or ``DEFAULT``) are
looked up where torchvision itself caches them, ``torch.hub.get_dir()/checkpoints/<file in the
URL>`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``), and read with robaudit's own
weights-only loader: torchvision's ``weights.get_state_dict()`` calls
``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False, so a tampered
cache file would run code there. Nothing is downloaded unless asked (``download=True``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from ..errors import CheckpointError, UsageError
from ._formats import sha256_file
from .spec import Preprocessing

__all__ = ["PREFIX", "build", "named_weights", "model_names", "weights_names"]

PREFIX = "torchvision:"


def model_names() -> list[str]:
    """torchvision's classification models (``torchvision.models.list_models(module=torchvision.models)``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _check_name(name: str) -> None:
    known = model_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown torchvision classification model {name!r}{hint} (see torchvision.models.list_models())")


def build(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=..., **kwargs)``: random weights."""
    import torchvision

    _check_name(name)
    if in_channels != 3:
        raise UsageError(f"torchvision:{name} takes 3-channel images but the input has {in_channels}; use a built-in --arch")
    if "weights" in kwargs or "weights_backbone" in kwargs:
        raise UsageError(f"--arch-kwargs must not set weights for torchvision:{name}; use --weights NAME")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"torchvision:{name} rejected --arch-kwargs {sorted(kwargs)}: {exc}") from None


def weights_names(name: str) -> list[str]:
    """The published weights of model ``name`` (the enum members, e.g. IMAGENET1K_V1, IMAGENET1K_V2)."""
    import torchvision

    return [w.name for w in torchvision.models.get_model_weights(name)]


def _weights_enum(name: str, weights: str):
    import torchvision

    _check_name(name)
    enum = torchvision.models.get_model_weights(name)
    key = weights.split(".")[-1]  # "ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"
    if key.upper() == "DEFAULT":
        return enum.DEFAULT
    members = {w.name: w for w in enum}
    if key not in members:
        close = difflib.get_close_matches(key, list(members), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"torchvision:{name} has no weights {weights!r}{hint} (published: {', '.join(members)}, or DEFAULT)")
    return members[key]


def cache_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints`` (reads $TORCH_HOME now)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def named_weights(name: str, weights: str, *, download: bool) -> dict[str, Any]:
    """The cached file of ``torchvision:name``'s published ``weights`` and what they say about themselves.

    Returns ``path``, ``label`` (``torchvision:ResNet50_Weights.IMAGENET1K_V2``), ``preprocessing``,
    ``class_names``, ``num_classes`` and ``warnings`` (a file whose sha256 does not start with the
    hash in torchvision's file name is not the published file). Raises CheckpointError with the
    exact expected path when the file is not cached and ``download`` is False.
    """
    w = _weights_enum(name, weights)
    label = f"torchvision:{type(w).__name__}.{w.name}"
    filename = os.path.basename(urlparse(w.url).path)
    path = cache_dir() / filename
    if not path.is_file():
        if not download:
            raise CheckpointError(
                f"{label} is not in the torch hub cache: expected {path} (from {w.url}); download it there, "
                f"set TORCH_HOME to the folder whose hub/checkpoints holds it, or pass --download"
            )
        _download(w.url, path, filename)
    warnings = []
    prefix = _hash_prefix(filename)
    if prefix and not sha256_file(path).startswith(prefix):
        warnings.append(
            f"{path.name}'s sha256 does not start with {prefix}, the hash in torchvision's file name: "
            f"these are not the published {label} weights"
        )
    meta = dict(w.meta)
    categories = meta.get("categories")
    return {
        "path": path,
        "label": label,
        "preprocessing": _preprocessing(w, label),
        "class_names": tuple(str(c) for c in categories) if categories else None,
        "num_classes": len(categories) if categories else None,
        "warnings": warnings,
        "remedy": f"delete it and rerun with --download to fetch it again (torch.hub checks its hash), or download "
        f"{w.url} to {path} yourself",
    }


def _preprocessing(w, label: str) -> Preprocessing | None:
    """The weights' evaluation transforms (``ImageClassification``: resize, centre crop, mean/std)."""
    try:
        t = w.transforms()
    except Exception:  # noqa: BLE001 - a weights entry without classification transforms
        return None
    crop, resize = getattr(t, "crop_size", None), getattr(t, "resize_size", None)
    mean, std = getattr(t, "mean", None), getattr(t, "std", None)
    interpolation = getattr(t, "interpolation", None)
    return Preprocessing(
        source=f"{label}.transforms()",
        crop_size=int(crop[0]) if crop else None,
        resize_size=int(resize[0]) if resize else None,
        interpolation=getattr(interpolation, "value", None) if interpolation is not None else None,
        mean=tuple(float(v) for v in mean) if mean is not None else None,
        std=tuple(float(v) for v in std) if std is not None else None,
    )


def _hash_prefix(filename: str) -> str | None:
    import torch.hub

    found = torch.hub.HASH_REGEX.search(filename)
    return found.group(1) if found and found.group(1) else None


def _download(url: str, path: Path, filename: str) -> None:
    """Download into the cache with torch.hub's checked downloader (sha256 prefix from the file name)."""
    import torch.hub

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), _hash_prefix(filename), progress=False)
    except Exception as exc:  # noqa: BLE001 - network or hash failure
        raise CheckpointError(f"downloading {url} to {path} failed: {type(exc).__name__}: {exc}") from None
