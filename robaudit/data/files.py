"""Datasets from the user's own tensor files: x/y tensors in .npz/.safetensors/.pt.

Images stay in memory as the file holds them (uint8 0..255 or float32 in [0,1], NCHW) and are
converted to float per batch; y int64 [N]; the first ``n`` samples in the file's own order.
Image folders are in :mod:`robaudit.data.folder`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError, DatasetNotFoundError
from ._common import check_labels
from .spec import DataRequest, DataSpec

__all__ = ["TENSOR_SUFFIXES", "load_tensor_file", "tensors_to_spec"]

TENSOR_SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")


# --- tensor files -----------------------------------------------------------------------------


def _as_tensor(value: Any, key: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        arr = np.asarray(value)
        return torch.from_numpy(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False)))
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {key!r} is not a numeric array ({exc})") from None


def _names_list(value: Any, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # safetensors metadata: a JSON list
        from ..errors import InputError
        from ..jsonio import parse_json

        try:
            value = parse_json(value, f"{path}: the class_names metadata")
        except InputError as exc:
            raise DatasetError(str(exc)) from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{path}: class_names must be a list of strings")
    return tuple(value)


def _read_npz(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} can't be read (not an .npz archive, or truncated)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("x", "y", "class_names") if k in z.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DatasetError(
                f"{path} holds an object array, which robaudit won't unpickle; save x, y and "
                f"class_names as plain numeric/str arrays"
            ) from None
        raise DatasetError(f"{path} can't be read ({exc})") from None
    except Exception as exc:  # not a zip, truncated, ...
        raise DatasetError(f"{path} can't be read ({type(exc).__name__}: {exc})") from None


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out: dict[str, Any] = {k: f.get_tensor(k) for k in ("x", "y") if k in f.keys()}
            meta = f.metadata() or {}
    except Exception as exc:  # SafetensorError: truncated header, bad offsets, ...
        raise DatasetError(f"{path} can't be read ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if "class_names" in meta:
        out["class_names"] = meta["class_names"]
    return out


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise DatasetError(
                f"refused to read {path}: it needs {found.group(1)}, which could run code; "
                f"save a dict of torch tensors (x, y) and a list of str (class_names)"
            ) from None
        raise DatasetError(f"{path} can't be read (corrupt pickle)") from None
    except Exception as exc:  # not a torch file, truncated zip, ...
        raise DatasetError(f"{path} can't be read ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}; expected a dict with 'x' and 'y'")
    return {k: obj[k] for k in ("x", "y", "class_names") if k in obj}


def tensors_to_spec(
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: Sequence[str] | None,
    *,
    name: str,
    split: str,
    source: str,
    n: int | None = None,
) -> DataSpec:
    """Check and convert x/y to a DataSpec: x uint8 (÷255) or float in [0,1], NCHW, NHWC or NHW;
    y integers, one per image; class names default to "0".."max(y)"."""
    if x.ndim not in (3, 4):
        raise DatasetError(f"{source}: x has shape {list(x.shape)}; expected [N,C,H,W], [N,H,W,C] or [N,H,W]")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{source}: y has shape {list(y.shape)}; expected one label per image [{len(x)}]")
    if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise DatasetError(f"{source}: y has dtype {y.dtype}; expected integer labels")
    if len(x) == 0:
        raise DatasetError(f"{source} holds no samples")
    x, y = x[:n], y[:n]  # slice before converting to float
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        pass  # kept as 0..255 (a quarter of float32's memory); DataSpec converts per batch
    elif x.dtype.is_floating_point:
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise DatasetError(f"{source}: x contains NaN or Inf")
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise DatasetError(
                f"{source}: x values range from {lo:.4g} to {hi:.4g}; robaudit expects pixels in [0,1] "
                f"(or uint8 0..255); normalization belongs inside the model"
            )
    else:
        raise DatasetError(f"{source}: x has dtype {x.dtype}; expected uint8 or float pixels in [0,1]")
    y_np = y.to(torch.int64).numpy()
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(y_np.max()) + 1 if y_np.size else 0))
    y = check_labels(y_np, len(class_names), source)
    return DataSpec(name=name, split=split, x=x.contiguous(), y=y, class_names=tuple(class_names), source=source)


_READERS = {".npz": _read_npz, ".safetensors": _read_safetensors, ".pt": _read_torch, ".pth": _read_torch}


def load_tensor_file(path: str | os.PathLike, request: DataRequest, name: str | None = None) -> DataSpec:
    """``.npz`` / ``.safetensors`` / ``.pt`` / ``.pth`` with ``x``, ``y`` and optional ``class_names``
    → pixels in [0,1]. ``.pt`` files are read with ``weights_only=True`` (no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset file {path} not found")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: unknown dataset file type; use one of {', '.join(TENSOR_SUFFIXES)}")
    data = reader(path)
    missing = [k for k in ("x", "y") if k not in data]
    if missing:
        keys = " or ".join(repr(k) for k in missing)
        raise DatasetError(f"{path} has no {keys}; expected keys 'x' (images) and 'y' (labels)")
    return tensors_to_spec(
        _as_tensor(data["x"], "x", path),
        _as_tensor(data["y"], "y", path),
        _names_list(data.get("class_names"), path),
        name=name or path.name,
        split=request.split,
        source=str(path),
        n=request.n,
    )
