"""The one exception type users see: a message that names the file, what was expected and the fix."""

from __future__ import annotations

import errno
from pathlib import Path


class LauncherError(Exception):
    """A failure explained to the user; the CLI prints the message (no traceback) and exits 1."""

    exit_code = 1


class UnitBusyError(LauncherError):
    """Another process holds the lock of this root or unit."""

    exit_code = 3


class ConfigError(LauncherError):
    """A config mistake (an option's value, a missing option): exit 2, as for any usage mistake."""

    exit_code = 2


OS_FIXES = {
    errno.ENOSPC: "free space on that filesystem (or point storage.root elsewhere), then run the command "
    "again: finished units are kept",
    errno.EDQUOT: "free space within your quota (or point storage.root elsewhere), then run the command again: "
    "finished units are kept",
    errno.EROFS: "that filesystem is read-only: point the option naming this path (storage.root, "
    "storage.state_dir, storage.archive_dir) at a writable folder",
    errno.EACCES: "this user may not write there: fix the folder's permissions or point the option naming "
    "this path at a folder you can write",
    errno.EXDEV: "root/.partial must be on the root's filesystem (a rename cannot cross filesystems): "
    "unmount or move away what is mounted or linked at .partial, then run the command again",
    errno.ENOTDIR: "a file sits where a folder belongs: move that file out of the way, then run the command again",
    errno.EISDIR: "a folder sits where a file belongs: move that folder out of the way, then run the command again",
}
OS_FIXES[errno.EPERM] = OS_FIXES[errno.EACCES]


def blocking_file(path: str) -> str:
    """The first part of `path` that exists and is not a folder (what ENOTDIR means), else `path`."""
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        here = Path(*parts[:i])
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            return str(here)
    return path


def describe_os_error(err: OSError, where: str | Path | None = None) -> str:
    """One line for a failed file operation: the path (or, when the system names none, the folder
    `where` it was writing), what the system said and a fix that works."""
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    path = " -> ".join(names) or (f"writing under {where}" if where else "a file")
    if err.errno == errno.ENOTDIR:  # name the file in the way, not the path that went through it
        path = next((b for b in map(blocking_file, reversed(names)) if b not in names), path)
    fix = OS_FIXES.get(err.errno, "check that path, then run the command again")
    return f"{path}: {err.strerror or err}. Fix: {fix}."
