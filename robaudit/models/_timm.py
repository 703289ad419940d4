"""timm classifiers by name (optional extra ``robaudit[timm]``), and their published weights from the
local Hugging Face cache.

``timm:NAME`` builds ``timm.create_model(NAME, pretrained=False)``; robaudit loads the weights
itself (a file you give, or the cached file of ``timm:NAME.TAG``), never through timm's
``pretrained=True``/``checkpoint_path`` loaders, so the trust model stays robaudit's: safetensors
and weights-only pickles only. The model's ``pretrained_cfg`` gives input size, crop fraction,
interpolation and mean/std (timm's ``resolve_data_config``: resize = ⌊crop / crop_pct⌋).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, UsageError
from .spec import Preprocessing

__all__ = ["PREFIX", "available", "build", "check_name", "named_weights", "preprocessing"]

PREFIX = "timm:"
INSTALL = "pip install 'robaudit[timm]'"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, safest first
# create_model arguments that load or fetch weights; robaudit loads weights itself
_LOADING_KWARG = re.compile(r"pretrain|checkpoint|cache|file|path|url|hf_hub|hub", re.IGNORECASE)


def available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _timm():
    try:
        import timm
    except ImportError:
        raise UsageError(f"timm: architectures need the timm package: {INSTALL}") from None
    return timm


def check_name(name: str) -> tuple[str, str | None]:
    """``resnet18`` or ``resnet18.a1_in1k`` → (architecture, tag or None); UsageError if timm has no such model."""
    timm = _timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown timm model {arch!r}{hint} (see timm.list_models())")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        close = difflib.get_close_matches(tag, tags, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"timm model {arch} has no pretrained tag {tag!r}{hint} (published: {', '.join(tags) or 'none'})")
    return arch, tag or None


def build(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=..., in_chans=..., **kwargs)``: random weights."""
    timm = _timm()
    arch, _ = check_name(name)
    own = set(inspect.signature(timm.create_model).parameters) - {"model_name", "kwargs"}
    refused = sorted(k for k in kwargs if k in own or _LOADING_KWARG.search(k) or k == "in_chans")
    if refused:
        raise UsageError(
            f"--arch-kwargs must not set {', '.join(refused)} for timm:{arch}: robaudit loads weights itself "
            f"(give a file, or --weights TAG for the cached published weights) and sets in_chans from the data"
        )
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise UsageError(f"timm:{arch} could not be built with --arch-kwargs {sorted(kwargs)}: {exc}") from None


def preprocessing(name: str) -> Preprocessing | None:
    """Input size, crop fraction, interpolation and mean/std from the model's ``pretrained_cfg``."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    size = cfg.get("input_size")
    crop = int(size[-1]) if size else None
    crop_pct = cfg.get("crop_pct") or 0.875  # timm's default (DEFAULT_CROP_PCT)
    return Preprocessing(
        source=f"timm {name} pretrained_cfg",
        crop_size=crop,
        resize_size=math.floor(crop / crop_pct) if crop else None,
        interpolation=cfg.get("interpolation"),
        mean=tuple(float(v) for v in cfg["mean"]) if cfg.get("mean") else None,
        std=tuple(float(v) for v in cfg["std"]) if cfg.get("std") else None,
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now: $HF_HUB_CACHE, $HF_HOME/hub,
    $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def named_weights(name: str, *, download: bool) -> dict[str, Any]:
    """The cached weight file of ``timm:ARCH.TAG`` (``pretrained_cfg.hf_hub_id``) and what its config says.

    Looks in the local Hugging Face cache only (``model.safetensors``, else ``pytorch_model.bin``);
    ``download`` fetches ``model.safetensors`` with huggingface_hub. Raises CheckpointError naming
    the repository, the files and the cache folder when nothing is cached.
    """
    timm = _timm()
    arch, tag = check_name(name)
    full = f"{arch}.{tag}" if tag else name
    cfg = timm.models.get_pretrained_cfg(full)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    label = f"timm:{arch}.{getattr(cfg, 'tag', None) or tag}" if cfg is not None else f"timm:{full}"
    if not repo:
        raise CheckpointError(
            f"{label} has no Hugging Face hub weights in timm's config; download its weights yourself and pass the file"
        )
    repo = repo.split("@")[0]
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    named_file = getattr(cfg, "hf_hub_filename", None)
    files: list[str] = [str(named_file)] if named_file else list(WEIGHT_FILES)
    path = next(
        (
            Path(found)
            for found in (try_to_load_from_cache(repo, f, cache_dir=str(cache)) for f in files)
            if isinstance(found, str) and Path(found).is_file()
        ),
        None,
    )
    if path is None and not download:
        raise CheckpointError(
            f"{label} is not in the Hugging Face cache {cache}: expected {' or '.join(files)} of the repository {repo} "
            f"(under {cache / ('models--' + repo.replace('/', '--'))}/snapshots/); set HF_HOME or HF_HUB_CACHE to the cache "
            f"that holds it, pass the weights file itself, or pass --download"
        )
    if path is None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(repo, files[0], cache_dir=str(cache)))
        except Exception as exc:  # noqa: BLE001 - network, missing file, auth
            raise CheckpointError(f"downloading {files[0]} of {repo} failed: {type(exc).__name__}: {exc}") from None
    blob = Path(os.path.realpath(path))  # a snapshot file is a link to a blob, which huggingface_hub would reuse
    also = f" and the link {path}" if blob != path else ""
    remedy = (
        f"delete {blob}{also} and rerun with --download to fetch it again, or run "
        f"`huggingface-cli download {repo} {path.name} --cache-dir {cache}`"
    )
    return {
        "path": path,
        "label": label,
        "preprocessing": preprocessing(full),
        "class_names": None,
        "num_classes": getattr(cfg, "num_classes", None),
        "warnings": [],
        "remedy": remedy,
    }
