"""Built-in datasets read from torchvision's on-disk files with robaudit's own readers.

torchvision's dataset classes are used only for ``--download``; reading never goes through
them, so a CIFAR pickle is opened with a restricted unpickler and never runs code. Every loader
returns the images as uint8 [N,C,H,W] in memory (DataSpec hands out float pixels in [0,1] per
batch) and int64 labels, the first ``n`` samples in the files' own order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._common import (
    DEFAULT_DOWNLOAD_ROOT,
    check_labels,
    dataset_search_paths,
    not_found,
    own_folder_roots,
    uint8_images,
)
from ._safe_pickle import load_data_pickle
from .idx import read_idx
from .registry import DATASETS
from .spec import DataRequest, DataSpec

__all__ = ["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "FASHION_MNIST_CLASSES"]

DIGITS = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

# read(main file, split, n) → (uint8 [N,C,H,W], integer labels [N], class names, source)
Reader = Callable[[Path, str, int | None], tuple[np.ndarray, np.ndarray, tuple[str, ...], str]]


@dataclass(frozen=True)
class _Builtin:
    """Where one built-in dataset lives under a search root and how to read it."""

    name: str
    subdirs: tuple[str, ...]  # tried under every search root
    own_subdirs: tuple[str, ...]  # tried too where the root may be the dataset's own folder
    locate: Callable[[Path, str], Path | None]  # folder, split → the split's main file
    read: Reader
    download: Callable[[Path, str], None]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _find(ds: _Builtin, split: str, roots: list[Path], own: set[Path]) -> Path | None:
    for root in roots:
        for sub in ds.subdirs + (ds.own_subdirs if root in own else ()):
            hit = ds.locate(root / sub, split)
            if hit is not None:
                return hit
    return None


def _load(ds: _Builtin, request: DataRequest) -> DataSpec:
    roots = dataset_search_paths(ds.name, request.data_dir)
    hit = _find(ds, request.split, roots, own_folder_roots(ds.name, request.data_dir))
    if hit is None and request.download:
        root = Path(request.data_dir or DEFAULT_DOWNLOAD_ROOT).expanduser().absolute()
        _download(ds, root, request.split)
        hit = _find(ds, request.split, [root], {root})
        if hit is None:
            raise DatasetError(f"downloaded {ds.name} into {root}, but its {request.split} files are not there")
    if hit is None:
        raise not_found(ds.name, request.split, roots)
    x, y, class_names, source = ds.read(hit, request.split, request.n)
    return DataSpec(
        name=ds.name,
        split=request.split,
        x=uint8_images(x),
        y=check_labels(y, len(class_names), source),
        class_names=class_names,
        source=source,
        mean=ds.mean,
        std=ds.std,
    )


def _download(ds: _Builtin, root: Path, split: str) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        ds.download(root, split)
    except Exception as exc:  # no network, checksum mismatch, disk full, ...
        msg = " ".join(str(exc).split())
        raise DatasetError(
            f"downloading {ds.name} into {root} failed ({type(exc).__name__}: {msg}); "
            f"check the internet connection, or fetch the files yourself and pass --data-dir"
        ) from None


def _tv_download(cls_name: str, root: Path, split: str) -> None:
    import torchvision.datasets as tvd  # imported only for --download

    cls = getattr(tvd, cls_name)
    if cls_name == "SVHN":
        cls(str(root), split=split, download=True)
    else:
        cls(str(root), train=(split == "train"), download=True)


# --- MNIST / Fashion-MNIST: IDX files ---------------------------------------------------------

_IDX_PREFIX = {"test": "t10k", "train": "train"}


def _idx_file(folder: Path, split: str, kind: str) -> Path | None:
    base = folder / f"{_IDX_PREFIX[split]}-{kind}-ubyte"
    for path in (base, base.with_name(base.name + ".gz")):  # prefer the uncompressed copy
        if path.is_file():
            return path
    return None


def _read_idx_pair(class_names: tuple[str, ...], images: Path, split: str, n: int | None):
    labels = _idx_file(images.parent, split, "labels-idx1")
    if labels is None:
        raise DatasetError(f"found {images} but not its labels file {_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz]")
    x, y = read_idx(images, n), read_idx(labels, n)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{images} holds {x.dtype} of shape {list(x.shape)}, expected uint8 images [N,H,W]")
    if y.ndim != 1:
        raise DatasetError(f"{labels} holds shape {list(y.shape)}, expected labels [N]")
    if len(x) != len(y):
        raise DatasetError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x[:, None], y, class_names, str(images)


def _idx_builtin(name: str, tv_folder: str, tv_class: str, class_names, mean, std) -> _Builtin:
    # Flat IDX files (Debian's layout) are only trusted in a folder named for the dataset:
    # MNIST and Fashion-MNIST use identical file names.
    return _Builtin(
        name=name,
        subdirs=(f"{tv_folder}/raw", name, f"{name}/raw"),
        own_subdirs=("", "raw"),
        locate=partial(_idx_file, kind="images-idx3"),
        read=partial(_read_idx_pair, class_names),
        download=partial(_tv_download, tv_class),
        mean=mean,
        std=std,
    )


# --- CIFAR: Python pickles --------------------------------------------------------------------


def _str_keys(d: object, path: Path) -> dict:
    if not isinstance(d, dict):
        raise DatasetError(f"{path} holds a {type(d).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(values: object, path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise DatasetError(f"{path} has no {key!r} list")
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


@dataclass(frozen=True)
class _CifarFiles:
    test: tuple[str, ...]
    train: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str


_CIFAR10_FILES = _CifarFiles(
    ("test_batch",), tuple(f"data_batch_{i}" for i in range(1, 6)), "batches.meta", "label_names", "labels"
)
_CIFAR100_FILES = _CifarFiles(("test",), ("train",), "meta", "fine_label_names", "fine_labels")


def _cifar_locate(files: _CifarFiles, folder: Path, split: str) -> Path | None:
    first = folder / getattr(files, split)[0]
    return first if first.is_file() else None


def _cifar_read(files: _CifarFiles, first: Path, split: str, n: int | None):
    folder = first.parent
    meta = folder / files.meta
    if not meta.is_file():
        raise DatasetError(f"found {first} but not {meta} (the class names)")
    class_names = _names(_str_keys(load_data_pickle(meta), meta).get(files.names_key), meta, files.names_key)
    xs, ys, total = [], [], 0
    for fname in getattr(files, split):
        path = folder / fname
        if not path.is_file():
            raise DatasetError(f"{path} is missing (CIFAR {split} split is {', '.join(getattr(files, split))})")
        batch = _str_keys(load_data_pickle(path), path)
        data, labels = batch.get("data"), batch.get(files.labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{path}: 'data' is not a uint8 array [N, 3072]")
        labels = np.asarray(labels)
        if labels.shape != (len(data),):
            raise DatasetError(f"{path}: {files.labels_key!r} has shape {list(labels.shape)}, expected [{len(data)}]")
        keep = len(data) if n is None else min(len(data), n - total)
        xs.append(data[:keep].reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        ys.append(labels[:keep])
        total += keep
        if n is not None and total >= n:
            break
    source = str(first) if len(xs) == 1 else f"{folder} ({', '.join(getattr(files, split)[: len(xs)])})"
    return np.concatenate(xs), np.concatenate(ys), class_names, source


def _cifar_builtin(name: str, folder: str, tv_class: str, files: _CifarFiles, mean, std) -> _Builtin:
    return _Builtin(
        name=name,
        subdirs=(folder, name, f"{name}/{folder}"),
        own_subdirs=("",),
        locate=partial(_cifar_locate, files),
        read=partial(_cifar_read, files),
        download=partial(_tv_download, tv_class),
        mean=mean,
        std=std,
    )


# --- SVHN: MATLAB files -----------------------------------------------------------------------


def _svhn_locate(folder: Path, split: str) -> Path | None:
    path = folder / f"{split}_32x32.mat"
    return path if path.is_file() else None


def _svhn_read(path: Path, split: str, n: int | None):
    import scipy.io  # only SVHN needs scipy

    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except Exception as exc:  # truncated, not a .mat, HDF5-based .mat, ...
        raise DatasetError(f"{path} can't be read ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(f"{path}: 'X' is not a uint8 array [H, W, 3, N]")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
        raise DatasetError(f"{path}: 'y' does not hold one label per image")
    x, y = x[..., :n], y.reshape(-1)[:n].astype(np.int64)
    y[y == 10] = 0  # SVHN labels digit 0 as 10, as torchvision does
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y, DIGITS, str(path)


# --- the built-ins ----------------------------------------------------------------------------

_MNIST = _idx_builtin("mnist", "MNIST", "MNIST", DIGITS, (0.1307,), (0.3081,))
_FASHION = _idx_builtin(
    "fashion-mnist", "FashionMNIST", "FashionMNIST", FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
)
_CIFAR10 = _cifar_builtin(
    "cifar10", "cifar-10-batches-py", "CIFAR10", _CIFAR10_FILES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
)
_CIFAR100 = _cifar_builtin(
    "cifar100", "cifar-100-python", "CIFAR100", _CIFAR100_FILES, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
)
_SVHN = _Builtin(
    "svhn",
    ("", "svhn"),
    (),
    _svhn_locate,
    _svhn_read,
    partial(_tv_download, "SVHN"),
    (0.4377, 0.4438, 0.4728),
    (0.1980, 0.2010, 0.1970),
)


@DATASETS.register("cifar10")
def cifar10(request: DataRequest) -> DataSpec:
    """CIFAR-10 (``cifar-10-batches-py``): 3×32×32 pixels in [0,1], 10 classes."""
    return _load(_CIFAR10, request)


@DATASETS.register("cifar100")
def cifar100(request: DataRequest) -> DataSpec:
    """CIFAR-100 (``cifar-100-python``), fine labels: 3×32×32 pixels in [0,1], 100 classes."""
    return _load(_CIFAR100, request)


@DATASETS.register("mnist")
def mnist(request: DataRequest) -> DataSpec:
    """MNIST (``MNIST/raw`` IDX files, or Debian's flat layout): 1×28×28 pixels in [0,1]."""
    return _load(_MNIST, request)


@DATASETS.register("fashion-mnist")
def fashion_mnist(request: DataRequest) -> DataSpec:
    """Fashion-MNIST (``FashionMNIST/raw`` IDX files, or Debian's flat layout): 1×28×28 pixels in [0,1]."""
    return _load(_FASHION, request)


@DATASETS.register("svhn")
def svhn(request: DataRequest) -> DataSpec:
    """SVHN cropped digits (``{split}_32x32.mat``): 3×32×32 pixels in [0,1], label 10 read as 0."""
    return _load(_SVHN, request)
