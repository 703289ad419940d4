"""One registry type for built-ins and plugins alike.

Built-ins register where they are defined with ``@REGISTRY.register("name")``. Third-party
packages add entries through the Python entry-point group named by the registry
(``robaudit.attacks``, ``robaudit.checks``, ``robaudit.architectures``, ``robaudit.datasets``);
those are loaded lazily, the first time a name is looked up or the registry is listed.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UsageError

__all__ = ["Registry", "Entry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object and where it came from (``robaudit`` for built-ins)."""

    name: str
    obj: T
    distribution: str
    version: str


class Registry(Generic[T]):
    """Name → object, with did-you-mean on unknown names and entry-point plugins.

    ``builtin_modules`` are imported on first use so that registering decorators run; they are
    the same path an external plugin takes, minus the entry-point indirection.
    """

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.group = group
        self._builtin_modules = builtin_modules
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self.load_errors: list[str] = []

    def register(self, name: str, *, distribution: str = "robaudit", version: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@ATTACKS.register("pgd")``."""

        def deco(obj: T) -> T:
            self.add(name, obj, distribution=distribution, version=version)
            return obj

        return deco

    def add(self, name: str, obj: T, *, distribution: str = "robaudit", version: str | None = None) -> None:
        key = name.lower()
        if key in self._entries and self._entries[key].distribution != distribution:
            other = self._entries[key].distribution
            raise UsageError(
                f"{self.kind} {name!r} is registered by both {other!r} and {distribution!r}; "
                f"uninstall one of them"
            )
        if version is None:
            from . import __version__

            version = __version__ if distribution == "robaudit" else "?"
        self._entries[key] = Entry(key, obj, distribution, version)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._builtin_modules:
            importlib.import_module(mod)
        for ep in _entry_points(self.group):
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
            ver = ep.dist.version if getattr(ep, "dist", None) is not None else "?"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the rest
                self.load_errors.append(f"{self.kind} plugin {ep.name!r} from {dist}: {type(exc).__name__}: {exc}")
                continue
            self.add(ep.name, obj, distribution=dist, version=ver)

    def get(self, name: str) -> T:
        self._ensure_loaded()
        key = name.lower()
        if key not in self._entries:
            raise UsageError(self._unknown_message(name))
        return self._entries[key].obj

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name.lower() in self._entries

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self._ensure_loaded()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name.lower(), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(names)})"


def _entry_points(group: str):
    return list(metadata.entry_points(group=group))
