"""ScanResult: frozen dataclasses, versioned JSON. Renderers, the gate and compare read only this.

A scan's output is a set of *sections*, one per check (``clean``, ``attacks``, ``margins``, ...).
Each section type is a frozen dataclass registered under its name with :func:`section`, so JSON
reads back into the same types; a section written by a plugin that isn't installed reads back as
a plain dict. Every section exposes ``metrics()``: flat dotted names → floats, the vocabulary of
gates and ``compare``.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from .errors import InputError

__all__ = ["SCHEMA_VERSION", "Section", "section", "Provenance", "Flag", "ScanResult", "to_jsonable", "from_jsonable"]

SCHEMA_VERSION = 1

_SECTION_TYPES: dict[str, type] = {}


def section(name: str):
    """Class decorator registering a frozen dataclass as the section type called ``name``."""

    def deco(cls):
        cls.section_name = name
        _SECTION_TYPES[name] = cls
        return cls

    return deco


class Section:
    """Mixin for section dataclasses."""

    section_name: ClassVar[str] = ""

    def metrics(self) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class Flag:
    """A validity warning: ``code`` keys its entry in docs/flags.md ("raised if", "what it means")."""

    code: str
    message: str
    severity: str = "warning"  # "warning" | "error"


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. Same seed + same device + same inputs → same JSON (timings aside)."""

    robaudit_version: str
    torch_version: str
    device: str
    seed: int
    checkpoint: str
    checkpoint_sha256: str
    checkpoint_format: str
    arch: str | None
    dataset: str
    split: str
    n: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    data_source: str
    normalization_mean: tuple[float, ...] | None = None
    normalization_std: tuple[float, ...] | None = None
    command_line: str = ""
    fixed_batch: int | None = None  # the model ran at this batch size only (a fixed-batch export)


@dataclass(frozen=True)
class ScanResult:
    provenance: Provenance
    sections: Mapping[str, Any] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()
    model_warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)  # check name → wall seconds
    schema_version: int = SCHEMA_VERSION

    def section(self, name: str):
        return self.sections.get(name)

    def metrics(self) -> dict[str, float]:
        """All sections' metrics in one flat dict (dotted names, see docs/results.md)."""
        out: dict[str, float] = {}
        for sec in self.sections.values():
            if hasattr(sec, "metrics"):
                out.update(sec.metrics())
        return out

    def to_html(self, gate_outcome=None) -> str:
        """The self-contained HTML report (robaudit.report.html.render_html)."""
        from .report.html import render_html

        return render_html(self, gate_outcome)

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "provenance": to_jsonable(self.provenance),
            "sections": {k: to_jsonable(v) for k, v in self.sections.items()},
            "flags": [to_jsonable(f) for f in self.flags],
            "model_warnings": list(self.model_warnings),
            "timings": dict(self.timings),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: dict) -> "ScanResult":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(
                f"result schema version {version!r} is not supported (this robaudit reads version {SCHEMA_VERSION}); "
                "re-run the scan with this version"
            )
        _import_builtin_sections()
        sections = {}
        for name, payload in data.get("sections", {}).items():
            typ = _SECTION_TYPES.get(name)
            sections[name] = from_jsonable(typ, payload) if typ else payload
        return cls(
            provenance=from_jsonable(Provenance, data["provenance"]),
            sections=sections,
            flags=tuple(from_jsonable(Flag, f) for f in data.get("flags", [])),
            model_warnings=tuple(data.get("model_warnings", [])),
            timings=dict(data.get("timings", {})),
            schema_version=version,
        )

    @classmethod
    def read_json(cls, path: str | Path) -> "ScanResult":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"result file {path} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not a robaudit JSON result: {exc}") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid robaudit result ({type(exc).__name__}: {exc})") from None


def _import_builtin_sections() -> None:
    from . import checks  # noqa: F401  (registers the built-in section types)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, non-finite floats → None (JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "value") and hasattr(obj, "name") and not isinstance(obj, (int, str)):  # Enum
        return obj.value
    return obj


def from_jsonable(typ: Any, data: Any) -> Any:
    """Inverse of :func:`to_jsonable`, guided by type hints."""
    if data is None:
        return None
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        hints = typing.get_type_hints(typ)
        kwargs = {f.name: from_jsonable(hints[f.name], data[f.name]) for f in dataclasses.fields(typ) if f.name in data}
        return typ(**kwargs)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return from_jsonable(non_none[0], data) if len(non_none) == 1 else data
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(args, data)) if args else tuple(data)
    if origin in (list,):
        return [from_jsonable(args[0], v) for v in data] if args else list(data)
    if origin in (dict, collections.abc.Mapping) or typ in (dict, Mapping):
        if len(args) == 2:
            return {k: from_jsonable(args[1], v) for k, v in data.items()}
        return dict(data)
    if typ is float:
        return float(data)
    return data
