"""A small IDX reader (the MNIST file format), plain or gzip-compressed.

Header: two zero bytes, a type code, the number of dimensions, then one big-endian int32 per
dimension; the data follows in C order. Only the first ``limit`` items are decompressed.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["read_idx"]

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exact(f: io.BufferedIOBase, nbytes: int, path: Path, what: str) -> bytes:
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise DatasetError(f"{path} is truncated (its {what} is {len(data)} of {nbytes} bytes)")
    return data


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array in IDX file ``path`` (first ``limit`` items along axis 0 when given).

    Raises DatasetError naming the file when it is not IDX, truncated or a broken gzip stream.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            magic = _read_exact(f, 4, path, "header")
            if magic[:2] != b"\0\0" or magic[2] not in _DTYPES or magic[3] == 0:
                raise DatasetError(f"{path} is not an IDX file (header {magic.hex()})")
            dtype, ndim = _DTYPES[magic[2]], magic[3]
            dims = [int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "header"), ">i4")]
            count = dims[0] if limit is None else min(dims[0], limit)
            shape = (count, *dims[1:])
            data = _read_exact(f, int(np.prod(shape)) * dtype.itemsize, path, "data")
    except (OSError, EOFError, zlib.error, io.UnsupportedOperation) as exc:
        raise DatasetError(f"{path} can't be read ({type(exc).__name__}: {exc})") from exc
    # astype copies: the result is writable and in native byte order.
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))
