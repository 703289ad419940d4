"""Datasets: every loader returns a DataSpec with x float32 [N,C,H,W] in [0,1] (pixel space).

``load_dataset(name, request)`` accepts a registered name (``cifar10``, ``fashion-mnist``,
``demo``, plugins...), ``imagefolder:PATH``, or a ``.npz``/``.safetensors``/``.pt``/``.pth`` file.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import DatasetNotFoundError, UsageError
from ._common import dataset_search_paths, validate_request
from .files import TENSOR_SUFFIXES, load_image_folder, load_tensor_file
from .registry import DATASETS
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


def load_dataset(name: str, request: DataRequest | None = None) -> DataSpec:
    """Load dataset ``name`` as pixels in [0,1]: the first ``request.n`` samples of ``request.split``.

    Raises UsageError (bad request, unknown name), DatasetNotFoundError (files absent) or
    DatasetError (files unreadable).
    """
    request = request or DataRequest()
    validate_request(request)
    if name.lower().startswith(_IMAGEFOLDER):
        return load_image_folder(name[len(_IMAGEFOLDER):], request, name=name)
    path = Path(name).expanduser()
    if path.suffix.lower() in TENSOR_SUFFIXES:
        if not path.is_file():
            raise DatasetNotFoundError(f"dataset file {path} not found")
        return load_tensor_file(path, request, name=name)
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS and path.is_dir():
        raise UsageError(f"{name!r} is a folder, not a dataset name; to read it as images pass imagefolder:{name}")
    spec = DATASETS.get(key)(request)
    if request.n is not None and spec.n > request.n:  # a plugin that ignored n
        spec = replace(spec, x=spec.x[: request.n], y=spec.y[: request.n])
    return spec
