"""Check installed plugins: import each entry point and verify its object fits its group's interface.

The interfaces are documented in docs/plugins.md; this is what ``robaudit plugins --check`` runs.
Importing a plugin runs its code, so this only happens on request, never when listing.
"""

from __future__ import annotations

import inspect
from importlib import metadata

from .registry import PluginInfo

__all__ = ["load_plugin", "interface_problem", "check_plugin"]


def load_plugin(info: PluginInfo):
    """Import the entry point's ``module:attribute`` (raises whatever the import raises)."""
    return metadata.EntryPoint(name=info.name, value=info.target, group=info.group).load()


def _is_subclass(obj, base: type) -> bool:
    return inspect.isclass(obj) and issubclass(obj, base)


def interface_problem(group: str, obj) -> str | None:
    """None if ``obj`` satisfies ``group``'s interface, else what is wrong (one line)."""
    if group == "robaudit.attacks":
        from .attacks.base import Attack

        if not _is_subclass(obj, Attack):
            return "not a subclass of robaudit.attacks.Attack"
        import dataclasses

        if not dataclasses.is_dataclass(obj):
            return "an Attack subclass must be a @dataclass (its fields are the hyper-parameters)"
        if inspect.isabstract(obj):
            return "does not implement _perturb"
    elif group == "robaudit.checks":
        from .checks.base import Check

        if not _is_subclass(obj, Check):
            return "not a subclass of robaudit.checks.Check"
        if not isinstance(getattr(obj, "name", None), str):
            return "a Check needs a class attribute name (its section name)"

        own = lambda m: getattr(obj, m, None) is not getattr(Check, m)  # noqa: E731
        if not (own("compute") and own("combine")) and not own("run"):
            return "implements neither compute(ctx) + combine(tables, extras, info) nor run(ctx)"
    elif group == "robaudit.hardeners":
        from .harden.regularizers import Hardener

        if not _is_subclass(obj, Hardener):
            return "not a subclass of robaudit.harden.regularizers.Hardener"
        if inspect.isabstract(obj):
            return "does not implement loss() and measure()"
    elif group in ("robaudit.architectures", "robaudit.datasets"):
        if not callable(obj):
            return "not callable"
        if group == "robaudit.architectures":
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                return None
            takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
            missing = [k for k in ("num_classes", "in_channels") if k not in params and not takes_any]
            if missing:
                return f"factory must accept {', '.join(missing)}"
    return None


def check_plugin(info: PluginInfo) -> str | None:
    """Import one plugin and check its interface: None when it is fine, else the problem."""
    try:
        obj = load_plugin(info)
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        return f"import failed: {type(exc).__name__}: {exc}"
    return interface_problem(info.group, obj)
