"""Index the train and val tars once, by their headers only, and keep the index beside the root.

The index lists each member's name, data offset and size; units seek straight to their bytes.
It is rebuilt only when the archive's size or modification time change. Every member of the
outer archives is checked here, before any unit runs: a regular file, a name of the ILSVRC2012
pattern, no duplicates; val images must each have a ground-truth label, and the counts agree.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from launcher.errors import LauncherError
from launcher.extract import check_member
from launcher.tarscan import scan


def archive_identity(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(members: list[list]) -> str:
    """What the archive holds (names and sizes), independent of where it sits."""
    digest = hashlib.sha1()
    for m in members:
        digest.update(f"{m[0]}:{m[2]}\n".encode())
    return digest.hexdigest()


def scan_archive(path: Path, pattern: str) -> list:
    """(member, match) for every member of an uncompressed tar, each checked."""
    compiled, seen, out = re.compile(pattern), set(), []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for member in scan(fd, 0, os.fstat(fd).st_size, f"The archive {path}"):
            check_member(member, compiled, f"The archive {path}", seen)
            out.append((member, compiled.fullmatch(member.name)))
    finally:
        os.close(fd)
    if not out:
        raise LauncherError(f"The archive {path} holds no members; it is empty or not a tar archive.")
    return out


def index_train(path: Path, class_pattern: str) -> dict:
    """Index of the train tar: [class tar name, data offset, size] per class."""
    members = [[m.name, m.offset, m.size] for m, _ in scan_archive(path, class_pattern)]
    return {"archive": archive_identity(path), "members": members, "fingerprint": fingerprint(members)}


def index_val(path: Path, image_pattern: str, labels: int) -> dict:
    """Index of the val tar: [name, data offset, size, image number] per image, in name order."""
    members = []
    for m, match in scan_archive(path, image_pattern):
        number = int(match.group(1))
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
    return {"archive": archive_identity(path), "members": members, "fingerprint": fingerprint(members)}


def same_archive(index: dict | None, path: Path) -> bool:
    """An index still describes `path` when size and modification time are unchanged."""
    if not index:
        return False
    ident = archive_identity(path)
    return all(index["archive"].get(k) == ident[k] for k in ("size", "mtime_ns"))
