"""Datasets: every loader returns a DataSpec whose batches are float32 [b,C,H,W] in [0,1] (pixel space).

``load_dataset(name, request)`` accepts a registered name (``cifar10``, ``fashion-mnist``,
``demo``, plugins...), ``imagefolder:PATH``, or a ``.npz``/``.safetensors``/``.pt``/``.pth`` file,
and takes the ``request.n`` samples that ``request.sample`` chooses (:mod:`robaudit.data.sampling`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import DatasetNotFoundError, UsageError
from ._common import dataset_search_paths, validate_request
from .files import TENSOR_SUFFIXES, load_tensor_file
from .folder import load_image_folder
from .registry import DATASETS
from .sampling import resolve_mode, select
from .spec import DataRequest, DataSpec

__all__ = ["load_dataset", "DataSpec", "DataRequest", "DATASETS", "dataset_search_paths", "ALIASES"]

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
}

_IMAGEFOLDER = "imagefolder:"


def _load_all(name: str, request: DataRequest) -> tuple[DataSpec, str]:
    """(the dataset, read as far as ``request.n`` needs, its default sampling mode)."""
    if name.lower().startswith(_IMAGEFOLDER):
        return load_image_folder(name[len(_IMAGEFOLDER) :], replace(request, n=None), name=name), "stratified"
    if request.class_map is not None or request.resize is not None:
        raise UsageError("--class-map and --resize apply to imagefolder: datasets only")
    path = Path(name).expanduser()
    if path.suffix.lower() in TENSOR_SUFFIXES:
        if not path.is_file():
            raise DatasetNotFoundError(f"dataset file {path} not found")
        return load_tensor_file(path, request, name=name), "first"
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS and path.is_dir():
        raise UsageError(f"{name!r} is a folder, not a dataset name; to read it as images pass imagefolder:{name}")
    return DATASETS.get(key)(request), "first"


def load_dataset(name: str, request: DataRequest | None = None) -> DataSpec:
    """Load dataset ``name`` as pixels in [0,1]: ``request.n`` samples of ``request.split``, the
    first N or a seeded class-stratified subset (``request.sample``; default: stratified for image
    folders, first for the rest), scanned in dataset order, their dataset indices recorded.

    Raises UsageError (bad request, unknown name), DatasetNotFoundError (files absent) or
    DatasetError (files unreadable).
    """
    request = request or DataRequest()
    validate_request(request)
    asked = resolve_mode(request.sample, "first") if request.sample is not None else None
    # a stratified subset needs every label; "first" lets the built-in readers stop at n
    spec, default = _load_all(name, replace(request, n=None) if asked == "stratified" else request)
    mode = asked or default
    chosen = select(spec.y, request.n, mode, request.seed)
    if chosen is None:  # everything there is (or a reader that already stopped at the first n)
        return replace(spec, sample="first" if mode == "first" and request.n is not None else "all")
    return spec.subset(chosen, sample=mode)
