"""Refuse ``torch.export`` archives that would run code when loaded.

``torch.export.load`` unpickles some members with ``weights_only=False`` (tensor-subclass
weights, opaque constants, and — on failure — sample inputs) and can load AOTInductor native
libraries. Before loading, every member that could be unpickled is checked without executing it:
torch.save archives must load with ``weights_only=True``; raw pickles must not import any global.
"""
from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

import torch

__all__ = ["unsafe_export_members"]

_TEXT_TAILS = ("archive_format", "archive_version", "version", "byteorder", ".format_version", ".storage_alignment")
_IMPORTING_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ"}
_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia/")


def unsafe_export_members(path: Path) -> list[str]:
    """Return ``"member: reason"`` for each member that needs arbitrary code to load (empty = safe)."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        raw_payloads = _raw_tensor_payloads(z, names)
        for name in names:
            tail = name.split("/", 1)[1] if "/" in name else name
            if _is_inert(tail) or tail in raw_payloads:
                continue
            if tail.startswith(_NATIVE_DIRS) or tail.endswith((".so", ".dll", ".dylib")):
                problems.append(f"{tail}: compiled native code")
                continue
            if tail.startswith("data/constants/custom_obj"):
                continue  # TorchScript pickler: rebuilds registered torchbind classes only
            reason = _pickle_problem(z.read(name))
            if reason:
                problems.append(f"{tail}: {reason}")
    return problems


def _is_inert(tail: str) -> bool:
    return tail.endswith(".json") or tail.endswith(_TEXT_TAILS) or tail.startswith((".data/", "extra/"))


def _raw_tensor_payloads(z: zipfile.ZipFile, names: list[str]) -> set[str]:
    """Members that the archive's configs declare as raw tensor bytes (``use_pickle: false``)."""
    raw: set[str] = set()
    for name in names:
        tail = name.split("/", 1)[1] if "/" in name else name
        if not (tail.startswith(("data/weights/", "data/constants/")) and tail.endswith("config.json")):
            continue
        folder = tail.rsplit("/", 1)[0]
        try:
            config = json.loads(z.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue
        for meta in config.values():
            if isinstance(meta, dict) and meta.get("use_pickle") is False and "path_name" in meta:
                raw.add(f"{folder}/{meta['path_name']}")
    return raw


def _pickle_problem(data: bytes) -> str | None:
    """None if ``data`` cannot run code when unpickled; otherwise why not."""
    if data[:4] == b"PK\x03\x04":
        try:
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means torch would retry unsafely
            return f"not loadable with weights_only=True ({_first_line(exc)})"
        return None
    if data[:1] == b"\x80":
        try:
            for op, arg, _ in pickletools.genops(data):
                if op.name in _IMPORTING_OPS:
                    return f"pickle imports {arg}" if arg else "pickle imports a global"
        except Exception as exc:  # noqa: BLE001
            return f"unreadable pickle ({exc})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip()[:200]
    return (text.splitlines() or [type(exc).__name__])[0][:200]
