"""Typed errors. Library code raises these; only the CLI turns them into one line + exit code.

Exit codes (docs/exit-codes.md): 0 ok · 1 gate failed · 2 usage · 3 input (and outputs the machine
refuses to write) · 4 robaudit's own failure.
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
    "WriteError",
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


class WriteError(RobauditError):
    """An output file could not be written once the work was done: the disk is full, a file-size
    limit (``ulimit -f``) or a quota was reached, the folder became read-only or went away. Exit 3,
    like an input the machine refuses: robaudit did not fail, and the fix is the user's (free space,
    another path). Output paths that are wrong from the start are refused before any work
    (UsageError, exit 2); the previous file is always left as it was (:mod:`robaudit.outputs`)."""

    exit_code = 3


class RuntimeFailure(RobauditError):
    """A failure while computing (out of memory even at batch size 1, NaN everywhere, ...)."""

    exit_code = 4


class GateFailed(RobauditError):
    """One or more thresholds failed."""

    exit_code = 1
