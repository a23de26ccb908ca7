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

from launcher import safefs, torchfile
from launcher.errors import LauncherError
from launcher.layout import read_json
from launcher.tarscan import Member, Window, scan


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


def write_file(name: str, data, out: Output, folder: safefs.Dir) -> None:
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
    """A plain file name: no folder part, no `..`, no NUL."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


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


def archive_changed(path: str, identity: dict) -> LauncherError | None:
    st = os.stat(path)
    if st.st_size != identity["size"] or st.st_mtime_ns != identity["mtime_ns"]:
        return LauncherError(
            f"{path} changed since it was indexed (size or time differ). Run `launcher prepare` "
            "again: it indexes the archive anew."
        )
    return None


# ---------------------------------------------------------------- train


def image_pattern(template: str, wnid: str) -> re.Pattern:
    return re.compile(template.replace("{wnid}", re.escape(wnid)))


def list_class(folder: safefs.Dir) -> list[list]:
    """[name, size] of the files of a class folder written whole by an earlier run."""
    return sorted([e.name, e.stat(follow_symlinks=False).st_size] for e in folder.entries())


def extract_class(
    fd: int,
    member: Member,
    dirs: tuple[safefs.Dir, safefs.Dir],
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
    train_tar: str, root: str, index: str, devkit: str, wnids: list[str], image_template: str, out: Output
) -> dict:
    """Train unit: the class tars `wnids` of the train tar -> root/train/<wnid>/."""
    start = time.perf_counter()
    idx = read_json(Path(index))
    if err := archive_changed(train_tar, idx["archive"]):
        raise err
    counts = read_json(Path(devkit))["devkit"]["num_train_images"]
    by_wnid = {m[0][: -len(".tar")]: Member(*m, kind="file") for m in idx["members"]}
    classes, nbytes = {}, 0
    fd = os.open(train_tar, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with (
            safefs.Dir.anchor(root) as top,
            top.sub("train", create=True, out=out, replace=out.replace) as train,
            top.walk([".partial", "train"], create=True, out=out, replace=out.replace) as partial,
        ):
            for wnid in sorted(wnids, key=lambda w: by_wnid[w].offset):
                member = by_wnid[wnid]
                files = extract_class(fd, member, (train, partial), image_template, counts.get(wnid), out, train_tar)
                classes[wnid] = files
                nbytes += sum(size for _, size in files)
    finally:
        os.close(fd)
    images = sum(len(f) for f in classes.values())
    return {"classes": classes, "images": images, "bytes": nbytes, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- val


def extract_val(val_tar: str, root: str, index: str, devkit: str, start: int, stop: int, out: Output) -> dict:
    """Val unit: val images [start, stop) of the index -> root/val/<wnid>/<name>, each written whole."""
    t0 = time.perf_counter()
    idx = read_json(Path(index))
    if err := archive_changed(val_tar, idx["archive"]):
        raise err
    val_wnids = read_json(Path(devkit))["devkit"]["val_wnids"]
    members = idx["members"][start:stop]
    folders: dict[str, safefs.Dir] = {}
    files, nbytes = [], 0
    fd = os.open(val_tar, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with safefs.Dir.anchor(root) as top, top.sub("val", create=True, out=out, replace=out.replace) as val:
            window = Window(fd, members[0][1] if members else 0, idx["archive"]["size"], val_tar)
            for name, offset, size, number in members:
                wnid = val_wnids[number - 1]
                folder = folders.get(wnid)
                if folder is None:  # opened once per class, without following a link
                    folder = folders[wnid] = val.sub(wnid, create=True, out=out, replace=out.replace)
                # O_EXCL temporary (a stale one unlinked), renameat over the name: never followed
                folder.put(name, window.view(offset, size, name), out, f".{name}.part")
                files.append([wnid, name, size])
                nbytes += size
    finally:
        os.close(fd)
        for folder in folders.values():
            folder.close()
    return {
        "files": files,
        "range": [start, stop],
        "images": len(files),
        "bytes": nbytes,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- devkit, md5


def write_meta(devkit: str, meta_bin: str) -> dict:
    """Meta unit: root/meta.bin from the parsed devkit, as torchvision writes it, without torch."""
    from launcher.devkit import Devkit

    t0 = time.perf_counter()
    kit = Devkit.from_json(read_json(Path(devkit))["devkit"])
    size = torchfile.save(Path(meta_bin), (kit.wnid_to_classes, kit.val_wnids))
    return {"bytes": size, "seconds": time.perf_counter() - t0}


def check_md5(path: str, expected: str, key: str) -> dict:
    """Md5 unit: the md5 of a whole archive, compared with dataset.archives.<key>.md5."""
    t0 = time.perf_counter()
    digest, buf = hashlib.md5(), bytearray(1 << 20)  # one buffer, reused: no allocation per read
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise LauncherError(
            f"md5 mismatch for {path}: expected {expected} (dataset.archives.{key}.md5), got "
            f"{actual}. The archive is corrupt or another version: download it again, or set "
            f"dataset.archives.{key}.md5 to the right value (null skips the check)."
        )
    return {"md5": actual, "bytes": os.path.getsize(path), "seconds": time.perf_counter() - t0}
