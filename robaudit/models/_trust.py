"""The trust model for model files: which inputs are data, which carry code (docs/security.md).

Data, loaded without a flag: safetensors, torch.save pickles that ``torch.load(weights_only=True)``
accepts, and the metadata inside both. Code, loaded only when the user passes
``--trust-checkpoint``: TorchScript archives, torch.export programs, pickles that need arbitrary
Python objects. An architecture named *inside* a file may only be a registry name; a Python file
runs only when the user types it (``--arch path.py:Class``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CheckpointError, UnsafeCheckpointError
from .architectures import ARCHITECTURES

__all__ = ["CODE_FORMATS", "refuse_code", "metadata_architecture", "quiet_loading"]

# format -> (what it is, why loading it can run code); the refusal prints both on one line
CODE_FORMATS = {
    "torchscript": (
        "a TorchScript archive",
        "its scripted methods run when it is loaded (__setstate__) and called (forward), and can write files",
    ),
    "torch-export": (
        "a torch.export program",
        "torch.export.load unpickles parts of it unsafely and runs its shape expressions and guards as Python, "
        "and its graph can call file I/O operators",
    ),
}

# a registry name (built-in or plugin), torchvision:NAME or timm:NAME; nothing that could be a path
_REGISTRY_NAME = re.compile(r"(torchvision:|timm:)?[A-Za-z0-9][A-Za-z0-9_.+-]*")
_LIBRARIES = ("torchvision:", "timm:")


def refuse_code(path: Path, fmt: str) -> UnsafeCheckpointError:
    """The one-line refusal for a code-bearing format loaded without ``--trust-checkpoint``."""
    what, why = CODE_FORMATS[fmt]
    return UnsafeCheckpointError(
        f"{path} is {what}, which can run code ({why}); pass --trust-checkpoint only if you trust its source, "
        f"or scan its weights instead (a state dict or safetensors, with --arch)"
    )


def metadata_architecture(name: str, path: Path) -> str:
    """``name`` if it is an installed registry name, ``torchvision:NAME`` or ``timm:NAME``; raise CheckpointError otherwise.

    Used for architectures read from a checkpoint's metadata, never for ``--arch`` (the user's own choice).
    torchvision and timm names are looked up in those libraries' own registries when the model is
    built; published weights are never named by metadata (the file holds the weights).
    """
    library = next((prefix for prefix in _LIBRARIES if name.startswith(prefix)), "")
    bare = name[len(library) :]
    pathlike = any(c in bare for c in "/\\:") or ".py" in bare.lower() or ".." in bare
    if pathlike or not _REGISTRY_NAME.fullmatch(name):
        kind = "a Python file or path" if pathlike else "not an architecture name"
        raise CheckpointError(
            f"{path} names the architecture {name!r} in its metadata, which is {kind}; robaudit never imports code "
            f"named inside a checkpoint. If you have read that file and trust it, pass it yourself: --arch path/to/net.py:Class"
        )
    if not library and name not in ARCHITECTURES:
        raise CheckpointError(
            f"{path} names the architecture {name!r} in its metadata, which is not installed here "
            f"(known: {', '.join(ARCHITECTURES.names())}); install the plugin that provides it or pass --arch"
        )
    return name


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence Python warnings and log records raised while a file is read.

    torch warns (protocol-5 pickles, sparse-tensor validation, TorchScript dispatch) and logs
    tracebacks (torch.export fallbacks) on stderr; robaudit reports a failed load in one line instead.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
