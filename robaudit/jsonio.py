"""The one way robaudit reads JSON: every file and string it parses as JSON goes through here.

Result files, part files, class maps, metadata values (safetensors headers, ONNX ``metadata_props``,
``robaudit.json`` in archives), ``--arch-kwargs`` and ``harden --resume`` fingerprints are all
untrusted text. :func:`parse_json` turns everything that can go wrong with such text into one
:class:`~robaudit.errors.InputError` line (exit 3) naming what was read:

* not UTF-8, not JSON, or cut short (``truncated?``);
* nested more deeply than :data:`MAX_DEPTH` levels — no file robaudit writes comes near it, and
  Python's parser would otherwise raise ``RecursionError`` (exit 4) at ~1,000 levels, or hand a
  structure to code that recurses into it;
* an object with a key given twice (``{"a": 0, "a": 1}``): ``json.loads`` silently keeps the last
  value, so the file would mean something other than what one of its lines says;
* an integer literal longer than Python's digit limit (a ``ValueError``).

:func:`read_json` adds what reading a file brings: missing, a folder, not a regular file (a FIFO
would block), or larger than ``max_bytes`` (refused before it is parsed: parsing takes ~10× the
text's size in memory). ``tests/test_jsonio.py`` fails when ``json.load``/``json.loads`` is called
anywhere else in the package.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["Pairs", "MAX_DEPTH", "MAX_FILE_BYTES", "parse_json", "read_json", "read_bytes", "depth"]

MAX_DEPTH = 100  # levels of arrays/objects; robaudit's own files use < 10
# A result or part file holds per-sample arrays and a few thumbnails: megabytes for 10,000 samples.
# A larger file is refused before it is parsed (parsing takes ~10× its size in memory).
MAX_FILE_BYTES = 1 << 30


class Pairs(list):
    """A JSON object as the list of its (key, value) pairs in file order, duplicates kept
    (``parse_json(..., keep_pairs=True)``): for a reader that reports a repeated key itself."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def depth(value: Any) -> int:
    """Levels of arrays/objects in a parsed JSON value (0 for a scalar); iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


class _Bad(Exception):
    """Why a text is not usable JSON (a phrase completing "... is not valid JSON: ")."""


def _parse(text: str | bytes | bytearray, max_depth: int, keep_pairs: bool = False) -> Any:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(f"not UTF-8 text (byte {exc.start})") from None
    if not isinstance(text, str):
        raise _Bad(f"not text but {type(text).__name__}")
    if not text.strip():
        raise _Bad("it is empty")
    try:
        value = json.loads(text, object_pairs_hook=Pairs if keep_pairs else _unique_keys)
    except _DuplicateKey as exc:
        raise _Bad(f"the key {_short(exc.key)} appears twice in one object; keep one") from None
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        how = "it ends before the JSON does (truncated?)" if ends_early else "not valid JSON"
        raise _Bad(f"{how} ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise _Bad(f"nested too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise _Bad(str(exc).splitlines()[0][:200]) from None
    if depth(value) > max_depth:  # Pairs are lists: their (key, value) tuples are not counted as levels
        raise _Bad(f"nested too deeply (more than {max_depth} levels)")
    return value


def parse_json(text: str | bytes | bytearray, what: str, *, max_depth: int = MAX_DEPTH, keep_pairs: bool = False) -> Any:
    """``text`` parsed as JSON; otherwise InputError ``"{what}: {why}"`` (one line).

    ``what`` names the source, e.g. ``"robaudit.mean in the metadata of m.safetensors"``.
    NaN/Infinity literals are accepted (part files hold them); readers that must refuse them check
    the values (``schema.check_json_values``). A key repeated in an object is refused, unless
    ``keep_pairs``: then every object is a :class:`Pairs` list and the caller judges repeats.
    """
    try:
        return _parse(text, max_depth, keep_pairs)
    except _Bad as exc:
        raise InputError(f"{what}: {exc}") from None


def read_bytes(path: str | os.PathLike[str], kind: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the input file ``path`` (a ``kind``: ``"class map"``), at most ``max_bytes``
    (default :data:`MAX_FILE_BYTES`); InputError when it is missing, a folder, not a regular file
    (a FIFO would block) or larger."""
    p = Path(path)
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb", closefd=True) as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"{p} is not a regular file, so not a {kind}")
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{kind} {p} not found") from None
    except IsADirectoryError:
        raise InputError(f"{p} is a folder, not a {kind}") from None
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise InputError(f"{p} is larger than {_size(max_bytes)}, far more than any {kind}")
    return raw


def read_json(
    path: str | os.PathLike[str], kind: str = "JSON file", *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH
) -> Any:
    """The JSON file at ``path`` (:func:`read_bytes`, then parsed as :func:`parse_json` does); every
    failure is one InputError line naming ``path`` and what it should be (``kind``: ``"robaudit part file"``)."""
    raw = read_bytes(path, kind, max_bytes=max_bytes)
    try:
        return _parse(raw, max_depth)
    except _Bad as exc:
        raise InputError(f"{path} is not a {kind}: {exc}") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


def _short(text: str) -> str:
    shown = json.dumps(text)
    return shown if len(shown) <= 60 else shown[:57] + '..."'
