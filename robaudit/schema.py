"""The building blocks of robaudit's JSON results: section types, their registry, the typed JSON
codec and the invariants the reader checks. The lowest data layer: checks define their section types
with :func:`section` here, :mod:`robaudit.results` (the ScanResult document, above the checks) reads
them back.

Each section type is a frozen dataclass registered under its name with :func:`section` where it is
defined (a built-in check's module, or a plugin's), so JSON reads back into the same types; a
section written by a plugin that isn't installed reads back as a plain dict. Every section exposes
``metrics()``: flat dotted names → floats, the vocabulary of gates and ``compare``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import InputError

if typing.TYPE_CHECKING:
    from .stats import Proportion

__all__ = [
    "Section",
    "section",
    "section_type",
    "Flag",
    "to_jsonable",
    "from_jsonable",
    "check_invariants",
    "check_json_values",
    "json_kind",
]

_SECTION_TYPES: dict[str, type] = {}


def section(name: str):
    """Class decorator registering a frozen dataclass as the section type called ``name``."""

    def deco(cls):
        cls.section_name = name
        _SECTION_TYPES[name] = cls
        return cls

    return deco


class Section:
    """Mixin for section dataclasses.

    ``metrics()``: the values gates and ``compare`` read. ``metric_names()``: every name this
    section can produce given its settings, also those without a value in this result (a gate on
    one fails with "no value" instead of "unknown metric"). ``outcomes()``: for metrics that are a
    proportion of the scanned samples (accuracies), the per-sample booleans they count, in
    dataset order; they give each such metric its n, its 95% interval (:mod:`robaudit.stats`) and
    compare's paired test.

    A section's dataclasses (the section and those nested in it) may declare, as ClassVars, what
    the JSON reader checks beyond types (:func:`check_invariants`), so a renderer never meets
    values that disagree: ``per_sample_fields`` (one value per scanned sample: length
    provenance.n), ``per_class_fields`` (one per class: length of class_names), ``aligned_fields``
    (groups of fields as long as the group's first; an int field in a group is their count),
    ``finite_fields``, ``non_negative_fields``, ``counted_fields`` ((count, flags) pairs: the int
    is the number of true flags), ``implied_fields`` ((a, b) pairs: a[i] implies b[i]), ``sample_index_fields`` (ints or lists of ints
    that index samples, in [0, n)) and ``encoded_fields`` (float32 base64 tensors of the field
    ``shape``, which must be provenance.input_shape). Names are dotted paths; ``*`` is every
    element of a list or value of a dict (``samples.*.planes.*.margin``). A tuple field whose
    default is ``()`` may be empty (not stored).
    """

    section_name: ClassVar[str] = ""

    def metrics(self) -> dict[str, float]:
        return {}

    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics())

    def outcomes(self) -> dict[str, tuple[bool, ...]]:
        return {}

    def intervals(self) -> dict[str, Proportion]:
        """k, n and the 95% interval of each proportion metric (from :meth:`outcomes` by default)."""
        from .stats import proportion

        return {name: proportion(values) for name, values in self.outcomes().items()}


@dataclass(frozen=True)
class Flag:
    """A validity warning: ``code`` keys its entry in docs/flags.md ("raised if", "what it means")."""

    code: str
    message: str
    severity: str = "warning"  # "warning" | "error"


def section_type(name: str) -> type | None:
    """The section type registered as ``name``, or None (a plugin's section that isn't installed)."""
    return _SECTION_TYPES.get(name)


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


def from_jsonable(typ: Any, data: Any, where: str = "value") -> Any:
    """Inverse of :func:`to_jsonable`, guided by type hints, checking every value's type.

    ``where`` is the field's dotted path (``sections.attacks.runs[0].eps``); a value of the wrong
    type or a missing required field raises InputError naming it. ``null`` is ``None`` in an
    optional field and NaN in a ``float`` one (to_jsonable writes non-finite floats as null).
    Unknown fields are ignored (results written by a newer robaudit of the same schema version).
    """
    if typ is Any or typ is object:
        return data
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if data is None and len(non_none) < len(args):
            return None
        return from_jsonable(non_none[0], data, where) if len(non_none) == 1 else data
    if data is None:
        if typ is float:
            return math.nan
        raise InputError(f"{where}: expected {_expected(typ)}, got null")
    if dataclasses.is_dataclass(typ):
        _require(isinstance(data, dict), where, typ, data)
        hints = typing.get_type_hints(typ)
        kwargs = {}
        for f in dataclasses.fields(typ):
            if f.name in data:
                kwargs[f.name] = from_jsonable(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{where}: missing field {f.name!r}")
        make: Any = typ  # the dataclass itself (is_dataclass narrows it to an instance for mypy)
        try:
            return make(**kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None
    if origin is tuple or typ is tuple:
        _require(isinstance(data, list), where, typ, data)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if args:
            if len(data) != len(args):
                raise InputError(f"{where}: expected a list of {len(args)} values, got {len(data)}")
            return tuple(from_jsonable(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
        return tuple(data)
    if origin is list or typ is list:
        _require(isinstance(data, list), where, typ, data)
        return [from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)] if args else list(data)
    if origin in (dict, collections.abc.Mapping) or typ in (dict, Mapping):
        _require(isinstance(data, dict), where, typ, data)
        if len(args) == 2:
            return {k: from_jsonable(args[1], v, f"{where}.{k}") for k, v in data.items()}
        return dict(data)
    if typ is float:
        _require(isinstance(data, (int, float)) and not isinstance(data, bool), where, typ, data)
        return float(data)
    if typ is int:
        _require(isinstance(data, int) and not isinstance(data, bool), where, typ, data)
        return data
    if typ in (bool, str):
        _require(isinstance(data, typ), where, typ, data)
        return data
    return data


def check_invariants(obj: Any, where: str, *, n: int, n_classes: int, input_shape: tuple[int, ...] | None = None) -> None:
    """Check what ``obj``'s dataclasses declare (see :class:`Section`) and recurse into their
    fields; InputError naming the field on the first violation."""
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_invariants(item, f"{where}[{i}]", n=n, n_classes=n_classes, input_shape=input_shape)
        return
    if isinstance(obj, Mapping):
        for key, item in obj.items():
            check_invariants(item, f"{where}.{key}", n=n, n_classes=n_classes, input_shape=input_shape)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    cls = type(obj)
    may_be_empty = {f.name for f in dataclasses.fields(obj) if f.default == ()}

    def length(path: str, expected: int, what: str) -> None:
        for at, value in _resolve(obj, path, where):
            if value is None or (path in may_be_empty and len(value) == 0):
                continue
            if isinstance(value, int) and not isinstance(value, bool):  # a count of the entries
                if value != expected:
                    raise InputError(f"{at} is {value}, but there are {expected} entries ({what})")
            elif not isinstance(value, (list, tuple)) or len(value) != expected:
                got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
                raise InputError(f"{at}: expected {expected} values ({what}), got {got}")

    for path in getattr(cls, "per_sample_fields", ()):
        length(path, n, "one per sample")
    for path in getattr(cls, "per_class_fields", ()):
        length(path, n_classes, "one per class")
    for group in getattr(cls, "aligned_fields", ()):
        first = getattr(obj, group[0])
        for path in group[1:]:
            length(path, len(first), f"one per entry of {where}.{group[0]}")
    for path in getattr(cls, "finite_fields", ()):
        for at, value in _resolve(obj, path, where):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise InputError(f"{at}: expected a finite number, got {value!r}")
    for path in getattr(cls, "non_negative_fields", ()):
        for at, value in _resolve(obj, path, where):
            if isinstance(value, (int, float)) and value < 0:  # NaN (a null) passes: it is 'no value'
                raise InputError(f"{at}: expected a number >= 0, got {value!r}")
    for path in getattr(cls, "sample_index_fields", ()):
        for at, value in _resolve(obj, path, where):
            for i in value if isinstance(value, (list, tuple)) else (value,):
                if not 0 <= i < n:
                    raise InputError(f"{at}: sample index {i} is outside the {n} samples")
    for count_path, flags_path in getattr(cls, "counted_fields", ()):
        count, flags = getattr(obj, count_path), getattr(obj, flags_path)
        if isinstance(count, int) and isinstance(flags, (list, tuple)) and count != sum(bool(v) for v in flags):
            raise InputError(
                f"{where}.{count_path} is {count}, but {where}.{flags_path} holds {sum(bool(v) for v in flags)} true values"
            )
    for sub_path, super_path in getattr(cls, "implied_fields", ()):
        sub, sup = getattr(obj, sub_path), getattr(obj, super_path)
        if isinstance(sub, (list, tuple)) and isinstance(sup, (list, tuple)) and any(a and not b for a, b in zip(sub, sup)):
            raise InputError(f"{where}.{sub_path}: a sample is true here but not in {where}.{super_path}")
    encoded = getattr(cls, "encoded_fields", ())
    shape = tuple(getattr(obj, "shape", ())) if encoded else ()  # a class with encoded_fields has a shape field
    if encoded and input_shape is not None and shape != input_shape:
        raise InputError(f"{where}.shape: {list(shape)} is not the inputs' shape {list(input_shape)}")
    for name in encoded:
        _check_encoded(getattr(obj, name), shape, f"{where}.{name}")
    for f in dataclasses.fields(obj):
        check_invariants(getattr(obj, f.name), f"{where}.{f.name}", n=n, n_classes=n_classes, input_shape=input_shape)


def _resolve(obj: Any, path: str, where: str) -> list[tuple[str, Any]]:
    """(field path, value) for a dotted ``path`` from ``obj``; ``*`` steps into every element of a
    list or value of a dict; a None on the way ends that branch (an optional field not stored)."""
    found = [(where, obj)]
    for step in path.split("."):
        following: list[tuple[str, Any]] = []
        for at, value in found:
            if value is None:
                continue
            if step == "*":
                items = value.items() if isinstance(value, Mapping) else enumerate(value)
                following += [(f"{at}[{k}]" if isinstance(k, int) else f"{at}.{k}", v) for k, v in items]
            else:
                following.append((f"{at}.{step}", value.get(step) if isinstance(value, Mapping) else getattr(value, step)))
        found = following
    return found


def _check_encoded(text: str, shape: tuple[int, ...], where: str) -> None:
    """A float32 tensor as base64 (checks.attacks.encode_tensor): it decodes to prod(shape) floats."""
    import base64
    import binascii

    if not shape or any(s < 1 for s in shape):
        raise InputError(f"{where}: the tensor shape {list(shape)} has no elements")
    try:
        size = len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not a base64-encoded tensor") from None
    if size != 4 * math.prod(shape):
        raise InputError(f"{where}: {size} bytes, but a float32 tensor of shape {list(shape)} has {4 * math.prod(shape)}")


_INT_LIMIT = 2**63  # robaudit writes no integer outside int64 (counts, indices, seeds, shapes)


def check_json_values(data: Any) -> None:
    """Reject NaN/Infinity literals (not JSON; robaudit writes non-finite numbers as null) and
    integers beyond int64, naming the field; iterative, so any depth json.loads accepted is fine."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {value} is not a JSON number (robaudit writes non-finite numbers as null)")
        elif isinstance(value, int) and not isinstance(value, bool) and not -_INT_LIMIT <= value < _INT_LIMIT:
            raise InputError(f"{where}: the integer {str(value)[:12]}… is out of range")


def _require(ok: bool, where: str, typ: Any, data: Any) -> None:
    if not ok:
        raise InputError(f"{where}: expected {_expected(typ)}, got {json_kind(data)}")


def _expected(typ: Any) -> str:
    if dataclasses.is_dataclass(typ) or typing.get_origin(typ) in (dict, collections.abc.Mapping) or typ in (dict, Mapping):
        return "an object"
    if typing.get_origin(typ) in (tuple, list) or typ in (tuple, list):
        return "a list"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(typ, str(typ))


def json_kind(data: Any) -> str:
    """A JSON value described for an error message: its type, and the value when it is short."""
    if data is None:
        return "null"
    if isinstance(data, bool):
        return f"{str(data).lower()}"
    if isinstance(data, dict):
        return "an object"
    if isinstance(data, list):
        return "a list"
    text = json.dumps(data) if isinstance(data, (str, int, float)) else repr(data)
    return {str: "the string ", int: "the number ", float: "the number "}.get(type(data), "") + (
        text if len(text) <= 40 else text[:37] + "…"
    )
