"""Loading torch.save checkpoints: ``weights_only=True`` always first; arbitrary objects only when trusted.

The guarantee rests on torch's weights-only unpickler, which resolves only allowlisted globals
(tensors, storages, containers, and here a few numpy types); torch < 2.6 had a bypass
(CVE-2025-32434), so older versions are refused. The names of the refused globals come from
``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle without executing it.
"""

from __future__ import annotations

import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from ._trust import quiet_loading

__all__ = ["load_pickle", "check_safe_torch"]

_MIN_TORCH = (2, 6)  # weights_only=True could run code before 2.6 (CVE-2025-32434)


def _numpy_globals() -> list[Any]:
    """numpy scalars/arrays (e.g. a saved ``best_acc``): data only, as torch's docs suggest allowlisting."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    out: list[Any] = [np.ndarray, np.dtype, scalar, reconstruct]
    for mod in ("numpy.core", "numpy._core"):  # pickles written under numpy 1 and numpy 2
        out += [(scalar, f"{mod}.multiarray.scalar"), (reconstruct, f"{mod}.multiarray._reconstruct")]
    out += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return out


def check_safe_torch() -> None:
    """Raise CheckpointError when this torch's ``weights_only=True`` loader is known to run code."""
    version = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
    if version < _MIN_TORCH:
        raise CheckpointError(
            f"torch {torch.__version__} can run code while loading a pickle even with weights_only=True "
            f"(CVE-2025-32434); upgrade to torch>=2.6 to load pickled checkpoints"
        )


def load_pickle(path: Path, *, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; if it needs other globals, raise UnsafeCheckpointError unless ``trust``."""
    check_safe_torch()
    try:
        # an open file, not the path: torch.load dispatches "*.safetensors" paths by extension
        with quiet_loading(), torch.serialization.safe_globals(_numpy_globals()), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise _corrupt(path, exc) from None
        if not trust:
            raise UnsafeCheckpointError(
                f"{path} {_refused(path, exc)} and could run code; "
                f"re-save it as a state dict or safetensors, or pass --trust-checkpoint if you trust its source"
            ) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/format errors all mean a damaged file
        raise _corrupt(path, exc) from None
    try:
        with quiet_loading(), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)  # only reached with trust
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{path} could not be unpickled even with --trust-checkpoint: {type(exc).__name__}: {_first_line(exc)}; "
            f"the classes it pickles must be importable (install their package or add it to PYTHONPATH)"
        ) from None


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid torch.save checkpoint (truncated or corrupt): {_first_line(exc)}")


def _refused(path: Path, exc: Exception) -> str:
    """What the weights-only unpickler refused: the globals torch finds by reading the pickle (zip
    checkpoints), else the global or opcode torch's own message names (legacy files)."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: torch's message names the culprit
        names = []
    if not names:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            names = [found.group(1)]
        elif (op := re.search(r"Unsupported operand (\d+)", text)) is not None:
            code = int(op.group(1))
            name = next((o.name for o in pickletools.opcodes if ord(o.code) == code), "?")
            return f"uses pickle opcode {name} ({code}), which torch's weights-only loader does not accept,"
        else:
            return "holds pickle content that torch's weights-only loader does not accept,"
    listed = ", ".join(names[:5]) + (f", ... {len(names) - 5} more" if len(names) > 5 else "")
    return f"needs arbitrary Python objects to load ({listed})"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
