"""Loading torch.save checkpoints: ``weights_only=True`` always first; arbitrary objects only when trusted."""
from __future__ import annotations

import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, UnsafeCheckpointError

__all__ = ["load_pickle"]

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _numpy_globals() -> list[Any]:
    """numpy scalars/arrays (e.g. a saved ``best_acc``): data only, as torch's docs suggest allowlisting."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    out: list[Any] = [np.ndarray, np.dtype, scalar, reconstruct]
    for mod in ("numpy.core", "numpy._core"):  # pickles written under numpy 1 and numpy 2
        out += [(scalar, f"{mod}.multiarray.scalar"), (reconstruct, f"{mod}.multiarray._reconstruct")]
    out += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return out


def load_pickle(path: Path, *, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; if it needs other globals, raise UnsafeCheckpointError unless ``trust``."""
    try:
        # an open file, not the path: torch.load dispatches "*.safetensors" paths by extension
        with torch.serialization.safe_globals(_numpy_globals()), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise _corrupt(path, exc) from None
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} needs arbitrary Python objects to load ({_unsafe_globals(path, exc)}) and could run code; "
                f"re-save it as a state dict or safetensors, or pass --trust-checkpoint if you trust its source"
            ) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/format errors all mean a damaged file
        raise _corrupt(path, exc) from None
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)  # only reached with trust
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{path} could not be unpickled even with --trust-checkpoint: {type(exc).__name__}: {_first_line(exc)}; "
            f"the classes it pickles must be importable (install their package or add it to PYTHONPATH)"
        ) from None


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid torch.save checkpoint (truncated or corrupt): {_first_line(exc)}")


def _unsafe_globals(path: Path, exc: Exception) -> str:
    """Names of the globals the pickle asks for, found by reading opcodes, never by executing it."""
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # zip format only
    except Exception:  # noqa: BLE001
        names = _legacy_globals(path)
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
    allowed |= _torch_allowed()
    names = [n for n in dict.fromkeys(names) if n not in allowed] or _GLOBAL_RE.findall(str(exc))
    if not names:
        return "unsupported pickle content"
    return ", ".join(names[:5]) + (f", ... {len(names) - 5} more" if len(names) > 5 else "")


def _legacy_globals(path: Path) -> list[str]:
    """GLOBAL opcodes of the pickles at the start of a legacy (non-zip) torch.save file."""
    names: list[str] = []
    try:
        with open(path, "rb") as f:
            for _ in range(4):  # magic number, protocol, sys info, the object itself
                for op, arg, _pos in pickletools.genops(f):
                    if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        names.append(arg.replace(" ", "."))
    except Exception:  # noqa: BLE001 - best effort; the caller falls back to torch's message
        pass
    return names


def _torch_allowed() -> set[str]:
    try:  # private, but only used to make the error message name the right global
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001
        return set()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
