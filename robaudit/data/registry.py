"""The dataset registry. An entry is ``loader(request: DataRequest) -> DataSpec``, already sliced to
``request.n``, with x float32 [N,C,H,W] in [0,1]. Plugins register under ``robaudit.datasets``."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .spec import DataRequest, DataSpec

__all__ = ["DATASETS", "DatasetLoader"]

DatasetLoader = Callable[[DataRequest], DataSpec]

DATASETS: Registry[DatasetLoader] = Registry(
    "dataset",
    "robaudit.datasets",
    builtin_modules=("robaudit.data.torchvision_sets", "robaudit.data.demo"),
)
