"""Index the train and val tars once, by their headers only, and keep the index beside the root.

The index lists each member's name, data offset and size; units seek straight to their bytes.
It is rebuilt when the archive's identity changes (size, mtime_ns, ctime_ns, inode, device: a
rewrite in place or a replacement). Every member of the outer archives is checked here, before any
unit runs: a regular file, a name of its pattern in ASCII (a class tar's stem a WNID), no duplicate
name or val image number; val images must each have a ground-truth label, and the counts agree.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from launcher.archive.extract import check_member
from launcher.archive.tarscan import members_of, scan_runs
from launcher.core.errors import LauncherError

# what a record compares to tell "the same archive file, unchanged": a rewrite in place changes
# mtime_ns and ctime_ns (ctime cannot be set back), a replacement (rename over) the inode
IDENTITY_KEYS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")


def stat_identity(path: Path | str, st: os.stat_result, md5: str | None = None) -> dict:
    """Which bytes a record came from: the archive's path, stat identity and configured md5."""
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
        "md5": md5.lower() if md5 else None,
    }


def archive_identity(path: Path | str, md5: str | None = None) -> dict:
    return stat_identity(path, os.stat(path), md5)


def same_identity(a: dict | None, b: dict | None) -> bool:
    """Two identities name the same unchanged file (the path and md5 aside)."""
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in IDENTITY_KEYS)


def fingerprint(members: list[list]) -> str:
    """What the archive holds (names and sizes), independent of where it sits."""
    digest = hashlib.sha1()
    for m in members:
        digest.update(f"{m[0]}:{m[2]}\n".encode())
    return digest.hexdigest()


def scan_archive(path: Path, pattern: str) -> list:
    """(member, match) for every member of an uncompressed tar, each checked."""
    compiled, seen, out = re.compile(pattern, re.ASCII), set(), []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for member in members_of(scan_runs(fd, 0, os.fstat(fd).st_size, f"The archive {path}")):
            check_member(member, compiled, f"The archive {path}", seen)
            out.append((member, compiled.fullmatch(member.name)))
    finally:
        os.close(fd)
    if not out:
        raise LauncherError(f"The archive {path} holds no members; it is empty or not a tar archive.")
    return out


def index_train(path: Path, class_pattern: str, wnid_pattern: str, md5: str | None = None) -> dict:
    """Index of the train tar: [class tar name, data offset, size] per class; each class tar's stem
    (the folder it becomes) matches dataset.patterns.wnid."""
    ident = archive_identity(path, md5)
    wnid = re.compile(wnid_pattern, re.ASCII)
    members = []
    for m, _ in scan_archive(path, class_pattern):
        check_class_name(m.name, wnid, f"The archive {path}")
        members.append([m.name, m.offset, m.size])
    return {"archive": ident, "members": members, "fingerprint": fingerprint(members)}


def check_class_name(name: str, wnid: re.Pattern, label: str) -> str:
    """The WNID a class tar's name stands for (`<wnid>.tar`), or a refusal naming the member."""
    stem = name.removesuffix(".tar")
    if stem == name or not wnid.fullmatch(stem):
        raise LauncherError(
            f"{label}: member {name!r} is not <wnid>.tar with a WNID of the pattern {wnid.pattern!r} "
            "(dataset.patterns.wnid); its name would become a folder. Nothing from it was written."
        )
    return stem


def index_val(path: Path, image_pattern: str, labels: int, md5: str | None = None) -> dict:
    """Index of the val tar: [name, data offset, size, image number] per image, in name order; one
    image per number (two names of one number would write one file twice and lose the other)."""
    ident = archive_identity(path, md5)
    members, numbers = [], {}
    for m, match in scan_archive(path, image_pattern):
        number = image_number(match, m.name, f"The archive {path}", image_pattern)
        if number in numbers:
            raise LauncherError(
                f"The archive {path}: members {numbers[number]!r} and {m.name!r} are both val image "
                f"{number}; the val archive is not a valid ILSVRC2012 archive. Download it again."
            )
        numbers[number] = m.name
        if not 1 <= number <= labels:
            raise LauncherError(
                f"The archive {path}: member {m.name!r} has no label: the devkit's ground truth "
                f"lists {labels} images. The val archive and the devkit do not belong together."
            )
        members.append([m.name, m.offset, m.size, number])
    if len(members) != labels:
        raise LauncherError(
            f"The archive {path} holds {len(members)} images but the devkit's ground truth has "
            f"{labels} lines. The val archive and the devkit do not belong together: download both "
            "again from the same release."
        )
    members.sort()
    return {"archive": ident, "members": members, "fingerprint": fingerprint(members)}


def image_number(match: re.Match | None, name: str, label: str, pattern: str) -> int:
    """The 1-based image number of a val member: group 1 of dataset.patterns.val_image, ASCII digits."""
    digits = match.group(1) if match and match.re.groups >= 1 else None
    if not digits or not digits.isascii() or not digits.isdigit():
        raise LauncherError(
            f"{label}: member {name!r} does not match the pattern {pattern!r} (dataset.patterns.val_image, "
            "group 1 = the image number in ASCII digits). Nothing from it was written."
        )
    return int(digits)


def same_archive(index: dict | None, path: Path) -> bool:
    """An index still describes `path` when the file is the same one, unchanged (IDENTITY_KEYS)."""
    if not index:
        return False
    return same_identity(index.get("archive"), archive_identity(path))
