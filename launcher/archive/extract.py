"""Preparation units: plain functions of paths that turn archive bytes into the torchvision root.

Each train unit opens the train tar, seeks to its class tars and writes their JPEGs straight into
`root/.partial/train/<wnid>/`, renamed to `root/train/<wnid>` only when the class is whole and its
count matches the devkit; no inner .tar ever touches the disk. Each val unit writes its images
straight into `root/val/<wnid>/` (a temporary sibling per file, renamed when whole). Every member
is checked before a byte is written: regular file, a name of the ILSVRC2012 pattern, no duplicate,
inside the archive's bounds. Nothing is ever written outside the root.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.archive.tarscan import Member, Window, scan
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json
from launcher.datasets.imagenet import torchfile


@dataclass(frozen=True)
class Output:
    """How files and folders are written: permission bits, group, fsync."""

    file_mode: int = 0o644
    dir_mode: int = 0o755
    gid: int = -1
    fsync: bool = False
    # prepare.force=true: a link planted where an output belongs is unlinked (never its target)
    replace: bool = False

    @classmethod
    def of(cls, file_mode: str = "0644", dir_mode: str = "0755", group: str | None = None, fsync: bool = False):
        return cls(int(file_mode, 8), int(dir_mode, 8), group_id(group), fsync)


def group_id(group: str | None) -> int:
    if group is None:
        return -1
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LauncherError(f"storage.group={group!r} is not a group on this machine (see `getent group`).") from None


def make_dir(path: Path, out: Output) -> None:
    """The folder `path` (parents too) with the configured mode and group, made component by
    component below its anchor (root or state folder) without following links; an existing folder
    is left alone, a link or file in its place refused (or with out.replace, a link unlinked)."""
    safefs.make_dirs(path, out, replace=out.replace)


def write_file(name: str, data, out: Output, folder: safedir.Dir) -> None:
    """Write `data` to the new file `name` of the opened `folder` in full (O_CREAT|O_EXCL|O_NOFOLLOW:
    one openat+write+close); a failure (disk full, read-only, something there) names the path."""
    folder.write_new(name, data, out)


def folder_of(dir_fd: int) -> str:
    """The path of an open folder (for error messages)."""
    try:
        return os.readlink(f"/proc/self/fd/{dir_fd}")
    except OSError:
        return "<folder>"


def safe_name(name: str) -> bool:
    """A plain file name: no folder part, no `..`, no NUL, at most NAME_MAX (255) bytes."""
    return (
        bool(name)
        and "/" not in name
        and "\0" not in name
        and name not in (".", "..")
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def check_member(member: Member, pattern: re.Pattern, label: str, seen: set[str]) -> None:
    """Refuse anything but a regular file with a name of the expected pattern, once."""
    what = f"{label}: member {member.name!r}"
    if member.kind != "file":
        link = f" -> {member.linkname}" if member.linkname else ""
        raise LauncherError(f"{what}{link} is a {member.kind}; only regular files are accepted.")
    if not safe_name(member.name) or not pattern.fullmatch(member.name):
        raise LauncherError(
            f"{what} does not match the pattern {pattern.pattern!r}. This is not an ILSVRC2012 "
            "archive, or a member is nested or renamed; nothing from it was written."
        )
    if member.name in seen:
        raise LauncherError(f"{what} appears twice; the archive is not a valid ILSVRC2012 archive.")
    seen.add(member.name)


def archive_changed(path: str, identity: dict, fd: int | None = None) -> LauncherError | None:
    """An error when the archive at `path` (and the file open as `fd`, which a rename over `path`
    does not change) is no longer the file, unchanged, that `identity` describes."""
    from launcher.archive.index import IDENTITY_KEYS, stat_identity

    now = [stat_identity(path, os.stat(path))] + ([stat_identity(path, os.fstat(fd))] if fd is not None else [])
    differ = sorted({k for ident in now for k in IDENTITY_KEYS if ident[k] != identity.get(k)})
    if differ:
        return LauncherError(
            f"{path} changed since it was indexed ({', '.join(differ)} differ: rewritten or replaced); "
            "nothing of this unit was recorded. Run `launcher prepare` again: it indexes the archive anew "
            "and prepares what came from the old bytes again."
        )
    return None


def check_root(root: str, root_id: str) -> None:
    """The unit writes into the root it was planned for (its id file holds `root_id`)."""
    from launcher.core.layout import read_root_id

    found = read_root_id(Path(root))
    if found != root_id:
        raise LauncherError(
            f"{root} is not the root this unit was planned for (its id is {found!r}, the plan's "
            f"{root_id!r}: deleted and made again, or another root). Run `launcher prepare` again."
        )


def check_name(name, pattern: re.Pattern, what: str, label: str) -> str:
    """A name read back from an index or a record (input too) before it becomes a path."""
    if not isinstance(name, str) or not safe_name(name) or not pattern.fullmatch(name):
        raise LauncherError(
            f"{label}: the {what} {name!r} does not match the pattern {pattern.pattern!r}; the index "
            "or devkit record was altered. Delete it and run `launcher prepare` again."
        )
    return name


# ---------------------------------------------------------------- train


def image_pattern(template: str, wnid: str) -> re.Pattern:
    return re.compile(template.replace("{wnid}", re.escape(wnid)), re.ASCII)


def list_class(folder: safedir.Dir) -> list[list]:
    """[name, size] of the files of a class folder written whole by an earlier run."""
    return sorted([e.name, e.stat(follow_symlinks=False).st_size] for e in folder.entries())


def extract_class(
    fd: int,
    member: Member,
    dirs: tuple[safedir.Dir, safedir.Dir],
    template: str,
    expected: int | None,
    out: Output,
    label: str,
):
    """One class tar -> root/train/<wnid>/, via root/.partial/train/<wnid>/; returns [name, size]s.
    `dirs` are the opened root/train and root/.partial/train: nothing below them follows a link."""
    train, partial = dirs
    wnid = member.name[: -len(".tar")]
    final = train.lstat(wnid)
    if final is not None and stat.S_ISLNK(final.st_mode) and out.replace:
        train.unlink_entry(wnid)
    elif final is not None:  # renamed into place only when whole, by an earlier run of this unit
        with train.sub(wnid) as folder:
            files = list_class(folder)
        check_count(files, expected, wnid, label, Path(train.join(wnid)))
        return files
    partial.remove_tree(wnid)  # left by a run that stopped half-way (a link there: unlinked itself)
    inner = f"{label} member {member.name}"
    pattern, seen, files = image_pattern(template, wnid), set(), []
    try:
        with partial.sub(wnid, create=True, out=out) as folder:
            window = Window(fd, member.offset, member.end, inner)
            for m in scan(fd, member.offset, member.end, inner, window):
                check_member(m, pattern, inner, seen)
                write_file(m.name, window.view(m.offset, m.size, m.name), out, folder)
                files.append([m.name, m.size])
        check_count(files, expected, wnid, inner, Path(train.join(wnid)))
        partial.rename(wnid, wnid, dst_dir=train)
    except BaseException:
        partial.remove_tree(wnid)
        raise
    files.sort()
    return files


def check_count(files: list, expected: int | None, wnid: str, label: str, where: Path) -> None:
    if expected is not None and len(files) != expected:
        raise LauncherError(
            f"{label}: class {wnid} has {len(files)} images but the devkit's num_train_images "
            f"says {expected}; {where} was not written. The archive is incomplete or does not "
            "match the devkit: download it again."
        )


def extract_train(
    train_tar: str,
    root: str,
    index: str,
    devkit: str,
    wnids: list[str],
    image_template: str,
    out: Output,
    wnid_pattern: str,
    root_id: str,
    folder: str = "train",
) -> dict:
    """Class-tars unit: the class tars `wnids` of the archive -> root/<folder>/<wnid>/ (staged under
    root/.partial/<folder>/). The archive is the indexed one, unchanged, before and after; otherwise
    nothing is recorded."""
    start = time.perf_counter()
    idx = read_json(Path(index))
    ident = idx["archive"]
    check_root(root, root_id)
    counts = read_json(Path(devkit))["devkit"]["num_train_images"]
    wnid_re = re.compile(wnid_pattern, re.ASCII)
    by_wnid = {
        check_name(m[0][: -len(".tar")], wnid_re, "class", index): Member(*m, kind="file") for m in idx["members"]
    }
    classes, nbytes = {}, 0
    fd = os.open(train_tar, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if err := archive_changed(train_tar, ident, fd):
            raise err
        with (
            safedir.Dir.anchor(root) as top,
            top.sub(folder, create=True, out=out, replace=out.replace) as train,
            top.walk([".partial", folder], create=True, out=out, replace=out.replace) as partial,
        ):
            for wnid in sorted(wnids, key=lambda w: by_wnid[check_name(w, wnid_re, "class", index)].offset):
                member = by_wnid[wnid]
                files = extract_class(fd, member, (train, partial), image_template, counts.get(wnid), out, train_tar)
                classes[wnid] = files
                nbytes += sum(size for _, size in files)
        if err := archive_changed(train_tar, ident, fd):
            raise err
    finally:
        os.close(fd)
    images = sum(len(f) for f in classes.values())
    return {
        "classes": classes,
        "images": images,
        "bytes": nbytes,
        "archive": ident,
        "root_id": root_id,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------- val


def extract_val(
    val_tar: str,
    root: str,
    index: str,
    devkit: str,
    start: int,
    stop: int,
    out: Output,
    image_pattern: str,
    wnid_pattern: str,
    root_id: str,
    folder: str = "val",
) -> dict:
    """Flat-by-number unit: val images [start, stop) of the index -> root/val/<wnid>/<name>, each written whole.
    Names and WNIDs read back from the index and devkit.json are checked again before they become
    paths; the archive is the indexed one, unchanged, before and after."""
    t0 = time.perf_counter()
    idx = read_json(Path(index))
    ident = idx["archive"]
    check_root(root, root_id)
    val_wnids = read_json(Path(devkit))["devkit"]["val_wnids"]
    name_re, wnid_re = re.compile(image_pattern, re.ASCII), re.compile(wnid_pattern, re.ASCII)
    members = idx["members"][start:stop]
    folders: dict[str, safedir.Dir] = {}
    files, nbytes = [], 0
    fd = os.open(val_tar, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if err := archive_changed(val_tar, ident, fd):
            raise err
        with safedir.Dir.anchor(root) as top, top.sub(folder, create=True, out=out, replace=out.replace) as val:
            window = Window(fd, members[0][1] if members else 0, ident["size"], val_tar)
            for name, offset, size, number in members:
                wnid = val_target(name, number, val_wnids, name_re, wnid_re, index)
                folder = folders.get(wnid)
                if folder is None:  # opened once per class, without following a link
                    folder = folders[wnid] = val.sub(wnid, create=True, out=out, replace=out.replace)
                # O_EXCL temporary (a stale one unlinked), renameat over the name: never followed
                folder.put(name, window.view(offset, size, name), out, f".{name}.part")
                files.append([wnid, name, size])
                nbytes += size
        if err := archive_changed(val_tar, ident, fd):
            raise err
    finally:
        os.close(fd)
        for folder in folders.values():
            folder.close()
    return {
        "files": files,
        "range": [start, stop],
        "images": len(files),
        "bytes": nbytes,
        "archive": ident,
        "root_id": root_id,
        "seconds": time.perf_counter() - t0,
    }


def val_target(name, number, val_wnids: list, name_re: re.Pattern, wnid_re: re.Pattern, label: str) -> str:
    """The WNID folder of a val member of the index: its name matches the pattern, its number is
    the one the name says, and the devkit's WNID for it matches dataset.patterns.wnid."""
    match = name_re.fullmatch(check_name(name, name_re, "val image", label))
    if type(number) is not int or match.re.groups < 1 or match.group(1) != f"{number:0{len(match.group(1))}d}":
        raise LauncherError(f"{label}: val image {name!r} is recorded as number {number!r}; the index was altered.")
    if not 1 <= number <= len(val_wnids):
        raise LauncherError(f"{label}: val image {name!r} has no label in the devkit ({len(val_wnids)} labels).")
    return check_name(val_wnids[number - 1], wnid_re, "WNID", label)


# ---------------------------------------------------------------- devkit, md5


def write_meta(devkit: str, meta_bin: str) -> dict:
    """Meta unit: root/meta.bin from the parsed devkit, as torchvision writes it, without torch."""
    from launcher.datasets.imagenet.devkit import Devkit

    t0 = time.perf_counter()
    kit = Devkit.from_json(read_json(Path(devkit))["devkit"])
    size = torchfile.save(Path(meta_bin), (kit.wnid_to_classes, kit.val_wnids))
    return {"bytes": size, "seconds": time.perf_counter() - t0}


def check_md5(path: str, expected: str, key: str, identity: dict | None = None) -> dict:
    """Md5 unit: the md5 of a whole archive, compared with dataset.archives.<key>.md5. The result
    is tied to the file it hashed: the identity indexed (`identity`), the same before and after the
    hash, or the unit fails and records nothing."""
    from launcher.archive.index import stat_identity

    t0 = time.perf_counter()
    digest, buf = hashlib.md5(), bytearray(1 << 20)  # one buffer, reused: no allocation per read
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        ident = identity or stat_identity(path, os.fstat(f.fileno()), expected)
        if err := archive_changed(path, ident, f.fileno()):
            raise err
        while n := f.readinto(buf):
            digest.update(view[:n])
        if err := archive_changed(path, ident, f.fileno()):
            raise err
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise LauncherError(
            f"md5 mismatch for {path}: expected {expected} (dataset.archives.{key}.md5), got "
            f"{actual}. The archive is corrupt or another version: download it again, or set "
            f"dataset.archives.{key}.md5 to the right value (null skips the check)."
        )
    return {"md5": actual, "key": key, "bytes": ident["size"], "archive": ident, "seconds": time.perf_counter() - t0}
