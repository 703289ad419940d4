"""One registry type for built-ins and plugins alike, with lazily loaded plugins.

Built-ins register where they are defined with ``@REGISTRY.register("name")``. Third-party
packages add entries through the Python entry-point group named by the registry
(``robaudit.attacks``, ``robaudit.checks``, ``robaudit.architectures``, ``robaudit.datasets``,
``robaudit.hardeners``; see docs/plugins.md). Entry points are *indexed* from package metadata
(name, target, distribution, version) without importing anything; a plugin's object is imported
the first time its name is looked up (:meth:`Registry.get`) or when :meth:`Registry.load_all`
is asked for. :func:`discover` reads the same metadata for every group without touching any
registry, which is what ``robaudit plugins`` lists.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import UsageError

__all__ = ["Registry", "Entry", "PluginInfo", "GROUPS", "discover"]

T = TypeVar("T")

# Every entry-point group robaudit reads, in the order `robaudit plugins` shows them.
GROUPS: tuple[str, ...] = (
    "robaudit.attacks",
    "robaudit.checks",
    "robaudit.architectures",
    "robaudit.datasets",
    "robaudit.hardeners",
)

_UNLOADED = object()


@dataclass(frozen=True)
class PluginInfo:
    """One declared entry point, from package metadata only (nothing imported).

    target: the entry point's value, ``module:attribute``."""

    group: str
    name: str
    target: str
    distribution: str
    version: str


@dataclass(eq=False)
class Entry(Generic[T]):
    """A registered object and where it came from (``robaudit`` for built-ins).

    For a plugin the object is imported on first access to :attr:`obj`; ``target`` is then the
    entry point's ``module:attribute`` (empty for built-ins)."""

    name: str
    _obj: Any = field(default=_UNLOADED, repr=False)
    distribution: str = "robaudit"
    version: str = "?"
    target: str = ""
    _load: Callable[[], T] | None = field(default=None, repr=False)

    @property
    def loaded(self) -> bool:
        return self._obj is not _UNLOADED

    @property
    def obj(self) -> T:
        if self._obj is _UNLOADED:
            assert self._load is not None
            self._obj = self._load()
        return self._obj


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
        self._indexed = False
        self._collision: UsageError | None = None
        self.load_errors: list[str] = []

    def register(self, name: str, *, distribution: str = "robaudit", version: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@ATTACKS.register("pgd")``."""

        def deco(obj: T) -> T:
            self.add(name, obj, distribution=distribution, version=version)
            return obj

        return deco

    def add(self, name: str, obj: T, *, distribution: str = "robaudit", version: str | None = None) -> None:
        """Register an already imported object (built-ins, tests, programmatic plugins)."""
        if version is None:
            from ._version import __version__

            version = __version__ if distribution == "robaudit" else "?"
        self._put(Entry(name.lower(), obj, distribution, version))

    def _put(self, entry: Entry[T]) -> None:
        old = self._entries.get(entry.name)
        if old is not None and old.distribution != entry.distribution:
            raise UsageError(
                f"{self.kind} {entry.name!r} is registered by both {old.distribution!r} and "
                f"{entry.distribution!r}; uninstall one of them"
            )
        self._entries[entry.name] = entry

    def _ensure_indexed(self) -> None:
        """Import the built-in modules and index (not load) this group's entry points."""
        if self._collision is not None:  # an installation error: every lookup says so
            raise self._collision
        if self._indexed:
            return
        self._indexed = True
        for mod in self._builtin_modules:
            importlib.import_module(mod)
        for ep in _entry_points(self.group):
            dist, ver = _dist_of(ep)
            try:
                self._put(Entry(ep.name.lower(), _UNLOADED, dist, ver, target=getattr(ep, "value", ""), _load=ep.load))
            except UsageError as exc:
                self._collision = exc
                raise

    def _load(self, entry: Entry[T]) -> T:
        try:
            return entry.obj
        except Exception as exc:  # a broken plugin must not break the rest
            msg = f"{self.kind} plugin {entry.name!r} from {entry.distribution}: {type(exc).__name__}: {exc}"
            self.load_errors.append(msg)
            self._entries.pop(entry.name, None)
            raise UsageError(f"{msg} (reinstall or uninstall {entry.distribution})") from exc

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its plugin module now if need be."""
        self._ensure_indexed()
        key = name.lower()
        if key not in self._entries:
            raise UsageError(self._unknown_message(name))
        return self._load(self._entries[key])

    def load_all(self) -> list[str]:
        """Import every not-yet-loaded plugin; broken ones are dropped and reported. Returns the
        new error messages (also appended to ``load_errors``)."""
        self._ensure_indexed()
        before = len(self.load_errors)
        for entry in list(self._entries.values()):
            if not entry.loaded:
                try:
                    self._load(entry)
                except UsageError:
                    pass
        return self.load_errors[before:]

    def __contains__(self, name: str) -> bool:
        self._ensure_indexed()
        return name.lower() in self._entries

    def names(self) -> list[str]:
        """All registered names (plugins declared but not imported included)."""
        self._ensure_indexed()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        """Entries sorted by name; reading ``distribution``/``version``/``target`` loads nothing."""
        self._ensure_indexed()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name.lower(), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(names)})"


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return getattr(dist, "name", None) or dist.metadata["Name"], getattr(dist, "version", "?")


def _entry_points(group: str):
    return list(metadata.entry_points(group=group))


def discover(groups: tuple[str, ...] = GROUPS) -> tuple[list[PluginInfo], list[str]]:
    """Every installed plugin entry point (metadata only, nothing imported) and the collisions:
    one message per name that two distributions register in the same group."""
    infos: list[PluginInfo] = []
    collisions: list[str] = []
    for group in groups:
        seen: dict[str, PluginInfo] = {}
        for ep in _entry_points(group):
            dist, ver = _dist_of(ep)
            info = PluginInfo(group, ep.name.lower(), getattr(ep, "value", ""), dist, ver)
            old = seen.get(info.name)
            if old is not None:
                if old.distribution != dist:
                    collisions.append(f"{group}: {info.name!r} is registered by both {old.distribution!r} and {dist!r}")
                    infos.append(info)
                continue  # the same distribution seen twice on sys.path
            seen[info.name] = info
            infos.append(info)
    infos.sort(key=lambda i: (GROUPS.index(i.group) if i.group in GROUPS else len(GROUPS), i.group, i.name, i.distribution))
    return infos, collisions
