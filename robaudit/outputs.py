"""Output files: checked before any work, written atomically.

:func:`check_outputs` runs before a command loads anything: every path it will write must be
writable (its folder exists or can be created, is not a file, is writable), must not be a
folder, must not be one of the command's inputs, and no two outputs may land on the same file.
A bad path is a usage error (exit 2), so a scan never runs for minutes and then fails to save.

:func:`atomic_write` / :func:`atomic_target` write through a temporary file in the target's folder
and rename it over the target: a reader sees the old file or the complete new one, and a failure
(or Ctrl-C) leaves no partial file behind. :func:`atomic_write_all` writes a command's several
outputs (JSON, HTML, CSV, JUnit) this way and renames them only once every one is written, so a
full disk midway changes none of them. A write that fails once the work is done — disk full
(ENOSPC), a file-size limit (EFBIG), permission or folder changed — is a :class:`WriteError`
(exit 3) naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import UsageError, WriteError

__all__ = ["check_outputs", "atomic_target", "atomic_write", "atomic_write_all", "TEMP_PREFIX"]

TEMP_PREFIX = ".robaudit-tmp-"  # short, so a long target name never makes the temporary name too long
NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems
# what to do when a write fails with these errno values, after check_outputs accepted the path
_REMEDY: dict[int | None, str] = {
    errno.ENOSPC: "free space on its file system or give another output path",
    errno.EDQUOT: "free space within your disk quota or give another output path",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the file system allows; "
    "raise the limit or give another output path",
    errno.EACCES: "the folder is no longer writable; give another output path",
    errno.EPERM: "the folder is no longer writable; give another output path",
    errno.EROFS: "the file system is read-only; give another output path",
    errno.ENOENT: "its folder was removed while robaudit ran; give an existing folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; give another output path",
    errno.EEXIST: "a part of the path is a file, not a folder; give another output path",  # from mkdir
}


def check_outputs(
    files: Mapping[str, str | os.PathLike[str] | None] = {},
    folders: Mapping[str, tuple[str | os.PathLike[str] | None, Sequence[str]]] = {},
    inputs: Mapping[str, str | os.PathLike[str] | None] = {},
) -> None:
    """Raise UsageError (exit 2) unless every output path can be written.

    ``files``: option → file path (``{"--json": "r.json"}``); a string ending in ``/`` names a
    folder and is refused. ``folders``: option → (folder, names of the files written in it).
    ``inputs``: label → a path the command reads, which no output may overwrite. ``None`` = not given.
    """
    targets: dict[Path, str] = {}

    def claim(path: Path, option: str) -> None:
        key = _identity(path)
        if key in targets and targets[key] != option:
            raise UsageError(f"{targets[key]} and {option} would both write {path}; give them different paths")
        targets[key] = option

    for option, raw in files.items():
        if raw is None:
            continue
        claim(_check_path(option, raw, folder=False), option)
    for option, (raw, names) in folders.items():
        if raw is None:
            continue
        folder = _check_path(option, raw, folder=True)
        for name in names:
            claim(_check_path(option, folder / name, folder=False), option)
    for label, raw in inputs.items():
        if raw is None or str(raw) == "":
            continue
        key = _identity(Path(raw))
        if key in targets:
            raise UsageError(f"{targets[key]} {raw} would overwrite the input {label}; give another output path")


def _identity(path: Path) -> Path:
    """The absolute, symlink-resolved path (what two spellings of one file have in common)."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _check_path(option: str, raw: str | os.PathLike[str], *, folder: bool) -> Path:
    """The checks common to file and folder outputs, then the kind's own; OSError → UsageError."""
    text = os.fspath(raw)
    if not text.strip():
        raise UsageError(f"{option} needs a {'folder' if folder else 'file'} path, got an empty string")
    if "\0" in text:
        raise UsageError(f"{option} {text!r}: a path can't contain a NUL character")
    path = Path(text)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UsageError(f"{option}: the name {part[:40]}… is longer than {NAME_MAX} bytes; give a shorter path")
    try:
        return _check_folder_path(option, path) if folder else _check_file_path(option, text, path)
    except OSError as exc:  # a symlink loop, a name the file system refuses, ...
        raise UsageError(f"{option} {text}: {exc.strerror or exc}; give another path") from None


def _check_file_path(option: str, text: str, path: Path) -> Path:
    if path.is_dir():
        raise UsageError(f"{option} {text} is a folder; give the path of a file to write")
    if text.endswith(("/", os.sep)):
        raise UsageError(f"{option} {text} names a folder (it ends with {text[-1]}); give the path of a file to write")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise UsageError(f"{option} {path} is a broken symbolic link; remove it or give another path") from None
        if not stat.S_ISREG(mode):
            raise UsageError(f"{option} {path} exists and is not a regular file; give another path")
    _check_parent(option, path.parent, path)
    return path


def _check_folder_path(option: str, path: Path) -> Path:
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: no permission to write in this folder")
        return path
    if os.path.lexists(path):
        raise UsageError(f"{option} {path} exists and is not a folder; give the path of a folder")
    _check_parent(option, path.parent, path)
    return path


def _check_parent(option: str, parent: Path, target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable folder (the rest is created)."""
    folder = parent if str(parent) else Path(".")
    while not os.path.lexists(folder):
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {target}: {folder} is a file, not a folder; give another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {target}: no permission to write in {folder}")


@contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on any failure
    (Ctrl-C included) it is removed. Missing parent folders are created."""
    target = Path(path)
    tmp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a fresh file of our own; mode 0o666 minus the umask, like any file the user writes
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise _write_error(target, exc) from None
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from None
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes | bytearray | memoryview) -> None:
    """Write ``data`` (str as UTF-8; bytes or any bytes-like buffer as is) to ``path`` atomically (see
    :func:`atomic_target`)."""
    atomic_write_all({path: data})


def atomic_write_all(files: Mapping[str | os.PathLike[str], str | bytes | bytearray | memoryview]) -> None:
    """Write every ``path: data`` (str as UTF-8): all temporary files first, then the renames, so a
    failure while writing (a full disk on the third file) leaves every target as it was and no
    temporary file. WriteError (exit 3) names the file that failed."""
    with ExitStack() as stack:
        for path, data in files.items():
            tmp = stack.enter_context(atomic_target(path))
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            except OSError as exc:
                raise _write_error(Path(path), exc) from None


def _write_error(target: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or type(exc).__name__
    remedy = _REMEDY.get(exc.errno, "give another output path")
    return WriteError(f"cannot write {target}: {reason}; {remedy} (nothing was changed: the previous file, if any, is intact)")
