"""The archive a tar index reads from, opened for verify, stage and the loaders
(launcher.tarformat.dataset): a regular file (never blocking on a FIFO) that must be the file the
index recorded, unchanged. Stdlib only."""

from __future__ import annotations

import os
import stat

from launcher.archive.index import IDENTITY_KEYS, stat_identity
from launcher.core.errors import LauncherError

AGAIN = "run `launcher prepare storage.format=tar` again to index the archive now there"


class ArchiveChanged(LauncherError):
    """The archive is not the file, unchanged, that the tar index was built from."""


def open_checked(path: str, identity: dict, index_label: str) -> int:
    """A descriptor of the archive at `path` (a regular file, never blocking on a FIFO), which must
    be the file the tar index recorded, unchanged; else one LauncherError naming it and the fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise ArchiveChanged(
            f"The archive {path} cannot be opened ({err.strerror or err}); the tar index {index_label} reads its "
            f"images from it. Put it back there, point storage.archive_dir at it, or {AGAIN}."
        ) from None
    st = os.fstat(fd)
    now = stat_identity(path, st)
    differ = [k for k in IDENTITY_KEYS if now[k] != identity.get(k)]
    if differ or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ArchiveChanged(
            f"The archive {path} is not the file the tar index {index_label} was built from ({what_changed(differ)}; "
            f"it had {identity.get('size'):,} bytes, it has {st.st_size:,}). Put the original archive back, or {AGAIN}."
        )
    return fd


def what_changed(differ: list[str]) -> str:
    """Why an archive is another file: its identity fields that differ, and what changes them."""
    if not differ:
        return "not a regular file"
    if differ == ["ctime_ns"]:  # same size, mtime, inode: its metadata changed, or a rewrite restored its mtime
        return (
            "only its ctime differs: its inode changed since (chmod, chown, a hard link made or removed, or a "
            "rewrite that put its old mtime back), and only a new read can tell its bytes are the same"
        )
    return f"{', '.join(differ)} differ: rewritten, replaced or truncated since"
