#!/usr/bin/env python
"""Rebuild robaudit/data/assets/fashion_mnist_demo.npz: the first 1000 Fashion-MNIST test images.

x uint8 [1000,1,28,28], y int64 [1000], class_names str [10]. Byte-for-byte deterministic: the
zip members' timestamps are pinned. Usage: python scripts/build_demo_data.py [FASHION_MNIST_DIR]
(default /usr/share/datasets/fashion-mnist, Debian's layout; torchvision's FashionMNIST/raw works too).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robaudit.data.idx import read_idx  # noqa: E402
from robaudit.data.torchvision_sets import FASHION_MNIST_CLASSES  # noqa: E402

N = 1000
OUT = ROOT / "robaudit" / "data" / "assets" / "fashion_mnist_demo.npz"
MAX_BYTES = 1_000_000


def _find(folder: Path, stem: str) -> Path:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    raise SystemExit(f"{folder}/{stem}[.gz] not found")


def _pin_timestamps(npz: bytes) -> bytes:
    """Rewrite the zip with fixed member timestamps so rebuilding gives identical bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(npz)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            pinned = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            pinned.compress_type = zipfile.ZIP_DEFLATED
            pinned.external_attr = 0o644 << 16
            dst.writestr(pinned, src.read(info.filename), compresslevel=9)
    return out.getvalue()


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    x = read_idx(_find(src, "t10k-images-idx3-ubyte"), N)
    y = read_idx(_find(src, "t10k-labels-idx1-ubyte"), N).astype(np.int64)
    assert x.shape == (N, 28, 28) and x.dtype == np.uint8 and y.shape == (N,), (x.shape, y.shape)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x[:, None], y=y, class_names=np.array(FASHION_MNIST_CLASSES))
    data = _pin_timestamps(buf.getvalue())
    if len(data) >= MAX_BYTES:
        raise SystemExit(f"demo asset is {len(data)} bytes; it must stay under {MAX_BYTES}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes, {N} images)")


if __name__ == "__main__":
    main()
