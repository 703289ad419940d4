"""The ``demo`` dataset: robaudit's embedded sample, the first 1000 Fashion-MNIST test images.

It needs no download, so ``robaudit scan --data demo`` works on any machine. Rebuild the asset
with ``scripts/build_demo_data.py``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..errors import DatasetError, UsageError
from ._common import check_labels, uint8_images
from .registry import DATASETS
from .spec import DataRequest, DataSpec
from .torchvision_sets import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["demo", "DEMO_ASSET"]

DEMO_ASSET = "fashion_mnist_demo.npz"


@DATASETS.register("demo")
def demo(request: DataRequest) -> DataSpec:
    """The first 1000 Fashion-MNIST test images (uint8 in the package; returned as pixels in [0,1])."""
    if request.split != "test":
        raise UsageError("the demo dataset has only a test split (the first 1000 Fashion-MNIST test images)")
    ref = resources.files("robaudit.data").joinpath("assets").joinpath(DEMO_ASSET)
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
            x, y = z["x"][: request.n], z["y"][: request.n]
    except Exception as exc:  # missing from a broken install, truncated, ...
        raise DatasetError(
            f"robaudit's embedded demo data ({ref}) can't be read ({type(exc).__name__}: {exc}); reinstall robaudit"
        ) from None
    return DataSpec(
        name="fashion-mnist",
        split="test",
        x=uint8_images(x),
        y=check_labels(y, len(FASHION_MNIST_CLASSES), str(ref)),
        class_names=FASHION_MNIST_CLASSES,
        source=f"robaudit embedded sample: first 1000 Fashion-MNIST test images ({ref})",
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        extra={"embedded_sample": True},
    )
