"""A restricted unpickler for dataset pickles (CIFAR): numpy arrays, dicts, lists, bytes; nothing else.

A data file must never execute code, so ``find_class`` resolves only the handful of numpy
globals needed to rebuild arrays; any other global makes the load fail with DatasetError.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

__all__ = ["load_data_pickle"]


def _allowed() -> dict[tuple[str, str], Any]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    frombuffer = core.numeric._frombuffer
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # how protocol-2 pickles spell bytes
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }
    for mod in ("numpy.core", "numpy._core"):  # pickles from numpy 1 and numpy 2
        table[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{mod}.multiarray", "scalar")] = scalar
        table[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return table


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualname: str):
        super().__init__(f"global {qualname} is not allowed")
        self.qualname = qualname


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def load_data_pickle(path: str | Path) -> Any:
    """Unpickle a dataset file (``encoding="bytes"``, like the CIFAR reference code), refusing code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except _Refused as exc:
        raise DatasetError(
            f"refused to read {path}: it references {exc.qualname}, which could run code; "
            f"a dataset pickle may only hold numpy arrays, lists, dicts and bytes"
        ) from None
    except Exception as exc:  # unpickling a damaged file can fail in many ways
        raise DatasetError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
