"""Path-level operations that never follow a link planted under the root or the state folder: each
opens its anchor and the folders below it through launcher.archive.safedir.Dir and does one thing
(write atomically, read bounded, append, lock, make, remove, check). What every stage calls."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from launcher.archive.safedir import READ_LIMIT, UMASK, Dir, refuse, split_anchor, write_all
from launcher.core.errors import LauncherError

os.umask(UMASK)


def parent(path: str | Path, create: bool = False, out=None, replace: bool = False) -> tuple[Dir, str]:
    """(the opened folder of `path`, its last component), walked from the anchor without links."""
    base, parts = split_anchor(path)
    if not parts:
        base, parts = os.path.dirname(base), [os.path.basename(base)]
    d = Dir.anchor(base, create=create)
    try:
        return d.walk(parts[:-1], create=create, out=out, replace=replace), parts[-1]
    finally:
        d.close()


def write_atomic(path: str | Path, data: bytes, out=None, fsync: bool = False, temp: str | None = None) -> None:
    """`path` replaced whole through a temporary sibling (default `.<name>.tmp`), never via a link."""
    folder, name = parent(path, create=True, out=out)
    with folder:
        folder.write_atomic(name, data, out, temp=temp, fsync=fsync)


def read(path: str | Path, limit: int = READ_LIMIT) -> bytes | None:
    """Our own state file, read without following a link below its anchor; None if absent."""
    try:
        folder, name = parent(path)
    except FileNotFoundError:
        return None
    with folder:
        return folder.read(name, limit)


def append(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Append to a log of ours (O_APPEND|O_NOFOLLOW, regular files only)."""
    folder, name = parent(path, create=True)
    with folder:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o644, dir_fd=folder.fd)
        except OSError as err:
            st = folder.lstat(name)
            if st is None or err.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            raise refuse(folder.join(name), st.st_mode, "its log") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise refuse(folder.join(name), st.st_mode, "its log")
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def open_lock(path: str | Path, replace: bool = False) -> int:
    """The lock file `path` opened read-write (created if absent), never through a link."""
    folder, name = parent(path, create=True)
    with folder:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o644, dir_fd=folder.fd)
        except OSError as err:
            st = folder.lstat(name)
            if err.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO) or st is None:
                raise
            if replace and stat.S_ISLNK(st.st_mode):
                folder.unlink_entry(name)
                fd = os.open(name, flags, 0o644, dir_fd=folder.fd)
            else:
                raise refuse(folder.join(name), st.st_mode, "a lock") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise refuse(folder.join(name), st.st_mode, "a lock")
        return fd


def make_dirs(path: str | Path, out=None, replace: bool = False) -> None:
    Dir.of(path, create=True, out=out, replace=replace).close()


def remove(path: str | Path) -> None:
    """Unlink a file (or a link itself) of ours; absent is fine."""
    try:
        folder, name = parent(path)
    except FileNotFoundError:
        return
    with folder:
        folder.unlink_entry(name)


def remove_tree(path: str | Path) -> None:
    try:
        folder, name = parent(path)
    except FileNotFoundError:
        return
    with folder:
        folder.remove_tree(name)


def is_file(path: str | Path) -> bool:
    """A regular file is at `path`, reached without following a link below its anchor."""
    try:
        folder, name = parent(path)
    except (FileNotFoundError, NotADirectoryError, LauncherError):
        return False
    with folder:
        st = folder.lstat(name)
        return st is not None and stat.S_ISREG(st.st_mode)


def create_new(path: str | Path, mode: int = 0o644) -> bool:
    """Create the empty file `path` if nothing is there (O_EXCL, folders made without links);
    False if something (a link included) is there already."""
    folder, name = parent(path, create=True)
    with folder:
        try:
            os.close(folder.create(name, mode))
            return True
        except FileExistsError:
            return False


def exists(path: str | Path) -> bool:
    """Something is at `path` (a link counts, and is not followed)."""
    try:
        folder, name = parent(path)
    except (FileNotFoundError, LauncherError):
        return False
    with folder:
        return folder.lstat(name) is not None


def check_entry(path: str | Path, want: str, replace: bool = False) -> None:
    """Refuse (or with `replace`, unlink if a link) anything at `path` that is not a `want`
    ("file" or "folder")."""
    try:
        folder, name = parent(path)
    except FileNotFoundError:
        return
    with folder:
        st = folder.lstat(name)
        if st is None:
            return
        ok = stat.S_ISDIR(st.st_mode) if want == "folder" else stat.S_ISREG(st.st_mode)
        if ok:
            return
        if replace and stat.S_ISLNK(st.st_mode):
            print(f"prepare.force: removing the link {folder.join(name)} (not its target)", flush=True)
            folder.unlink_entry(name)
            return
        raise refuse(folder.join(name), st.st_mode, f"a {want}")
