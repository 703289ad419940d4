"""Architecture registry and ``build_architecture``: built-in names, ``torchvision:NAME``, ``timm:NAME``, ``file.py:Class``.

A registry entry is a factory ``factory(num_classes=10, in_channels=3, **kwargs) -> nn.Module``.
Plugins add entries through the ``robaudit.architectures`` entry-point group.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError
from ..registry import Registry

__all__ = ["ARCHITECTURES", "build_architecture", "parse_arch_kwargs"]

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry(
    "architecture", "robaudit.architectures", builtin_modules=("robaudit.models.nets",)
)

_RESERVED = ("num_classes", "in_channels")


def build_architecture(
    spec: str,
    *,
    num_classes: int,
    in_channels: int,
    kwargs: dict[str, Any] | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Instantiate ``spec`` with fresh (random) weights.

    ``spec`` is a registry name, ``torchvision:NAME``, ``timm:NAME`` or ``path/to/net.py:Class``. ``input_size``
    (the image height) is passed only to factories that take an ``input_size`` parameter.
    """
    kwargs = dict(kwargs or {})
    for key in _RESERVED:
        if key in kwargs:
            raise UsageError(f"--arch-kwargs must not set {key}; use --num-classes / --input-shape instead")
    if spec.startswith(("torchvision:", "timm:")):
        from . import _timm, _torchvision
        from .sources import parse_arch

        ref = parse_arch(spec)
        if ref.weights is not None:
            raise UsageError(
                f"build_architecture builds random weights; {spec} names published weights: use load_model(arch=...)"
            )
        build = _torchvision.build if ref.family == "torchvision" else _timm.build
        return build(ref.name, num_classes, in_channels, kwargs)
    from_file = is_file_spec(spec)
    factory = _load_from_file(spec) if from_file else ARCHITECTURES.get(spec)
    params = _parameters(factory)
    # registry factories follow the (num_classes, in_channels, **kwargs) convention; user classes
    # get the two only when they name them (their **kwargs may go to nn.Module.__init__)
    open_kwargs = not from_file and any(p.kind == p.VAR_KEYWORD for p in params.values())
    call = dict(kwargs)
    if "num_classes" in params or open_kwargs:
        call["num_classes"] = num_classes
    if "in_channels" in params or open_kwargs:
        call["in_channels"] = in_channels
    if input_size is not None and "input_size" in params and "input_size" not in call:
        call["input_size"] = input_size
    return _call(spec, factory, call)


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--arch-kwargs``: a JSON object, or ``k=v,k2=v2`` with int/float/bool/None/str values."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        from ..errors import InputError
        from ..jsonio import parse_json

        try:
            value = parse_json(text, "--arch-kwargs")
        except InputError as exc:  # typed on the command line: a usage error
            raise UsageError(str(exc)) from None
        if not isinstance(value, dict):
            raise UsageError("--arch-kwargs JSON must be an object, e.g. '{\"width\": 16}'")
        return value
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--arch-kwargs: expected k=v,k2=v2 or a JSON object; got {item.strip()!r}")
        out[key] = _parse_scalar(raw.strip())
    return out


def _parse_scalar(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def is_file_spec(spec: str) -> bool:
    """Whether an --arch spec names a Python file (path.py:Class), which robaudit never reads back from metadata."""
    path, sep, name = spec.rpartition(":")
    return bool(sep and path and name) and (path.endswith(".py") or "/" in path or "\\" in path)


def _load_from_file(spec: str) -> Callable[..., nn.Module]:
    """Import ``path.py`` as a module (cached per resolved path) and return its attribute ``Class``."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--arch {spec}: file {path_text} not found")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    mod_name = f"robaudit_user_arch_{digest}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"--arch {spec}: cannot import {path_text} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module  # so classes defined there pickle and dataclasses work
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise UsageError(f"--arch {spec}: importing {path_text} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        found = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        hint = f" (nn.Module classes there: {', '.join(found)})" if found else ""
        raise UsageError(f"--arch {spec}: {path_text} has no class or function {name!r}{hint}")
    return factory


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def _call(spec: str, factory: Callable[..., nn.Module], call: dict[str, Any]) -> nn.Module:
    params = _parameters(factory)
    accepted = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in call if k not in params] if params and not takes_any else []
    if unknown:
        raise UsageError(
            f"architecture {spec!r} does not accept {', '.join(unknown)}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}"
        )
    try:
        net = factory(**call)
    except TypeError as exc:
        raise UsageError(
            f"architecture {spec!r} could not be built with {call}: {exc}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}"
        ) from None
    except Exception as exc:
        raise UsageError(f"architecture {spec!r} could not be built with {call}: {type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise UsageError(f"architecture {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net
