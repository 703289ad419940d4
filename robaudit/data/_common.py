"""Shared helpers: request validation, the search-path list, uint8 pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError, DatasetNotFoundError, UsageError
from .spec import DataRequest

__all__ = [
    "SPLITS",
    "validate_request",
    "dataset_search_paths",
    "own_folder_roots",
    "not_found",
    "uint8_to_unit",
    "uint8_images",
    "check_labels",
]

SPLITS = ("test", "train")

# Where torchvision (and robaudit's own cache) usually keep datasets, in lookup order.
_USUAL_ROOTS = ("./data", "~/data", "~/.cache/torchvision", "~/.torchvision", "~/.cache/robaudit/data")
DEBIAN_ROOT = "/usr/share/datasets"
DEFAULT_DOWNLOAD_ROOT = "~/.cache/robaudit/data"


def validate_request(request: DataRequest) -> None:
    """Reject an impossible request before touching any file (UsageError, exit 2)."""
    if request.split not in SPLITS:
        raise UsageError(f"unknown split {request.split!r}; valid splits: {', '.join(SPLITS)}")
    if request.n is not None and (isinstance(request.n, bool) or int(request.n) < 1):
        raise UsageError(f"--num-samples (-n) must be at least 1 (got {request.n})")
    if request.image_size is not None and int(request.image_size) < 1:
        raise UsageError(f"--image-size must be at least 1 (got {request.image_size})")
    if request.resize is not None and int(request.resize) < 1:
        raise UsageError(f"--resize must be at least 1 (got {request.resize})")


def _expand(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def dataset_search_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The roots searched for built-in dataset ``name``, in order (absolute, de-duplicated).

    ``data_dir`` first, then each entry of ``$ROBAUDIT_DATA`` (os.pathsep-separated), then
    torchvision's usual roots, then Debian's ``/usr/share/datasets/<name>``. The first and the
    last may be the dataset's own folder (see :func:`own_folder_roots`).
    """
    raw: list[str | os.PathLike] = []
    if data_dir:
        raw.append(data_dir)
    raw += [p for p in os.environ.get("ROBAUDIT_DATA", "").split(os.pathsep) if p]
    raw += list(_USUAL_ROOTS)
    raw.append(f"{DEBIAN_ROOT}/{name}")
    out: list[Path] = []
    for p in raw:
        path = _expand(p)
        if path not in out:
            out.append(path)
    return out


def own_folder_roots(name: str, data_dir: str | os.PathLike | None = None) -> set[Path]:
    """Roots that may be the dataset's own folder (files directly inside): --data-dir and Debian's."""
    own = {_expand(f"{DEBIAN_ROOT}/{name}")}
    if data_dir:
        own.add(_expand(data_dir))
    return own


def not_found(name: str, split: str, looked_in: list[Path]) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked_in)
    return DatasetNotFoundError(
        f"{name} ({split} split) not found; looked in: {where}. "
        f"Pass --data-dir DIR, set ROBAUDIT_DATA, or add --download (needs internet)."
    )


def uint8_to_unit(x: np.ndarray) -> torch.Tensor:
    """uint8 [N,C,H,W] → float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)


def uint8_images(x: np.ndarray) -> torch.Tensor:
    """uint8 [N,C,H,W] kept as 0..255 (a quarter of float32's memory); DataSpec converts per batch."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


def check_labels(y: np.ndarray, num_classes: int, source: str | Path) -> torch.Tensor:
    """Integer labels → int64 tensor; DatasetError if any falls outside 0..num_classes-1."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{source}: labels have dtype {y.dtype}, expected integers")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DatasetError(f"{source}: labels range from {int(y.min())} to {int(y.max())}, expected 0..{num_classes - 1}")
    return torch.from_numpy(y.astype(np.int64))
