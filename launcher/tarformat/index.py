"""The nested index of an ILSVRC2012 train tar (a tar of class tars) or val tar, and its binary file.

For every image: where its bytes start in the OUTER file, how many there are, its class index and
its logical path (`train/<wnid>/<name>`, `val/<wnid>/<name>`: the path it has in a folder root).

    part = index_part(path, "train", devkit, patterns, first, stop)   # one unit: a range of class tars
    index = merge_parts([part, ...], devkit, patterns)                 # torchvision's order
    write_index(state_dir / "tarindex-train.bin", index)               # atomic, via launcher.safefs
    index = read_index(state_dir / "tarindex-train.bin", "train")      # bounded, checksummed

A unit indexes the outer members whose headers lie in bytes [first, stop) of the archive (`plan_ranges`
cuts the archive there from launcher.index's header-only outer index). Without md5 only headers are
read (one small pread each); with `md5=True` (one unit covering the whole file) every byte is read
once, in order, and hashed as it passes: the headers are parsed out of the bytes being hashed.
Every member is checked as prepare checks it (launcher.tarscan's rules: checksums, pax, GNU long
names, sparse refused, bounds; launcher.extract.check_member: a regular file whose name fully
matches its pattern in ASCII, once), in the class tars too; a member running past its class tar
is refused naming the archive, the class tar, the member and the offset.

The file (little-endian): MAGIC, u64 length of a JSON header, the header, zero padding to 8, then
offsets (u64), sizes (u32), targets (i32), one zlib stream of every name's length (u8: a member
name has at most 255 bytes) followed by the names (UTF-8, one after another), zero padding to 8,
and the sha256 of everything before it (32 bytes): ~20 bytes per image. The header holds the format
version, the kind (`index`, or `part` with its span), the split, the archive's identity
(launcher.index.archive_identity: size, mtime_ns, ctime_ns, inode, device, md5), the counts, and
the sorted WNIDs with their class names. Stdlib only: the preparation side runs without torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.extract import archive_changed, check_member, image_pattern, safe_name
from launcher.archive.index import IDENTITY_KEYS, check_class_name, image_number, stat_identity
from launcher.archive.tarscan import BLOCK, Member, Window, scan, truncated
from launcher.core.errors import LauncherError
from launcher.datasets.imagenet.devkit import Devkit

VERSION = 1
MAGIC = b"LTARIDX\n"
SPLITS = ("train", "val")
KINDS = ("index", "part")
DIGEST_BYTES = 32  # sha256
MAX_HEADER_BYTES = 16 << 20  # 1000 classes with their names are ~100 KB
MAX_COUNT = 2**31 - 1  # images of one split (ILSVRC2012: 1,281,167)
MAX_IMAGE_BYTES = 2**32 - 1  # sizes are u32; ILSVRC2012's largest image is ~15 MB
MAX_NAME_BYTES = 255  # a member name (NAME_MAX): the names blob holds at most this per image
MAX_INDEX_BYTES = 1 << 30  # the largest index file read (1.33 M images: ~26 MB)
NAMES_LEVEL = 1  # zlib level of the names: 6 saves ~1 byte per image and takes ten times longer
READ_CHUNK = 8 << 20  # the sequential (md5) walk reads this much at a time
TYPECODES = {"offsets": "Q", "sizes": "I", "targets": "i"}  # stored as they are; the names zlib-compressed


class IndexFileError(LauncherError):
    """An index file that is truncated, altered or not ours."""


@dataclass
class TarIndex:
    """Images of one split (or of one unit's range of it): parallel arrays plus one names blob.
    In an `index` they are in torchvision's order (class by sorted WNID, names sorted); in a `part`
    each class's images are together, names sorted, classes in archive order."""

    split: str
    archive: dict  # launcher.index.archive_identity of the archive read (md5: the one computed, or None)
    wnids: list[str]  # sorted: position = class index
    classes: list[list[str]]  # the class names of each WNID (devkit's words)
    offsets: array = field(default_factory=lambda: array("Q"))  # of each image's bytes in the outer file
    sizes: array = field(default_factory=lambda: array("I"))
    targets: array = field(default_factory=lambda: array("i"))
    names: bytes | bytearray = field(default_factory=bytearray)  # every member name, UTF-8, one after another
    name_offsets: array = field(default_factory=lambda: array("I", [0]))  # name i is names[no[i]:no[i+1]]
    kind: str = "index"
    span: list | None = None  # a part: [first byte walked, byte after its last member, reached the end]

    def __len__(self) -> int:
        return len(self.offsets)

    def name(self, i: int) -> str:
        return bytes(self.names[self.name_offsets[i] : self.name_offsets[i + 1]]).decode("utf-8")

    def path(self, i: int) -> str:
        """The logical path of image i: the path it has in a folder root."""
        return f"{self.split}/{self.wnids[self.targets[i]]}/{self.name(i)}"

    def add(self, name: str, offset: int, size: int, target: int) -> None:
        if not isinstance(self.names, bytearray):  # one read back: appended to in place from now on
            self.names = bytearray(self.names)
        self.names += name.encode("utf-8")
        self.name_offsets.append(len(self.names))
        self.offsets.append(offset)
        self.sizes.append(size)
        self.targets.append(target)

    def extend(self, part: TarIndex, lo: int, hi: int) -> None:
        """Append images [lo, hi) of another index (their order and targets as they are)."""
        if not isinstance(self.names, bytearray):
            self.names = bytearray(self.names)
        start = part.name_offsets[lo]
        shift = len(self.names) - start
        self.names += part.names[start : part.name_offsets[hi]]
        self.name_offsets.extend(o + shift for o in part.name_offsets[lo + 1 : hi + 1])
        self.offsets.extend(part.offsets[lo:hi])
        self.sizes.extend(part.sizes[lo:hi])
        self.targets.extend(part.targets[lo:hi])

    def entries(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, int, int, int]]:
        """(name, offset, size, target) of images [lo, hi)."""
        for i in range(lo, len(self) if hi is None else hi):
            yield self.name(i), self.offsets[i], self.sizes[i], self.targets[i]


# ---------------------------------------------------------------- patterns, labels


@dataclass(frozen=True)
class Patterns:
    """dataset.patterns, compiled in ASCII (re.ASCII: no other digits, no other letters)."""

    wnid: re.Pattern
    train_class: re.Pattern
    train_image: str  # a template: {wnid} is the class tar's stem (launcher.extract.image_pattern)
    val_image: re.Pattern

    @classmethod
    def of(cls, node) -> Patterns:
        """From a dataset.patterns node (launcher.config.PatternsConfig, a DictConfig, a mapping)."""
        get = node.get if hasattr(node, "get") else lambda key: getattr(node, key)
        return cls(
            re.compile(get("wnid"), re.ASCII),
            re.compile(get("train_class"), re.ASCII),
            get("train_image"),
            re.compile(get("val_image"), re.ASCII),
        )


def class_names(devkit: Devkit) -> tuple[list[str], list[list[str]]]:
    """(sorted WNIDs, class names of each): ImageFolder's class order."""
    wnids = devkit.wnids
    return wnids, [list(devkit.wnid_to_classes[w]) for w in wnids]


# ---------------------------------------------------------------- reading the archive


class HashingWindow(Window):
    """A Window over [start, end) that reads every byte exactly once, in order, and feeds it to
    `digest` as it is read: a view further on reads (and hashes) the bytes before it first; a view
    behind what was read is refused (the walk only moves forward)."""

    def __init__(self, fd: int, start: int, end: int, label: str, digest, chunk: int = READ_CHUNK):
        super().__init__(fd, start, end, label, chunk)
        self.digest, self.read_to = digest, start
        self.buf = memoryview(bytearray())

    def view(self, offset: int, size: int, member: str = "") -> memoryview:
        lo = offset - self.buf_start
        if lo >= 0 and lo + size <= len(self.buf):
            return self.buf[lo : lo + size]
        if lo < 0:
            raise AssertionError(f"the sequential walk of {self.label} went back to offset {offset}")
        if offset + size > self.end:
            raise truncated(self.label, member, offset + size, self.end)
        while self.read_to < offset:  # bytes nobody looks at (image data): hashed, then dropped
            self.read(min(self.chunk, offset - self.read_to), member)
        kept = bytes(self.buf[offset - self.buf_start :]) if offset < self.read_to else b""
        data = bytearray(kept)
        while len(data) < size:
            data += self.read(min(max(self.chunk, size - len(data)), self.end - self.read_to), member)
        self.buf, self.buf_start = memoryview(data), offset
        return self.buf[:size]

    def read(self, want: int, member: str) -> bytes:
        data = os.pread(self.fd, want, self.read_to)
        if len(data) < want:
            raise truncated(self.label, member, self.read_to + want, self.read_to + len(data))
        self.digest.update(data)
        self.read_to += len(data)
        return data

    def finish(self) -> None:
        """Read and hash the rest of the file (what follows the end-of-archive blocks)."""
        while self.read_to < self.end:
            self.read(min(self.chunk, self.end - self.read_to), "")
        self.buf = memoryview(bytearray())


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def outer_members(fd: int, first: int, stop: int | None, size: int, label: str, window: Window) -> Iterator[Member]:
    """The outer members whose headers lie in [first, stop) (stop None: to the end-of-archive
    marker), in archive order. `stop` must fall where a member's padded data ends."""
    for member in scan(fd, first, size, label, window):
        yield member
        after = member.offset + padded(member.size)
        if stop is not None and after >= stop:
            if after != stop:
                raise LauncherError(
                    f"{label}: offset {stop:,} is not where a member ends (member {member.name!r} runs to "
                    f"{after:,}); the unit's range does not fit this archive. Run `launcher prepare` again: "
                    "it indexes the archive anew and plans the ranges from it."
                )
            return


def index_part(
    path: str | Path,
    split: str,
    devkit: Devkit,
    patterns: Patterns,
    first: int = 0,
    stop: int | None = None,
    md5: bool = False,
) -> TarIndex:
    """One unit: the images of the outer members whose headers lie in [first, stop) of the train
    or val tar at `path` (the whole archive by default). With `md5` (the whole archive only) every
    byte is read once, in order, and hashed as it is read; the md5 lands in the part's identity."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if md5 and (first != 0 or stop is not None):
        raise ValueError("md5=True needs the whole archive (first=0, stop=None): an md5 cannot be split")
    path = str(path)
    label = f"The archive {path}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ident = stat_identity(path, os.fstat(fd))
        if err := archive_changed(path, ident, fd):  # the path still names the file opened
            raise err
        digest = hashlib.md5() if md5 else None
        size = ident["size"]
        window = HashingWindow(fd, 0, size, label, digest) if digest else Window(fd, first, size, label, chunk=BLOCK)
        part = TarIndex(split, ident, *class_names(devkit), kind="part")
        members = outer_members(fd, first, stop, size, label, window)
        if split == "train":
            after = walk_train(fd, members, part, devkit, patterns, label, window if digest else None)
        else:
            after = walk_val(members, part, devkit, patterns, label)
        if digest:
            window.finish()
            ident["md5"] = digest.hexdigest()
        if err := archive_changed(path, ident, fd):
            raise err
    finally:
        os.close(fd)
    part.span = [first, max(after, first), stop is None]
    return part


def walk_train(fd, members, part: TarIndex, devkit: Devkit, patterns: Patterns, label: str, window) -> int:
    """Each class tar's images, names sorted; its count must be the devkit's num_train_images.
    `window`: the sequential hashing window the outer walk reads through, or None (headers only)."""
    target_of = {w: i for i, w in enumerate(part.wnids)}
    seen: set[str] = set()
    after = 0
    for outer in members:
        check_member(outer, patterns.train_class, at(label, outer), seen)
        wnid = check_class_name(outer.name, patterns.wnid, label)
        if wnid not in target_of:
            raise LauncherError(
                f"{label}: member {outer.name!r} (offset {outer.offset:,}) is a class the devkit does not "
                "list; the train archive and the devkit do not belong together: download both again."
            )
        images = index_class(fd, outer, image_pattern(patterns.train_image, wnid), label, window)
        expected = devkit.num_train_images.get(wnid)
        if expected is not None and len(images) != expected:
            raise LauncherError(
                f"{label} member {outer.name}: class {wnid} has {len(images)} images but the devkit's "
                f"num_train_images says {expected}. The archive is incomplete or does not match the devkit: "
                "download it again."
            )
        for name, offset, size in sorted(images):
            part.add(name, offset, size, target_of[wnid])
        after = outer.offset + padded(outer.size)
    return after


def index_class(fd: int, outer: Member, pattern: re.Pattern, label: str, window) -> list[tuple[str, int, int]]:
    """(name, offset in the outer file, size) of every image of one class tar, each checked."""
    inner = f"{label} member {outer.name}"
    seen: set[str] = set()
    images = []
    for m in scan(fd, outer.offset, outer.end, inner, window):
        check_member(m, pattern, at(inner, m), seen)
        images.append((m.name, m.offset, checked_size(m, inner)))
    return images


def at(label: str, member: Member) -> str:
    """How a refusal names a member's place: its header's offset in the outer file."""
    return f"{label}, header at offset {member.offset - BLOCK:,}"


def checked_size(member: Member, label: str) -> int:
    if member.size > MAX_IMAGE_BYTES:
        raise LauncherError(
            f"{label}: member {member.name!r} (offset {member.offset:,}) claims {member.size:,} bytes; an "
            f"image of the index holds at most {MAX_IMAGE_BYTES:,}. This is not an ILSVRC2012 archive."
        )
    return member.size


def walk_val(members, part: TarIndex, devkit: Devkit, patterns: Patterns, label: str) -> int:
    """Each val image, labelled through the devkit's ground truth (val image k: val_wnids[k-1])."""
    target_of = {w: i for i, w in enumerate(part.wnids)}
    seen: set[str] = set()
    numbers: dict[int, str] = {}
    found, after = [], 0
    for m in members:
        check_member(m, patterns.val_image, at(label, m), seen)
        number = val_number(m.name, patterns, label, len(devkit.val_wnids))
        if number in numbers:
            raise LauncherError(
                f"{label}: members {numbers[number]!r} and {m.name!r} are both val image {number}; the val "
                "archive is not a valid ILSVRC2012 archive. Download it again."
            )
        numbers[number] = m.name
        found.append((target_of[devkit.val_wnids[number - 1]], m.name, m.offset, checked_size(m, label)))
        after = m.offset + padded(m.size)
    for target, name, offset, size in sorted(found):
        part.add(name, offset, size, target)
    return after


def val_number(name: str, patterns: Patterns, label: str, labels: int) -> int:
    """The 1-based image number of a val member (group 1 of dataset.patterns.val_image, ASCII
    digits), which must have a label in the devkit's ground truth."""
    number = image_number(patterns.val_image.fullmatch(name), name, label, patterns.val_image.pattern)
    if not 1 <= number <= labels:
        raise LauncherError(
            f"{label}: member {name!r} has no label: the devkit's ground truth lists {labels} images. "
            "The val archive and the devkit do not belong together."
        )
    return number


# ---------------------------------------------------------------- units and merge


def plan_ranges(members: list, units: int) -> list[tuple[int, int | None]]:
    """(first, stop) of min(units, members) ranges of outer members balanced by bytes, from the header-only
    outer index (launcher.index: [name, data offset, size, ...] per member). Each range starts at
    0 or where the member before it ends (its padded data), so at a header; the last has stop None."""
    ordered = sorted(members, key=lambda m: m[1])
    total = sum(m[2] for m in ordered) or 1
    ranges, first, done = [], 0, 0
    for k, m in enumerate(ordered[:-1]):
        done += m[2]
        cuts = units - 1 - len(ranges)  # still to make; a member per range at least
        if cuts > 0 and (done * units >= total * (len(ranges) + 1) or len(ordered) - 1 - k <= cuts):
            end = m[1] + padded(m[2])
            ranges.append((first, end))
            first = end
    ranges.append((first, None))
    return ranges


def merge_parts(parts: list[TarIndex], devkit: Devkit, patterns: Patterns) -> TarIndex:
    """The index of a split from its units' parts: they must come from one unchanged archive and
    cover it, each range starting where the one before stopped; classes in sorted-WNID order,
    names sorted within each (torchvision's ImageFolder order); counts checked against the devkit,
    val image numbers once each across the parts, each image under its ground-truth class."""
    if not parts:
        raise ValueError("no parts to merge")
    parts = sorted(parts, key=lambda p: p.span[0])
    check_cover(parts)
    head = parts[0]
    runs: dict[int, list[tuple[TarIndex, int, int]]] = {}
    for part in parts:
        for target, lo, hi in target_runs(part):
            runs.setdefault(target, []).append((part, lo, hi))
    merged = TarIndex(head.split, dict(head.archive), *class_names(devkit))
    label = f"The archive {head.archive['path']}"
    for target in range(len(merged.wnids)):
        blocks = runs.get(target, [])
        if head.split == "train" and len(blocks) > 1:
            raise LauncherError(f"{label}: class {merged.wnids[target]} appears in two class tars; download it again.")
        if len(blocks) == 1 and names_ascending(*blocks[0]):  # a class tar, names sorted: copied whole
            merged.extend(*blocks[0])
            continue
        entries = sorted(e for part, lo, hi in blocks for e in part.entries(lo, hi))
        for (name, offset, size, _), nxt in zip(entries, entries[1:] + [None]):
            if nxt is not None and nxt[0] == name:
                raise LauncherError(f"{label}: member {name!r} appears twice; download the archive again.")
            merged.add(name, offset, size, target)
    check_counts(merged, devkit, label)
    if merged.split == "val":
        check_val_numbers(merged, devkit, patterns, label)
    return merged


def check_val_numbers(index: TarIndex, devkit: Devkit, patterns: Patterns, label: str) -> None:
    """Each val image number once (two names of one number in different units' ranges, e.g. under a
    pattern of variable width, would leave another image out), each image in its labelled class."""
    target_of = {w: i for i, w in enumerate(index.wnids)}
    seen: dict[int, str] = {}
    for i in range(len(index)):
        name = index.name(i)
        number = val_number(name, patterns, label, len(devkit.val_wnids))
        if number in seen:
            raise LauncherError(
                f"{label}: members {seen[number]!r} and {name!r} are both val image {number}; the val "
                "archive is not a valid ILSVRC2012 archive. Download it again."
            )
        seen[number] = name
        if index.targets[i] != target_of[devkit.val_wnids[number - 1]]:
            raise ValueError(f"val image {name} merged under another class than its label")


def names_ascending(part: TarIndex, lo: int, hi: int) -> bool:
    """Names lo..hi-1 of the part strictly ascending (sorted, none twice)."""
    cuts, names = part.name_offsets, part.names
    chunk = [names[a:b] for a, b in zip(cuts[lo:hi], cuts[lo + 1 : hi + 1])]
    return all(a < b for a, b in zip(chunk, chunk[1:]))


def check_cover(parts: list[TarIndex]) -> None:
    """One archive, unchanged, walked from byte 0 to its end-of-archive marker without a gap."""
    head = parts[0]
    label = f"The archive {head.archive['path']}"
    for part in parts:
        if part.kind != "part" or part.split != head.split or part.wnids != head.wnids:
            raise ValueError("parts of different splits or devkits")
        if any(part.archive.get(k) != head.archive.get(k) for k in IDENTITY_KEYS):
            raise LauncherError(
                f"{label} changed while it was indexed (the units saw different files); run "
                "`launcher prepare` again: it indexes the archive anew."
            )
    expected_first = 0
    for part in parts:
        if part.span[0] != expected_first:
            raise LauncherError(
                f"{label}: the indexed ranges do not cover the archive (a range starts at {part.span[0]:,}, "
                f"the one before stopped at {expected_first:,}); run `launcher prepare` again."
            )
        expected_first = part.span[1]
    if not parts[-1].span[2] or any(p.span[2] for p in parts[:-1]):
        raise LauncherError(f"{label}: the indexed ranges stop before the archive's end; run `launcher prepare` again.")


def target_runs(part: TarIndex) -> Iterator[tuple[int, int, int]]:
    """(target, lo, hi) of each run of equal targets in a part."""
    targets, lo = part.targets, 0
    for i in range(1, len(targets) + 1):
        if i == len(targets) or targets[i] != targets[lo]:
            yield targets[lo], lo, i
            lo = i


def check_counts(index: TarIndex, devkit: Devkit, label: str) -> None:
    """Every class of the devkit present (train) and the val images all there."""
    counts = [0] * len(index.wnids)
    for target in index.targets:
        counts[target] += 1
    if index.split == "train":
        missing = [w for w, n in zip(index.wnids, counts) if n == 0 and devkit.num_train_images.get(w)]
        if missing:
            raise LauncherError(
                f"{label} holds no class tar for {len(missing)} class(es) of the devkit ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); the archive is incomplete: download it again."
            )
    elif len(index) != len(devkit.val_wnids):
        raise LauncherError(
            f"{label} holds {len(index)} images but the devkit's ground truth has {len(devkit.val_wnids)} lines. "
            "The val archive and the devkit do not belong together: download both again from the same release."
        )


def index_archive(
    path: str | Path,
    split: str,
    devkit: Devkit,
    patterns: Patterns,
    md5: bool = False,
    expected_md5: str | None = None,
) -> TarIndex:
    """The whole archive in one unit (one sequential read with `md5` or `expected_md5`), merged;
    a computed md5 other than `expected_md5` (dataset.archives.<key>.md5) is refused."""
    part = index_part(path, split, devkit, patterns, md5=md5 or expected_md5 is not None)
    index = merge_parts([part], devkit, patterns)
    actual = index.archive.get("md5")
    if expected_md5 is not None and actual != expected_md5.lower():
        raise LauncherError(
            f"md5 mismatch for {path}: expected {expected_md5} (dataset.archives.{split}.md5), got {actual}. The "
            f"archive is corrupt or another version: download it again, or set dataset.archives.{split}.md5 to "
            "the right value (null skips the check)."
        )
    return index


# ---------------------------------------------------------------- the file


def encode_index(index: TarIndex) -> bytes:
    """The file's bytes (see the module's docstring)."""
    cuts = index.name_offsets
    names = zlib.compress(bytes(map(operator.sub, cuts[1:], cuts[:-1])) + bytes(index.names), NAMES_LEVEL)
    header = {
        "format": "launcher-tarindex",
        "version": VERSION,
        "kind": index.kind,
        "split": index.split,
        "archive": index.archive,
        "count": len(index),
        "names_bytes": len(index.names),
        "names_stored": len(names),
        "wnids": index.wnids,
        "classes": index.classes,
        "span": index.span,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    chunks = [MAGIC, struct.pack("<Q", len(head)), head, pad(len(head))]
    for key in TYPECODES:
        chunks.append(little_endian(getattr(index, key)))
    chunks += [names, pad(len(names))]
    body = b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def pad(n: int) -> bytes:
    return bytes(-n % 8)


def little_endian(values: array) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    copy = array(values.typecode, values)
    copy.byteswap()
    return copy.tobytes()


def write_index(path: str | Path, index: TarIndex, out=None, fsync: bool = False) -> int:
    """Write the index file atomically (O_EXCL temporary renamed over it, never through a link);
    returns its size."""
    data = encode_index(index)
    safefs.write_atomic(path, data, out=out, fsync=fsync)
    return len(data)


def read_index(path: str | Path, split: str | None = None, kind: str = "index") -> TarIndex:
    """The index file at `path`, read without following a link below its anchor and checked whole
    (sha256, then every length against the header before anything is allocated from it, offsets
    within the archive, targets within the classes); anything else is one IndexFileError."""
    try:
        data = safefs.read(path, MAX_INDEX_BYTES)
    except NotADirectoryError:
        data = None
    if data is None:
        raise IndexFileError(
            f"There is no tar index at {path}. Run `launcher prepare` (storage.format=tar) to build it."
        )
    index = decode_index(memoryview(data), str(path))
    if index.kind != kind or (split is not None and index.split != split):
        raise bad_index(str(path), f"it is a {index.kind} of {index.split}, not the {kind} of {split}")
    return index


def bad_index(path: str, why: str) -> IndexFileError:
    return IndexFileError(
        f"{path} is not a whole launcher tar index ({why}): it was truncated or altered. Delete it and run "
        "`launcher prepare` again: it rebuilds the index from the archive."
    )


def decode_index(data: memoryview, path: str) -> TarIndex:
    if len(data) < len(MAGIC) + 8 + DIGEST_BYTES or data[: len(MAGIC)] != MAGIC:
        raise bad_index(path, "it does not start with the tar index's magic bytes")
    body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise bad_index(path, "its sha256 does not match its bytes")
    (head_len,) = struct.unpack_from("<Q", data, len(MAGIC))
    pos = len(MAGIC) + 8
    if head_len > min(MAX_HEADER_BYTES, len(body) - pos):
        raise bad_index(path, f"its header claims {head_len:,} bytes")
    try:
        header = json.loads(bytes(data[pos : pos + head_len]))
    except ValueError:
        header = None
    header = check_header(header, path)
    n, names_stored = header["count"], header["names_stored"]
    pos += head_len + (-head_len % 8)
    sizes = {"offsets": 8 * n, "sizes": 4 * n, "targets": 4 * n}
    expected = pos + sum(sizes.values()) + names_stored + (-names_stored % 8)
    if expected != len(body):
        raise bad_index(path, f"its header describes {expected:,} bytes of arrays, the file holds {len(body):,}")
    arrays = {}
    for key, typecode in TYPECODES.items():
        arrays[key] = read_array(typecode, data[pos : pos + sizes[key]])
        pos += sizes[key]
    lengths_and_names = inflate(bytes(data[pos : pos + names_stored]), n + header["names_bytes"], path)
    arrays["name_offsets"] = array("I", itertools.accumulate(lengths_and_names[:n], initial=0))
    names = lengths_and_names[n:]
    index = TarIndex(
        header["split"],
        header["archive"],
        header["wnids"],
        header["classes"],
        names=names,
        kind=header["kind"],
        span=header["span"],
        **arrays,
    )
    check_arrays(index, path)
    return index


def read_array(typecode: str, raw: memoryview) -> array:
    values = array(typecode)
    if values.itemsize != struct.calcsize("<" + typecode):
        raise AssertionError(f"array({typecode!r}) is not {struct.calcsize('<' + typecode)} bytes here")
    values.frombytes(raw)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def inflate(stored: bytes, size: int, path: str) -> bytes:
    """The names section: at most `size` bytes out (a zlib bomb stops there), exactly `size` expected."""
    try:
        inflater = zlib.decompressobj()
        names = inflater.decompress(stored, size + 1)
    except zlib.error as err:
        raise bad_index(path, f"its names do not inflate ({err})") from None
    if len(names) != size or not inflater.eof:
        raise bad_index(path, f"its names inflate to {len(names):,} bytes, not {size:,}")
    return names


def whole(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def check_header(header, path: str) -> dict:
    """The JSON header's fields, each of its type and within its bounds."""
    if not isinstance(header, dict) or header.get("format") != "launcher-tarindex":
        raise bad_index(path, "its header is not a tar index header")
    if not whole(header.get("version"), VERSION, VERSION):
        raise bad_index(path, f"it is version {header.get('version')!r}; this launcher reads version {VERSION}")
    for key, ok in header_checks(header):
        if not ok():
            raise bad_index(path, f"its header's {key} is not valid")
    return header


def header_checks(h: dict) -> list:
    """(field, check) in order; each check may assume the ones before it passed."""
    n, archive, wnids, classes = h.get("count"), h.get("archive"), h.get("wnids"), h.get("classes")
    return [
        ("kind", lambda: h.get("kind") in KINDS),
        ("split", lambda: h.get("split") in SPLITS),
        ("count", lambda: whole(n, 0, MAX_COUNT)),
        ("names_bytes", lambda: whole(h.get("names_bytes"), 0, MAX_NAME_BYTES * n)),
        ("names_stored", lambda: whole(h.get("names_stored"), 0, MAX_INDEX_BYTES)),
        ("archive", lambda: isinstance(archive, dict) and all(whole(archive.get(k), 0, 2**64) for k in IDENTITY_KEYS)),
        ("archive path", lambda: isinstance(archive.get("path"), str)),
        ("md5", lambda: archive.get("md5") is None or isinstance(archive.get("md5"), str)),
        ("wnids", lambda: isinstance(wnids, list) and all(isinstance(w, str) and safe_name(w) for w in wnids)),
        ("wnid order", lambda: wnids == sorted(set(wnids))),
        ("classes", lambda: isinstance(classes, list) and len(classes) == len(wnids)),
        ("class names", lambda: all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in classes)),
        ("span", lambda: h.get("span") is None if h["kind"] == "index" else check_span(h.get("span"))),
    ]


def check_span(span) -> bool:
    return (
        isinstance(span, list)
        and len(span) == 3
        and whole(span[0], 0, 2**64)
        and whole(span[1], 0, 2**64)
        and type(span[2]) is bool
    )


def check_arrays(index: TarIndex, path: str) -> None:
    """Every image inside the archive, every target a class, every name a slice of the blob in order."""
    n, size = len(index), index.archive["size"]
    if n and max(index.offsets) + max(index.sizes) > size:  # one test bounds all; else look closer
        bad = next((i for i in range(n) if index.offsets[i] + index.sizes[i] > size), None)
        if bad is not None:
            end = index.offsets[bad] + index.sizes[bad]
            raise bad_index(path, f"image {bad} runs to byte {end:,} of a {size:,}-byte archive")
    if n and (min(index.targets) < 0 or max(index.targets) >= len(index.wnids)):
        raise bad_index(path, f"a target lies outside the {len(index.wnids)} classes")
    if index.name_offsets[-1] != len(index.names):  # made from lengths (u8): they ascend by construction
        raise bad_index(path, "its name lengths do not add up to its names")
    targets = index.targets.tolist()
    if index.kind == "index" and targets != sorted(targets):  # sorted input: one linear pass in C
        raise bad_index(path, "its targets are not in class order")
