"""Typed errors. Library code raises these; only the CLI turns them into one line + exit code.

Exit codes (DESIGN.md): 0 ok · 1 gate failed · 2 usage · 3 input · 4 runtime.
"""
from __future__ import annotations

__all__ = [
    "RobauditError",
    "UsageError",
    "InputError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "DatasetError",
    "DatasetNotFoundError",
    "RuntimeFailure",
    "GateFailed",
]


class RobauditError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; the message is one line saying what to do."""

    exit_code = 4


class UsageError(RobauditError):
    """A bad option, an unknown name, a malformed thresholds file."""

    exit_code = 2


class InputError(RobauditError):
    """A checkpoint or dataset that can't be read or doesn't fit."""

    exit_code = 3


class CheckpointError(InputError):
    """The checkpoint can't be read, or its weights don't fit the architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that can run code when loaded or called (TorchScript, torch.export, a pickle of
    arbitrary objects): refused unless the user passes --trust-checkpoint (docs/security.md)."""


class DatasetError(InputError):
    """A dataset that can't be read or doesn't fit the model."""


class DatasetNotFoundError(DatasetError):
    """The dataset files are not on this machine."""


class RuntimeFailure(RobauditError):
    """A failure while computing (out of memory even at batch size 1, NaN everywhere, ...)."""

    exit_code = 4


class GateFailed(RobauditError):
    """One or more thresholds failed."""

    exit_code = 1
