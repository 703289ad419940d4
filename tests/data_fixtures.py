"""Writers for small synthetic datasets in exactly torchvision's (and Debian's) on-disk layouts."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_PREFIX = {"test": "t10k", "train": "train"}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    """IDX: 0, 0, type 0x08 (uint8), ndim, big-endian int32 dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    blob = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def write_mnist_like(folder: Path, gz: bool, sizes=(("test", 7), ("train", 9)), seed: int = 0) -> dict:
    """IDX image/label pairs directly in ``folder`` (e.g. root/MNIST/raw, or Debian's flat dir)."""
    out = {}
    g = rng(seed)
    for split, n in sizes:
        x = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = g.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{_IDX_PREFIX[split]}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{_IDX_PREFIX[split]}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (BINSTRING), as the real CIFAR files have them."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _dump(path: Path, obj: object, protocol: int) -> None:
    """protocol 2: a Python-2 / numpy-1 style pickle like the files from the CIFAR site."""
    if protocol <= 2:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        # numpy 1 names (GLOBAL opcodes are text lines, so a plain replace is safe)
        blob = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    else:
        blob = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(blob)


def write_cifar10(root: Path, per_batch: int = 4, protocol: int = 4, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{test_batch, data_batch_1..5, batches.meta}, bytes keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    g = rng(seed)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch}, protocol)
    out = {"names": [n.decode() for n in names], "train": []}
    for fname in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        data = g.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in g.integers(0, 10, per_batch)]
        _dump(
            folder / fname,
            {
                b"batch_label": fname.encode(),
                b"data": data,
                b"labels": labels,
                b"filenames": [b"f%d.png" % i for i in range(per_batch)],
            },
            protocol,
        )
        if fname == "test_batch":
            out["test"] = (data, labels)
        else:
            out["train"].append((data, labels))
    return out


def write_cifar100(root: Path, n_test: int = 5, n_train: int = 6, seed: int = 0) -> dict:
    """root/cifar-100-python/{test, train, meta}, bytes keys, fine + coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    g = rng(seed)
    fine = [f"class{i:02d}".encode() for i in range(100)]
    _dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20}, 4)
    out = {"names": [n.decode() for n in fine]}
    for split, n in (("test", n_test), ("train", n_train)):
        data = g.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine_labels = [int(v) for v in g.integers(0, 100, n)]
        _dump(folder / split, {b"data": data, b"fine_labels": fine_labels, b"coarse_labels": [v // 5 for v in fine_labels]}, 4)
        out[split] = (data, fine_labels)
    return out


def write_svhn(folder: Path, split: str = "test", n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """folder/{split}_32x32.mat: X uint8 [32,32,3,N] (HWCN), y uint8 [N,1] with 10 meaning digit 0."""
    import scipy.io

    g = rng(seed)
    x = g.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([10, 1, 2, 3, 10, 9][:n] + [5] * max(0, n - 6), dtype=np.uint8).reshape(-1, 1)
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
    return x, y
