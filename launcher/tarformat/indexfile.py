"""The index file of `launcher.tarformat`: `TarIndex` (parallel arrays of offsets, sizes, targets
and one names blob) and its checksummed binary encoding, read back with every bound checked.

The file (little-endian): MAGIC, u64 length of a JSON header, the header, zero padding to 8, then
offsets (u64), sizes (u32), targets (i32), one zlib stream of every name's length (u8: a member
name has at most 255 bytes) followed by the names (UTF-8, one after another), zero padding to 8,
and the sha256 of everything before it (32 bytes): ~20 bytes per image. The header holds the format
version, the kind (`index`, or `part` with its span), the split, the archive's identity
(launcher.archive.index.archive_identity: size, mtime_ns, ctime_ns, inode, device, md5), the counts,
and the sorted WNIDs with their class names. Stdlib only: the preparation side runs without torch.

Two layouts of the names: `class` (ImageNet: a name is a file name, the image's logical path
`<split>/<wnid>/<name>`, targets in class order) and `listed` (an archive named by a file list,
launcher.tarformat.listed: a name is the path below the split's images folder, the logical path
`<folder>/<name>`, the images in the list's order, the classes the list's class paths). A `listed`
header adds `layout` and `folder`; a `class` header is as it always was.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.extract import safe_name
from launcher.archive.index import IDENTITY_KEYS
from launcher.core.errors import LauncherError
from launcher.sources.entries import path_problem

VERSION = 1
MAGIC = b"LTARIDX\n"
SPLITS = ("train", "val")
KINDS = ("index", "part")
LAYOUTS = ("class", "listed")
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
    layout: str = "class"  # `listed`: names are paths below `folder`, in the file list's order
    folder: str = ""  # listed: the split's images folder in a folder root (its logical paths start there)

    def __len__(self) -> int:
        return len(self.offsets)

    def name(self, i: int) -> str:
        return bytes(self.names[self.name_offsets[i] : self.name_offsets[i + 1]]).decode("utf-8")

    def relpath(self, i: int) -> str:
        """Image i's path below its split's folder: `<wnid>/<name>` (class), `<name>` (listed)."""
        if self.layout == "listed":
            return self.name(i)
        return f"{self.wnids[self.targets[i]]}/{self.name(i)}"

    def path(self, i: int) -> str:
        """The logical path of image i: the path it has in a folder root."""
        return f"{self.folder if self.layout == 'listed' else self.split}/{self.relpath(i)}"

    def add(self, name: str, offset: int, size: int, target: int) -> None:
        if not isinstance(self.names, bytearray):  # one read back: appended to in place from now on
            self.names = bytearray(self.names)
        self.names += name.encode("utf-8")
        self.name_offsets.append(len(self.names))
        self.offsets.append(offset)
        self.sizes.append(size)
        self.targets.append(target)

    def add_many(self, names: list[str], offsets, sizes, target: int) -> None:
        """add() for many images of one class."""
        if not isinstance(self.names, bytearray):
            self.names = bytearray(self.names)
        joined = "".join(names)
        if joined.isascii():  # a character per byte: the lengths are the strings'
            lengths, data = map(len, names), joined.encode("ascii")
        else:
            encoded = [name.encode("utf-8") for name in names]
            lengths, data = map(len, encoded), b"".join(encoded)
        ends = itertools.accumulate(lengths, initial=len(self.names))
        self.name_offsets.extend(itertools.islice(ends, 1, None))  # the first is the last name's end: there
        self.names += data
        self.offsets.extend(iter(offsets))  # iter(): an array of another type code is taken value by value
        self.sizes.extend(iter(sizes))
        self.targets.extend(itertools.repeat(target, len(names)))

    def extend(self, part: TarIndex, lo: int, hi: int) -> None:
        """Append images [lo, hi) of another index (their order and targets as they are)."""
        if not isinstance(self.names, bytearray):
            self.names = bytearray(self.names)
        start = part.name_offsets[lo]
        shift = len(self.names) - start
        self.names += part.names[start : part.name_offsets[hi]]
        self.name_offsets.extend(map(shift.__add__, part.name_offsets[lo + 1 : hi + 1]))
        self.offsets.extend(part.offsets[lo:hi])
        self.sizes.extend(part.sizes[lo:hi])
        self.targets.extend(part.targets[lo:hi])

    def entries(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, int, int, int]]:
        """(name, offset, size, target) of images [lo, hi)."""
        for i in range(lo, len(self) if hi is None else hi):
            yield self.name(i), self.offsets[i], self.sizes[i], self.targets[i]


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
    if index.layout != "class":  # a class index's header stays as it always was
        header |= {"layout": index.layout, "folder": index.folder}
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
        layout=header.get("layout", "class"),
        folder=header.get("folder", ""),
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
    listed = h.get("layout", "class") == "listed"
    return [
        ("layout", lambda: h.get("layout", "class") in LAYOUTS),
        ("folder", lambda: folder_ok(h.get("folder")) if listed else "folder" not in h),
        ("kind", lambda: h.get("kind") in KINDS),
        ("split", lambda: h.get("split") in SPLITS),
        ("count", lambda: whole(n, 0, MAX_COUNT)),
        ("names_bytes", lambda: whole(h.get("names_bytes"), 0, MAX_NAME_BYTES * n)),
        ("names_stored", lambda: whole(h.get("names_stored"), 0, MAX_INDEX_BYTES)),
        ("archive", lambda: isinstance(archive, dict) and all(whole(archive.get(k), 0, 2**64) for k in IDENTITY_KEYS)),
        ("archive path", lambda: isinstance(archive.get("path"), str)),
        ("md5", lambda: archive.get("md5") is None or isinstance(archive.get("md5"), str)),
        ("wnids", lambda: isinstance(wnids, list) and all(class_name_ok(w, listed) for w in wnids)),
        ("wnid order", lambda: wnids == sorted(set(wnids))),
        ("classes", lambda: isinstance(classes, list) and len(classes) == len(wnids)),
        ("class names", lambda: all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in classes)),
        ("span", lambda: h.get("span") is None if h["kind"] == "index" else check_span(h.get("span"))),
    ]


def folder_ok(folder) -> bool:
    """A listed index's images folder: one plain folder name (opened below the root, never a path)."""
    return isinstance(folder, str) and safe_name(folder)


def class_name_ok(name: str, listed: bool) -> bool:
    """A class of a class index is a WNID folder (one plain name); of a listed index a class path of
    the list (`/a/airfield`: ASCII, no empty, `.` or `..` part, no NUL)."""
    if not isinstance(name, str) or not listed:
        return isinstance(name, str) and safe_name(name)
    return name.isascii() and path_problem(name) is None


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
    in_class_order = index.kind == "index" and index.layout == "class"
    if in_class_order and targets != sorted(targets):  # sorted input: one linear pass in C
        raise bad_index(path, "its targets are not in class order")
