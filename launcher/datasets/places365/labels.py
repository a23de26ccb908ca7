"""Places365's label files, read as untrusted input: `categories_places365.txt` and the file lists.

`categories_places365.txt` holds one `<class path> <index>` per line (`/a/airfield 0`,
`/a/apartment_building/outdoor 8`), indices 0..N-1 in line order and the class paths in sorted order
(torchvision's `classes` is the sorted names, so `classes[i]` is the class of index i only then).
The train list holds `<class path>/<image> <index>` (`/a/airfield/00000001.jpg 0`), its index the
class's; the val list `<image> <index>` (`Places365_val_00000001.jpg 165`). Every line must match
its pattern in full, in ASCII; reads are bounded in bytes and lines; a path part is never empty,
`.` or `..`; no entry twice. A bad line is one LabelFileError naming the file, the line and what was
expected. The patterns are parameters (dataset config); the real ones are the constants below.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from launcher.archive.tarscan import scan
from launcher.core.errors import LauncherError
from launcher.datasets.places365 import facts
from launcher.sources.entries import compile_ascii, entry_problem, path_problem

# a class path: /<letter>/<name>[/<subclass>], the letter the name's first (as in all 365 real ones)
CLASS_PATH = r"/([a-z])/\1[a-z_]*(?:/[a-z][a-z_]*)?"
TRAIN_IMAGE = r"[0-9]{8}\.jpg"
VAL_IMAGE = r"Places365_val_[0-9]{8}\.jpg"
LABEL = r"0|[1-9][0-9]{0,8}"
# bounds: the real train list is 1,803,460 lines (~50 MB), the categories 365 lines (~7 KB)
MAX_LIST_BYTES = 256 << 20
MAX_LIST_LINES = 4_000_000
MAX_CATEGORY_BYTES = 1 << 20
MAX_CATEGORY_LINES = 100_000
SHOWN = 120  # characters of a bad line quoted in a message


class LabelFileError(LauncherError):
    """A label file (categories or a file list) that is malformed, hostile or too large."""


@dataclass(frozen=True)
class Patterns:
    """The patterns every name must match in full (ASCII): dataset.patterns.* in the config."""

    class_path: str = CLASS_PATH
    train_image: str = TRAIN_IMAGE
    val_image: str = VAL_IMAGE
    label: str = LABEL


@dataclass(frozen=True)
class ListFiles:
    """The names of the label files: in the file-list archive and in the prepared root."""

    categories: str = facts.CATEGORIES[0]
    train: str = facts.TRAIN_LIST[0]
    val: str = facts.VAL_LIST[0]

    def names(self) -> tuple[str, str, str]:
        return (self.categories, self.train, self.val)

    def limits(self) -> dict[str, int]:
        return {self.categories: MAX_CATEGORY_BYTES, self.train: MAX_LIST_BYTES, self.val: MAX_LIST_BYTES}


@dataclass(frozen=True)
class Categories:
    names: tuple[str, ...]  # index -> class path
    index: dict[str, int]  # class path -> index


@dataclass(frozen=True)
class FileList:
    entries: tuple[tuple[str, int], ...]  # (entry as written, label), in line order

    def relpaths(self) -> dict[str, int]:
        """Path below the images folder (the entry without its leading /, as torchvision joins it) -> label."""
        return {entry.lstrip("/"): label for entry, label in self.entries}


@dataclass(frozen=True)
class Labels:
    categories: Categories
    train: FileList
    val: FileList


def bad_line(label: str, number: int, expected: str, line: str) -> LabelFileError:
    shown = line if len(line) <= SHOWN else line[:SHOWN] + "..."
    return LabelFileError(
        f"{label}: line {number}: expected {expected}; found {shown!r}. Restore the file from the file-list "
        "archive as published, or correct that line; nothing was written from it."
    )


def split_lines(data: bytes, label: str, max_lines: int) -> list[str]:
    """The lines of `data` (one final newline optional), each ASCII; at most `max_lines`."""
    if not data:
        raise LabelFileError(f"{label} is empty; expected one entry per line. Restore it from the file-list archive.")
    raw = data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")
    if len(raw) > max_lines:
        raise LabelFileError(
            f"{label} holds {len(raw):,} lines, more than the {max_lines:,} accepted; it is not a Places365 "
            "label file. Restore it from the file-list archive."
        )
    lines = []
    for number, line in enumerate(raw, 1):
        if not line.isascii():
            text = line.decode("ascii", "backslashreplace")
            raise bad_line(label, number, "ASCII text", text)
        lines.append(line.decode("ascii"))
    return lines


def split_label(line: str, number: int, label: str, label_re: re.Pattern, entry: str) -> tuple[str, int]:
    """(entry, index) of `<entry> <index>`: one space, the index ASCII digits matching `label_re`."""
    name, space, digits = line.rpartition(" ")
    if not space or not name or not label_re.fullmatch(digits):
        raise bad_line(label, number, f"'{entry} <index>' with the index ASCII digits ({label_re.pattern})", line)
    return name, int(digits)


def parse_categories(
    data: bytes, label: str, patterns: Patterns = Patterns(), max_lines: int = MAX_CATEGORY_LINES
) -> Categories:
    """categories_places365.txt: `<class path> <index>` per line, indices 0..N-1 in line order, the
    class paths sorted and each once."""
    class_re, label_re = compile_ascii(patterns.class_path), compile_ascii(patterns.label)
    names: list[str] = []
    index: dict[str, int] = {}
    for number, line in enumerate(split_lines(data, label, max_lines), 1):
        name, idx = split_label(line, number, label, label_re, "<class path>")
        if not class_re.fullmatch(name) or path_problem(name):
            raise bad_line(label, number, f"a class path matching {patterns.class_path!r}", line)
        if name in index:
            raise bad_line(label, number, f"each class once ({name} is on line {index[name] + 1} already)", line)
        if idx != number - 1:
            raise bad_line(label, number, f"index {number - 1} (indices are 0..N-1 in line order)", line)
        if names and name < names[-1]:
            raise bad_line(label, number, f"class paths in sorted order (this one sorts before {names[-1]})", line)
        names.append(name)
        index[name] = idx
    return Categories(tuple(names), index)


def parse_file_list(
    data: bytes,
    label: str,
    categories: Categories,
    image_pattern: str,
    class_pattern: str | None,
    label_pattern: str = LABEL,
    max_lines: int = MAX_LIST_LINES,
) -> FileList:
    """A file list: `<entry> <index>` per line, the entry `<class path>/<image>` with the index of its
    class when `class_pattern` is given (the train list), else `<image>` with an index 0..N-1 (val)."""
    class_re = compile_ascii(class_pattern) if class_pattern is not None else None
    image_re, label_re = compile_ascii(image_pattern), compile_ascii(label_pattern)
    shape = "<class path>/<image>" if class_re is not None else "<image>"
    seen: dict[str, int] = {}
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(split_lines(data, label, max_lines), 1):
        entry, idx = split_label(line, number, label, label_re, shape)
        if why := entry_problem(entry, class_re, image_re):
            raise bad_line(label, number, why, line)
        if entry in seen:
            raise bad_line(label, number, f"each file once ({entry} is on line {seen[entry]} already)", line)
        check_target(entry, idx, class_re is not None, categories, (label, number, line))
        seen[entry] = number
        entries.append((entry, idx))
    return FileList(tuple(entries))


def check_target(entry: str, idx: int, tree: bool, categories: Categories, where: tuple[str, int, str]) -> None:
    """The index of a list line: its class's (tree) or one of the N classes (flat)."""
    label, number, line = where
    if not tree:
        if idx >= len(categories.names):
            raise bad_line(label, number, f"an index 0..{len(categories.names) - 1} (the categories' count)", line)
        return
    cls = entry.rpartition("/")[0]
    if cls not in categories.index:
        raise bad_line(label, number, f"a class of the categories file ({cls} is not one)", line)
    if idx != categories.index[cls]:
        raise bad_line(label, number, f"the index of {cls}, {categories.index[cls]}", line)


def parse_labels(
    files: dict[str, bytes], names: ListFiles = ListFiles(), patterns: Patterns = Patterns(), source: str = ""
) -> Labels:
    """The three label files of Places365-Standard, from their bytes (by file name); messages name
    them as members of `source` (an archive) when given."""

    def where(name: str) -> str:
        return f"{source}: member {name}" if source else name

    categories = parse_categories(files[names.categories], where(names.categories), patterns)
    train = parse_file_list(
        files[names.train], where(names.train), categories, patterns.train_image, patterns.class_path, patterns.label
    )
    val = parse_file_list(files[names.val], where(names.val), categories, patterns.val_image, None, patterns.label)
    return Labels(categories, train, val)


# ---------------------------------------------------------------- bounded reads


def read_bounded_file(path: str, max_bytes: int) -> bytes:
    """A regular file read whole, at most `max_bytes` (a FIFO or device is refused, not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            why = "is not a regular file" if not stat.S_ISREG(st.st_mode) else f"holds {st.st_size:,} bytes"
            raise LabelFileError(
                f"{path} {why}; a Places365 label file is a regular file of at most {max_bytes:,} bytes. "
                "Restore it from the file-list archive."
            )
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 24, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise LabelFileError(f"{path} grew past {max_bytes:,} bytes while read; restore it and run again.")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_archive_files(archive: str, limits: dict[str, int]) -> dict[str, bytes]:
    """The regular-file members named by `limits` (name -> max bytes) of a flat tar, by a header walk:
    each present once, within its bound; a link or device member anywhere is refused; other regular
    files and folders are skipped (the real file-list archive holds places365_test.txt too)."""
    label = f"The archive {archive}"
    found: dict[str, bytes] = {}
    fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for m in scan(fd, 0, os.fstat(fd).st_size, label):
            if m.kind not in ("file", "dir"):
                link = f" -> {m.linkname}" if m.linkname else ""
                raise LabelFileError(f"{label}: member {m.name!r}{link} is a {m.kind}; only regular files are read.")
            if m.kind == "dir" or m.name not in limits:
                continue
            if m.name in found:
                raise LabelFileError(f"{label}: member {m.name!r} appears twice; download the archive again.")
            if m.size > limits[m.name]:
                raise LabelFileError(
                    f"{label}: member {m.name!r} holds {m.size:,} bytes, more than the {limits[m.name]:,} accepted "
                    "for a label file; this is not the Places365 file-list archive."
                )
            found[m.name] = read_exact(fd, m.offset, m.size, f"{label}: member {m.name!r}")
    finally:
        os.close(fd)
    missing = sorted(set(limits) - set(found))
    if missing:
        raise LabelFileError(
            f"{label} holds no {', '.join(missing)} at its top level; it is not the Places365 file-list archive "
            "(filelist_places365-standard.tar): download it again."
        )
    return found


def read_exact(fd: int, offset: int, size: int, label: str) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            raise LabelFileError(f"{label} ends early, at offset {offset + done:,}; download the archive again.")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_labels(
    filelist_archive: str, names: ListFiles = ListFiles(), patterns: Patterns = Patterns()
) -> tuple[dict[str, bytes], Labels]:
    """(raw bytes by name, parsed Labels) of the file-list archive."""
    files = read_archive_files(filelist_archive, names.limits())
    return files, parse_labels(files, names, patterns, source=f"The archive {filelist_archive}")
