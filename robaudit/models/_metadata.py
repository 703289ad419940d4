"""robaudit's metadata in a checkpoint (``robaudit.*`` keys: the architecture, its kwargs, class
count, input shape, mean/std, class names, version), read into :class:`Settings` and merged with
what the caller gave; written as strings by :func:`metadata_strings` (see :mod:`.checkpoint`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UsageError
from .spec import Preprocessing

__all__ = [
    "META",
    "Settings",
    "metadata_strings",
    "parse_metadata",
    "merge_settings",
    "metadata_preprocessing",
    "metadata_class_names",
    "metadata_json",
    "sort_safetensors_metadata",
    "parse_shape",
    "parse_floats",
    "check_stats",
    "buffer_values",
]

META = "robaudit."


@dataclass
class Settings:
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def metadata_preprocessing(meta: Settings, p: Path) -> Preprocessing | None:
    """mean/std and a square input size stated by robaudit metadata, as a Preprocessing (None if neither)."""
    if meta.mean is None and meta.std is None and meta.input_shape is None:
        return None
    shape = meta.input_shape
    crop = shape[1] if shape is not None and shape[1] == shape[2] else None
    return Preprocessing(source=f"the robaudit metadata in {p.name}", crop_size=crop, mean=meta.mean, std=meta.std)


def metadata_class_names(meta: Mapping[str, str], p: Path) -> tuple[str, ...] | None:
    raw = meta.get(f"{META}class_names")
    if not raw:
        return None
    names = metadata_json(raw, f"{META}class_names", p)
    return tuple(str(n) for n in names) if isinstance(names, list) else None


def metadata_json(raw: Any, key: str, p: Path) -> Any:
    """A metadata value that holds JSON (safetensors header, ONNX metadata_props, a pickle's
    top-level dict), read by robaudit's one JSON reader: malformed, nested too deeply or huge is
    a CheckpointError (exit 3) naming the key."""
    from ..errors import InputError
    from ..jsonio import parse_json

    try:
        return parse_json(raw, f"{p} has malformed metadata {key}")
    except InputError as exc:
        raise CheckpointError(f"{exc}; re-save it with robaudit") from None


def sort_safetensors_metadata(raw: bytes) -> bytes:
    """The safetensors bytes ``raw`` with the header's ``__metadata__`` keys sorted.

    The safetensors writer stores metadata from a hash map, so the same weights and metadata give
    different bytes (and sha256) on every save; sorting makes the file a function of its content,
    so provenance hashes (``robaudit.harden.parent_sha256``) and resumed runs compare equal.
    """
    import struct

    from ..jsonio import parse_json

    (n,) = struct.unpack("<Q", raw[:8])
    header = parse_json(raw[8 : 8 + n], "the safetensors header robaudit just serialized")
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the format pads the header to 8-byte alignment
    return struct.pack("<Q", len(head)) + head + raw[8 + n :]


def metadata_strings(
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """The ``robaudit.*`` metadata as strings (also usable as a ``robaudit.json`` extra file)."""
    from .._version import __version__

    meta = {f"{META}version": __version__}
    if arch is not None:
        meta[f"{META}arch"] = str(arch)
    if arch_kwargs:
        meta[f"{META}arch_kwargs"] = json.dumps(arch_kwargs, sort_keys=True)
    if num_classes is not None:
        meta[f"{META}num_classes"] = str(int(num_classes))
    if input_shape is not None:
        meta[f"{META}input_shape"] = json.dumps(list(parse_shape(input_shape, "input_shape") or ()))
    for key, values in (("mean", mean), ("std", std)):
        if values is not None:
            meta[f"{META}{key}"] = json.dumps([float(v) for v in values])
    if class_names is not None:
        meta[f"{META}class_names"] = json.dumps([str(c) for c in class_names])
    return meta


def merge_settings(given: Settings, stated: Settings, file_shape: tuple[int, int, int] | None, source: str) -> Settings:
    """Explicit values win over metadata for arch, kwargs, classes and shape; mean/std stated by the
    model (``source``) must agree with given ones. Metadata arch_kwargs apply only to the metadata's arch."""
    same_arch = given.arch is None or given.arch == stated.arch
    for name, mine, theirs in (("--mean", given.mean, stated.mean), ("--std", given.std, stated.std)):
        if mine is not None and theirs is not None and not _same_stats(mine, theirs):
            raise UsageError(
                f"{name} {','.join(f'{v:g}' for v in mine)} conflicts with {','.join(f'{v:g}' for v in theirs)} "
                f"from {source}; drop --mean/--std (the model's own are used)"
            )
    return Settings(
        arch=given.arch or stated.arch,
        arch_kwargs=given.arch_kwargs if given.arch_kwargs is not None else (stated.arch_kwargs if same_arch else None),
        num_classes=given.num_classes if given.num_classes is not None else stated.num_classes,
        input_shape=given.input_shape or stated.input_shape or file_shape,
        mean=stated.mean if stated.mean is not None else given.mean,
        std=stated.std if stated.std is not None else given.std,
    )


def _same_stats(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal up to printing precision; one value stands for every channel."""
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        return False
    n = max(len(a), len(b))
    a, b = list(a) * (n if len(a) == 1 else 1), list(b) * (n if len(b) == 1 else 1)
    return all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(a, b))


def parse_metadata(meta: Mapping[str, str], p: Path) -> Settings:
    def get(key: str, kind: type | None = None) -> Any:
        raw = meta.get(META + key)
        if raw is None:
            return None
        if kind is None or kind not in (str, int):
            value = metadata_json(raw, META + key, p)
        else:
            try:
                value = raw if kind is str else int(raw)
            except (TypeError, ValueError):
                raise CheckpointError(
                    f"{p} has malformed metadata {META}{key}={_clip(raw)!r}; re-save it with robaudit"
                ) from None
        if kind not in (None, str, int) and not isinstance(value, kind):
            raise CheckpointError(f"{p} has malformed metadata {META}{key}={_clip(raw)!r}; re-save it with robaudit")
        return value

    try:
        shape = get("input_shape", list)
        return Settings(
            arch=get("arch", str),
            arch_kwargs=get("arch_kwargs", dict),
            num_classes=get("num_classes", int),
            input_shape=parse_shape(shape, f"{META}input_shape") if shape is not None else None,
            mean=parse_floats(get("mean", list)),
            std=parse_floats(get("std", list)),
        )
    except UsageError as exc:
        raise CheckpointError(f"{p} has malformed metadata: {exc}") from None


def _clip(raw: Any, limit: int = 80) -> Any:
    """A metadata value short enough for an error line."""
    return raw if not isinstance(raw, str) or len(raw) <= limit else raw[:limit] + "…"


def parse_shape(value: Sequence[int] | None, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be three integers C,H,W; got {value!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise UsageError(f"{what} must be three positive integers C,H,W; got {list(dims)}")
    return dims


def parse_floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"mean/std must be numbers; got {values!r}") from None


def check_stats(s: Settings, channels: int | None) -> None:
    for name, values in (("--mean", s.mean), ("--std", s.std)):
        if values is not None and channels is not None and len(values) not in (1, channels):
            raise UsageError(f"{name} has {len(values)} values but the model takes {channels}-channel input")


def buffer_values(t: torch.Tensor | None) -> tuple[float, ...] | None:
    return None if t is None else tuple(float(v) for v in t.flatten().tolist())
