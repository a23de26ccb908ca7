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

The file format is launcher.tarformat.indexfile's.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import operator
import os
import queue
import re
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from launcher.archive.extract import archive_changed, check_member, image_pattern
from launcher.archive.index import IDENTITY_KEYS, check_class_name, image_number, stat_identity
from launcher.archive.tarscan import BLOCK, Member, Run, Window, members_of, scan_runs, truncated
from launcher.core.errors import LauncherError
from launcher.datasets.imagenet.devkit import Devkit
from launcher.tarformat.indexfile import (
    MAX_IMAGE_BYTES,
    READ_CHUNK,
    SPLITS,
    TarIndex,
)

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


class BackgroundMd5:
    """An md5 that hashes in a thread of its own, in the order the chunks are given: hashlib lets go
    of the GIL over large buffers, so the header walk runs beside the hashing on a second core. At
    most `depth` chunks wait (bounded memory)."""

    def __init__(self, depth: int = 4):
        self.md5 = hashlib.md5()
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self.hash_chunks, name="md5", daemon=True)
        self.thread.start()

    def hash_chunks(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            self.md5.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def close(self) -> None:
        """Stop the thread (after what was given is hashed); called on every way out of the walk."""
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self.md5.hexdigest()


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


def outer_members(
    fd: int, first: int, stop: int | None, size: int, label: str, window: Window | None
) -> Iterator[Member]:
    """The outer members whose headers lie in [first, stop) (stop None: to the end-of-archive
    marker), in archive order. `stop` must fall where a member's padded data ends. `window`: the
    sequential hashing window, or None (headers only)."""
    for member in members_of(scan_runs(fd, first, size, label, window, stop=stop)):
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

    def walk(fd: int, members: Iterator[Member], window: HashingWindow | None, ident: dict) -> tuple[TarIndex, int]:
        part = TarIndex(split, ident, *class_names(devkit), kind="part")
        if split == "train":
            return part, walk_train(fd, members, part, devkit, patterns, f"The archive {path}", window)
        return part, walk_val(members, part, devkit, patterns, f"The archive {path}")

    return walk_range(path, first, stop, md5, walk)


def walk_range(path: str | Path, first: int, stop: int | None, md5: bool, walk) -> TarIndex:
    """Open the archive, check it is still the file its path names, and give `walk(fd, members,
    window, identity) -> (part, byte after its last member)` the outer members whose headers lie in
    [first, stop); with `md5` (the whole archive only) every byte is read once, in order, through
    the hashing window (None without md5: headers only) and the md5 lands in the part's identity.
    The archive unchanged at the end, the part's span recorded."""
    if md5 and (first != 0 or stop is not None):
        raise ValueError("md5=True needs the whole archive (first=0, stop=None): an md5 cannot be split")
    path = str(path)
    label = f"The archive {path}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    digest = None
    try:
        ident = stat_identity(path, os.fstat(fd))
        if err := archive_changed(path, ident, fd):  # the path still names the file opened
            raise err
        digest = BackgroundMd5() if md5 else None
        size = ident["size"]
        window = HashingWindow(fd, 0, size, label, digest) if digest else None
        part, after = walk(fd, outer_members(fd, first, stop, size, label, window), window, ident)
        if window:
            window.finish()
            ident["md5"] = digest.hexdigest()
        if err := archive_changed(path, ident, fd):
            raise err
    finally:
        if digest:
            digest.close()
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
        names, offsets, sizes = index_class(fd, outer, image_pattern(patterns.train_image, wnid), label, window)
        expected = devkit.num_train_images.get(wnid)
        if expected is not None and len(names) != expected:
            raise LauncherError(
                f"{label} member {outer.name}: class {wnid} has {len(names)} images but the devkit's "
                f"num_train_images says {expected}. The archive is incomplete or does not match the devkit: "
                "download it again."
            )
        add_sorted(part, names, offsets, sizes, target_of[wnid])
        after = outer.offset + padded(outer.size)
    return after


def add_sorted(part: TarIndex, names: list[str], offsets: array, sizes: array, target: int) -> None:
    """A class's images in name order (ImageFolder's); a class tar already in that order is added as it is."""
    order = sorted(range(len(names)), key=names.__getitem__)
    if order != list(range(len(names))):
        names, offsets, sizes = [names[i] for i in order], [offsets[i] for i in order], [sizes[i] for i in order]
    part.add_many(names, offsets, sizes, target)


def index_class(fd: int, outer: Member, pattern: re.Pattern, label: str, window) -> tuple[list[str], array, array]:
    """(names, offsets in the outer file, sizes) of every image of one class tar, each checked."""
    inner = f"{label} member {outer.name}"
    seen: set[str] = set()
    names: list[str] = []
    offsets, sizes = array("q"), array("q")
    for item in scan_runs(fd, outer.offset, outer.end, inner, window, plain_names=True):
        if isinstance(item, Run):
            check_run(item, pattern, inner, seen)
            names += item.names
            offsets += item.offsets
            sizes += item.sizes
        else:
            check_member(item, pattern, at(inner, item), seen)
            names.append(item.name)
            offsets.append(item.offset)
            sizes.append(checked_size(item, inner))
    return names, offsets, sizes


def check_run(run: Run, pattern: re.Pattern, label: str, seen: set[str]) -> None:
    """check_member and checked_size for a run of the C walker (regular files with plain file names
    already): every name fully matching `pattern`, none seen before, every size within the index's
    bound. On a failure the members are checked one by one, for check_member's exact refusal."""
    names = set(run.names)
    if (
        len(names) == len(run.names)
        and seen.isdisjoint(names)
        and all(map(pattern.fullmatch, run.names))
        and max(run.sizes) <= MAX_IMAGE_BYTES
    ):
        seen |= names
        return
    for member in run.members():
        check_member(member, pattern, at(label, member), seen)
        checked_size(member, label)
    raise AssertionError("a run refused as a whole passed member by member")


def at(label: str, member: Member) -> str:
    """How a refusal names a member's place: its header's offset in the outer file."""
    return f"{label}, header at offset {member.offset - BLOCK:,}"


def checked_size(
    member: Member, label: str, verdict: str = "This is not an ILSVRC2012 archive.", error=LauncherError
) -> int:
    """The member's size, within what the index holds for an image (`verdict` ends the refusal)."""
    if member.size > MAX_IMAGE_BYTES:
        raise error(
            f"{label}: member {member.name!r} (offset {member.offset:,}) claims {member.size:,} bytes; an "
            f"image of the index holds at most {MAX_IMAGE_BYTES:,}. {verdict}"
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
    cuts = part.name_offsets
    chunk = list(map(part.names.__getitem__, map(slice, cuts[lo:hi], cuts[lo + 1 : hi + 1])))
    return all(map(operator.lt, chunk, chunk[1:]))


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
    targets = part.targets
    changes = itertools.compress(range(1, len(targets)), map(operator.ne, targets[1:], targets[:-1]))
    starts = [0, *changes]
    for lo, hi in zip(starts, [*starts[1:], len(targets)]):
        if hi > lo:
            yield targets[lo], lo, hi


def check_counts(index: TarIndex, devkit: Devkit, label: str) -> None:
    """Every class of the devkit present (train) and the val images all there."""
    counted = collections.Counter(index.targets)
    counts = [counted[target] for target in range(len(index.wnids))]
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
