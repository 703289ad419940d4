"""Checkpoint format detection by content (magic bytes and zip member names), and file hashing."""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from pathlib import Path

from ..errors import CheckpointError
from ._onnx import looks_like_onnx

__all__ = ["FORMATS", "detect_format", "sha256_file", "check_exists"]

FORMATS = ("safetensors", "torch-export", "torchscript", "pickle", "onnx")
SUPPORTED = "safetensors, torch.export (.pt2), TorchScript, torch.save (.pt/.pth/.ckpt, zip or legacy pickle), ONNX"
_MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit


def check_exists(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; pass the weights file itself")
    return p


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return "safetensors", "torch-export", "torchscript", "pickle" or "onnx", judged by content, not extension."""
    p = check_exists(path)
    with open(p, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < n <= _MAX_SAFETENSORS_HEADER:
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return _zip_kind(p)
    if head[:1] == b"\x80":
        return "pickle"
    if looks_like_onnx(head):
        return "onnx"
    raise CheckpointError(f"{p} is not a supported checkpoint ({_describe(head)}); supported formats: {SUPPORTED}")


def _zip_kind(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{p} is a damaged zip archive (truncated or corrupt): {exc}") from None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if (
        "archive_format" in tails
        or any(t.startswith("models/") and t.endswith(".json") for t in tails)
        or "serialized_exported_program.json" in tails
    ):
        return "torch-export"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "pickle"
    raise CheckpointError(f"{p} is a zip archive but not a PyTorch checkpoint; supported formats: {SUPPORTED}")


def _describe(head: bytes) -> str:
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file, e.g. Keras"
    if head.startswith(b"\x08") or head.startswith(b"\n"):
        return "a protobuf file that is not an ONNX model"
    if not head:
        return "empty file"
    return f"starts with bytes {head[:8].hex()}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
