"""Outputs that never follow a link planted under the root or the state folder.

Roots on shared, group-writable file systems are written by prepare running as root: anybody in the
group can plant a symbolic link (or a FIFO, or a file where a folder belongs) at a path launcher is
about to write. Every output is therefore made relative to an opened folder:

- an *anchor* (storage.root, storage.state_dir, verify's report folder) is the one path opened as
  configured (links in it are the user's own choice); `trust()` registers it, also for the jobs
  this process submits (they inherit `LAUNCHER_TRUSTED`);
- below an anchor every folder is opened component by component with O_NOFOLLOW|O_DIRECTORY
  (created with mkdirat), files are created with O_CREAT|O_EXCL|O_NOFOLLOW, temporaries O_EXCL
  after unlinking a stale one (unlinkat: never followed), renames are renameat between opened
  folders, trees are deleted by fd-based walks (shutil.rmtree with dir_fd, on a real folder only);
- our own state is read with O_NOFOLLOW on every component below the anchor and a regular-file
  check on the descriptor, in bounded reads;
- a link, FIFO, socket, device or file found where an output belongs is refused with one line that
  names it and the fix; with `replace=True` (prepare.force=true) the LINK itself is unlinked — never
  its target — and the output made anew.

This module holds the anchors and `Dir`, an opened folder and its fd-relative operations;
launcher.archive.safefs the path-level operations built on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
from pathlib import Path

from launcher.core.errors import LauncherError

ENV = "LAUNCHER_TRUSTED"


_ANCHORS: set[str] = set()


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


READ_LIMIT = 1 << 30  # the largest state file we read (a 1.28 M-image manifest is ~60 MB)


class UnsafePath(LauncherError):
    """Something other than what launcher writes sits where an output belongs."""


def trust(*paths: str | Path) -> None:
    """Register folders as anchors: opened as configured, everything below them without links."""
    for p in paths:
        _ANCHORS.add(os.path.abspath(p))
    os.environ[ENV] = os.pathsep.join(sorted(anchors()))


def anchors() -> set[str]:
    return _ANCHORS | {p for p in os.environ.get(ENV, "").split(os.pathsep) if p}


def split_anchor(path: str | Path) -> tuple[str, list[str]]:
    """(the shallowest registered anchor holding `path`, the components below it). A path under no
    anchor is anchored at its own parent folder: only its last component is opened without links."""
    full = os.path.abspath(path)
    best = ""
    for a in anchors():  # the shallowest: a state folder inside the root is walked from the root
        if (full == a or full.startswith(a.rstrip("/") + "/")) and (not best or len(a) < len(best)):
            best = a
    if not best:
        best = os.path.dirname(full)
    rest = full[len(best) :].strip("/")
    return best, [c for c in rest.split("/") if c]


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def refuse(path: str, mode: int, want: str) -> UnsafePath:
    what = kind_of(mode)
    fix = f"remove the link {path}" if stat.S_ISLNK(mode) else f"move {path} away"
    return UnsafePath(
        f"{path} is {what} where launcher writes {want}; nothing was written through it. Check who put "
        f"it there, then {fix} (prepare.force=true removes a link, never its target) and run again."
    )


def named(err: OSError, path: str, path2: str | None = None) -> OSError:
    """The same error naming `path` in full (calls relative to an opened folder name only the last
    component)."""
    return type(err)(err.errno, err.strerror, path, None, path2)


class Dir:
    """An opened folder: outputs are made relative to it, never through a link."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    # ------------------------------------------------ opening

    @classmethod
    def anchor(cls, path: str | Path, create: bool = False, mode: int = 0o755) -> Dir:
        """Open a configured folder as it is configured (links in the path are the user's)."""
        path = os.path.abspath(path)
        if create:
            os.makedirs(path, mode=mode, exist_ok=True)
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)  # callers name the option

    @classmethod
    def of(cls, path: str | Path, create: bool = False, out=None, replace: bool = False) -> Dir:
        """Open the folder `path`: its anchor as configured, each component below without links."""
        base, parts = split_anchor(path)
        d = cls.anchor(base, create=create)
        try:
            return d.walk(parts, create=create, out=out, replace=replace)
        finally:
            d.close()

    def join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def sub(self, name: str, create: bool = False, out=None, replace: bool = False) -> Dir:
        """The folder `name` in this one, opened without following a link (made if `create`)."""
        for attempt in range(3):
            try:
                return Dir(os.open(name, DIR_FLAGS, dir_fd=self.fd), self.join(name))
            except FileNotFoundError:
                if not create:
                    raise
                self.mkdir(name, out)
            except (NotADirectoryError, OSError) as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = self.lstat(name)
                if st is None:
                    continue
                if replace and stat.S_ISLNK(st.st_mode) and attempt == 0:
                    self.unlink_entry(name)
                    continue
                raise refuse(self.join(name), st.st_mode, "a folder") from None
        raise LauncherError(f"{self.join(name)} keeps changing while launcher opens it; run again.")

    def walk(self, parts, create: bool = False, out=None, replace: bool = False) -> Dir:
        """The folder at `parts` below this one (a new Dir; this one stays open)."""
        d = Dir(os.dup(self.fd), self.path)
        for name in parts:
            try:
                nxt = d.sub(name, create=create, out=out, replace=replace)
            finally:
                d.close()
            d = nxt
        return d

    def mkdir(self, name: str, out=None) -> bool:
        """mkdirat with the configured mode and group; False when something is there already."""
        mode = out.dir_mode if out is not None else 0o755
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
        except FileExistsError:
            return False
        except OSError as err:  # read-only, full: name the folder in full, not relative to this one
            raise named(err, self.join(name)) from None
        if out is not None and (mode & 0o7000 or mode & ~UMASK != mode or out.gid >= 0):
            fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
            try:
                if mode & 0o7000 or mode & ~UMASK != mode:
                    os.fchmod(fd, mode)
                if out.gid >= 0:
                    os.fchown(fd, -1, out.gid)
            finally:
                os.close(fd)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------ files

    def create(self, name: str, mode: int = 0o644, replace_temp: bool = False, flags: int = os.O_WRONLY) -> int:
        """A new file `name` (O_CREAT|O_EXCL|O_NOFOLLOW). With `replace_temp` a stale one of ours
        (a temporary left by a crash, or a link planted at it) is unlinked first, never followed."""
        how = flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, how, mode, dir_fd=self.fd)
        except FileExistsError:
            if not replace_temp:
                raise
        except OSError as err:
            raise named(err, self.join(name)) from None
        self.unlink_entry(name)
        try:
            return os.open(name, how, mode, dir_fd=self.fd)
        except OSError as err:
            raise named(err, self.join(name)) from None

    def unlink_entry(self, name: str) -> None:
        """unlinkat a file, link, FIFO or socket (never a folder, never what a link points at)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            st = self.lstat(name)
            raise refuse(self.join(name), st.st_mode if st else stat.S_IFDIR, "a file") from None

    def write_new(self, name: str, data, out=None) -> None:
        """The file `name`, created new and written whole (the fast path: openat+write+close)."""
        mode = out.file_mode if out is not None else 0o644
        try:
            fd = os.open(name, NEW_FILE, mode, dir_fd=self.fd)
            try:
                if mode & ~UMASK != mode:  # the umask took bits away: put them back
                    os.fchmod(fd, mode)
                if os.write(fd, data) < len(data):  # short writes are rare (signals, network file systems)
                    write_all(fd, memoryview(data)[os.lseek(fd, 0, os.SEEK_CUR) :])
                if out is not None and out.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise write_error(self.join(name), err) from err

    def write_atomic(self, name: str, data, out=None, temp: str | None = None, fsync: bool = False) -> None:
        """`name` replaced whole: a temporary sibling (O_EXCL, a stale one unlinked) renamed over it."""
        self.check_not_folder(name)
        self.put(name, data, out, temp or f".{name}.tmp", fsync)

    def put(self, name: str, data, out, temp: str, fsync: bool = False) -> None:
        """Write `temp` new (O_CREAT|O_EXCL|O_NOFOLLOW; a stale one is unlinked, never followed) and
        rename it over `name` (a link there is replaced itself): openat+write+close+renameat."""
        mode = out.file_mode if out is not None else 0o644
        try:
            try:
                fd = os.open(temp, NEW_FILE, mode, dir_fd=self.fd)
            except FileExistsError:
                self.unlink_entry(temp)
                fd = os.open(temp, NEW_FILE, mode, dir_fd=self.fd)
            try:
                if mode & ~UMASK != mode:
                    os.fchmod(fd, mode)
                if os.write(fd, data) < len(data):
                    write_all(fd, memoryview(data)[os.lseek(fd, 0, os.SEEK_CUR) :])
                if fsync or (out is not None and out.fsync):
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self.fd)
            raise write_error(self.join(name), err) from err

    def copy_from(self, src: str | Path, name: str, temp: str | None = None) -> int:
        """Copy the file `src` to `name` here: an O_EXCL temporary (a stale one unlinked) filled by
        the kernel (sendfile), renamed over `name` (a link there is replaced itself). Returns the size."""
        temp = temp or f".{name}.part"
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(sfd).st_size
            try:
                fd = self.create(temp, 0o644, replace_temp=True)
                try:
                    done = 0
                    while done < size and (n := os.sendfile(fd, sfd, done, min(size - done, 1 << 30))):
                        done += n
                finally:
                    os.close(fd)
                self.rename(temp, name)
            except OSError as err:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=self.fd)
                raise write_error(self.join(name), err) from err
            return done
        finally:
            os.close(sfd)

    def check_not_folder(self, name: str) -> None:
        st = self.lstat(name)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise refuse(self.join(name), st.st_mode, "a file")

    def rename(self, src: str, dst: str, dst_dir: Dir | None = None) -> None:
        """renameat: a link at `dst` is replaced itself, its target untouched. A failure names both
        paths in full (EXDEV, ENOSPC...), not the names relative to the opened folders."""
        target = dst_dir or self
        try:
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=target.fd)
        except OSError as err:
            raise named(err, self.join(src), target.join(dst)) from None

    def open_read(self, name: str) -> int | None:
        """A regular file `name` opened for reading without following a link or blocking on a FIFO;
        None if absent."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise refuse(self.join(name), stat.S_IFLNK, "its state") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise refuse(self.join(name), st.st_mode, "its state")
        return fd

    def read(self, name: str, limit: int = READ_LIMIT) -> bytes | None:
        fd = self.open_read(name)
        if fd is None:
            return None
        try:
            return read_bounded(fd, limit, self.join(name))
        finally:
            os.close(fd)

    def remove_tree(self, name: str, replace: bool = True) -> None:
        """Delete `name` below this folder without following a link: a link (or file) is unlinked
        itself, a real folder is walked by descriptor (shutil.rmtree's fd-based mode)."""
        st = self.lstat(name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink_entry(name)
            return
        if sys.version_info >= (3, 11):
            assert shutil.rmtree.avoids_symlink_attacks
            shutil.rmtree(name, dir_fd=self.fd)
            return
        with self.sub(name) as folder:  # Python 3.10: the same walk by descriptor, by hand
            for entry in folder.entries():
                folder.remove_tree(entry.name)
        os.rmdir(name, dir_fd=self.fd)

    def entries(self) -> list[os.DirEntry]:
        with os.scandir(self.fd) as it:
            return list(it)


UMASK = os.umask(0)


def fix_bits(fd: int, out) -> None:
    if out is not None and out.file_mode & ~UMASK != out.file_mode:
        os.fchmod(fd, out.file_mode)


def write_all(fd: int, data) -> None:
    written = os.write(fd, data)
    if written < len(data):  # short writes are rare (signals, some network file systems)
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def read_bounded(fd: int, limit: int, where: str) -> bytes:
    size = os.fstat(fd).st_size
    if size > limit:
        raise LauncherError(f"{where} holds {size} bytes, more than launcher writes there ({limit}); move it away.")
    chunks, total = [], 0
    while chunk := os.read(fd, min(1 << 24, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise LauncherError(f"{where} grew past {limit} bytes while read; move it away.")
    return b"".join(chunks)


def write_error(path: str, err: OSError) -> LauncherError:
    if isinstance(err, LauncherError):
        return err
    return LauncherError(f"cannot write {path}: {err.strerror or err}")
