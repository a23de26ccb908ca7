"""The ILSVRC2012 devkit: synsets from data/meta.mat, validation labels, and torchvision's meta.bin.

The devkit is read as a stream with a bound on decompressed bytes (a gzip bomb in the devkit slot
stops with an error, not a full disk or memory), and only the two members needed are kept.
Class order: ImageFolder/torchvision index classes by *sorted WNID*; meta.mat's ILSVRC2012_ID order
is different, and the val ground truth is in ILSVRC2012_IDs. Both are kept apart here.
"""

from __future__ import annotations

import gzip
import io
import math
import numbers
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import LauncherError

REQUIRED_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "num_children", "num_train_images")
NUMBER_FIELDS = ("ILSVRC2012_ID", "num_children", "num_train_images")  # whole numbers >= 0
TEXT_FIELDS = ("WNID", "words")
DIGITS = re.compile(r"[0-9]{1,12}", re.ASCII)  # a ground-truth line: ASCII digits only (int() takes "+1", "1_0")
MAX_COUNT = 2**31  # larger than any ID or image count of a devkit
# MAT-file v5 layout (the devkit's meta.mat): a 128-byte header, then tagged data elements
MAT_HEADER_BYTES = 128
MI_MATRIX, MI_COMPRESSED = 14, 15
# bytes per item of each MAT data type; a count that is not a multiple of it crashes scipy's reader
MI_ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
MI_INT32, MI_UINT32 = 5, 6
MX_CELL, MX_STRUCT, MX_CHAR, MX_SPARSE, MX_UINT64 = 1, 2, 4, 5, 15  # classes 4, 6..15: char, numbers
MI_INT8 = 1
MAT_MAX_BYTES = 64 << 20  # a compressed element of meta.mat inflating past this is refused
MAT_MAX_DEPTH = 16  # structs and cells nested deeper than this are refused


class DevkitError(LauncherError):
    """The devkit archive is missing something or contradicts itself."""


@dataclass
class Devkit:
    # leaf WNID -> class names, in meta.mat order (the order torchvision's dict has)
    wnid_to_classes: dict[str, tuple[str, ...]]
    # leaf WNID -> number of train images the devkit announces
    num_train_images: dict[str, int]
    # WNID of val image k (1-based) at position k-1
    val_wnids: list[str]

    @property
    def wnids(self) -> list[str]:
        """Leaf WNIDs sorted: position = class index, as in ImageFolder."""
        return sorted(self.wnid_to_classes)

    def to_json(self) -> dict:
        return {
            "wnid_to_classes": {w: list(c) for w, c in self.wnid_to_classes.items()},
            "num_train_images": self.num_train_images,
            "val_wnids": self.val_wnids,
        }

    @classmethod
    def from_json(cls, data: dict) -> Devkit:
        return cls(
            wnid_to_classes={w: tuple(c) for w, c in data["wnid_to_classes"].items()},
            num_train_images={w: int(n) for w, n in data["num_train_images"].items()},
            val_wnids=list(data["val_wnids"]),
        )


class BoundedReader(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes came through it."""

    def __init__(self, stream, limit: int, label: str):
        self.stream, self.limit, self.label, self.count = stream, limit, label, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.stream.read(len(buf))
        self.count += len(data)
        if self.count > self.limit:
            raise DevkitError(
                f"{self.label} decompresses to more than {self.limit:,} bytes; the real devkit is "
                "about 2.5 MB. This is not an ILSVRC2012 devkit (a gzip bomb?). Replace the file, or "
                "raise dataset.labels.max_bytes if you are sure."
            )
        buf[: len(data)] = data
        return len(data)


def read_devkit_members(path: Path, wanted: tuple[str, ...], max_bytes: int) -> dict[str, bytes]:
    """The bytes of the `wanted` members of a devkit .tar.gz, read as a bounded stream."""
    found: dict[str, bytes] = {}
    label = f"The devkit archive {path}"
    try:
        with gzip.open(path, "rb") as gz:
            stream = io.BufferedReader(BoundedReader(gz, max_bytes, label))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    if info.name in wanted and info.isfile():
                        if info.size > max_bytes:
                            raise DevkitError(f"{label}: member {info.name} claims {info.size:,} bytes")
                        found[info.name] = tar.extractfile(info).read()
                        if len(found) == len(wanted):
                            break
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise DevkitError(
            f"{label} cannot be read as a gzip-compressed tar ({err}). It is truncated, corrupt "
            "or not the devkit: download ILSVRC2012_devkit_t12.tar.gz again."
        ) from err
    missing = [m for m in wanted if m not in found]
    if missing:
        raise DevkitError(
            f"{label} has no member {', '.join(missing)}. The ILSVRC2012 devkit holds "
            "ILSVRC2012_devkit_t12/data/meta.mat and data/ILSVRC2012_validation_ground_truth.txt; "
            "check the file, or the member names under dataset.labels.members."
        )
    return found


def check_mat_elements(data: bytes, label: str) -> None:
    """Walk the tags of a MAT-file v5 before scipy reads it: every element's byte count must fit inside
    its parent, compressed elements inflate to at most MAT_MAX_BYTES, cells and structs announce no more
    elements than their bytes can hold, nesting stays shallow. scipy allocates what a tag announces
    before reading it (a 4-byte edit asks for gigabytes), so this bounds its memory by the file's size."""
    if len(data) < MAT_HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        raise DevkitError(f"{label} is not a MATLAB 5 MAT-file (no MAT header). Use the original ILSVRC2012 devkit.")
    order = "<" if data[126:128] == b"IM" else ">"
    walk_mat(data, MAT_HEADER_BYTES, len(data), order, 0, label, top=True)


def walk_mat(data: bytes, pos: int, end: int, order: str, depth: int, label: str, top: bool = False) -> list:
    """Check the elements in data[pos:end]; (type, offset of the data, size) of each."""
    parts = []
    while pos + 8 <= end:
        kind, size = struct.unpack_from(order + "II", data, pos)
        if kind >> 16:  # small element: type and size in 4 bytes, data in the next 4
            kind, size = kind & 0xFFFF, kind >> 16
            check_items(kind, size, label, pos, small=True)
            parts.append((kind, pos + 4, size))
            pos += 8
            continue
        if size > end - pos - 8:
            raise bad_mat(label, pos, f"an element claims {size:,} bytes, {end - pos - 8:,} are left")
        body = pos + 8
        if kind == MI_MATRIX:
            check_matrix(data, body, body + size, order, depth + 1, label)
        elif kind == MI_COMPRESSED and top:
            inner = inflate_mat(data[body : body + size], label, pos)
            if [k for k, _, _ in walk_mat(inner, 0, len(inner), order, depth, label)] != [MI_MATRIX]:
                raise bad_mat(label, pos, "a compressed element does not hold one array")
        elif top:
            raise bad_mat(label, pos, f"a variable of type {kind}, not an array")
        else:
            check_items(kind, size, label, pos)
        parts.append((kind, body, size))
        step = 8 + size if kind == MI_COMPRESSED else 8 + (size + 7) // 8 * 8
        assert step > 0, "the MAT walk must advance"
        pos += step
    return parts


def check_matrix(data: bytes, pos: int, end: int, order: str, depth: int, label: str) -> None:
    """A miMATRIX: flags, dims, name, then the parts its class has (one array per cell of a cell
    array, one per field and cell of a struct, a real and an imaginary part of a complex array...)."""
    if depth > MAT_MAX_DEPTH:
        raise bad_mat(label, pos, f"cells or structs nested more than {MAT_MAX_DEPTH} deep")
    if pos == end:  # an empty array (as in an empty cell)
        return
    parts = walk_mat(data, pos, end, order, depth, label)
    kinds = [kind for kind, _, _ in parts]
    if kinds[:3] != [MI_UINT32, MI_INT32, MI_INT8] or parts[0][2] != 8 or not 8 <= parts[1][2] <= 4 * 32:
        raise bad_mat(label, pos, "an array does not start with its flags, its dimensions (2 to 32) and its name")
    flags = struct.unpack_from(order + "I", data, parts[0][1])[0]
    mx_class, complex_ = flags & 0xFF, bool(flags & 0x0800)
    if flags & ~0x0EFF:
        raise bad_mat(label, pos, f"an array has unknown flags 0x{flags:08x}")
    cells = 1
    for d in struct.unpack_from(f"{order}{parts[1][2] // 4}i", data, parts[1][1]):
        if d < 0:
            raise bad_mat(label, pos, f"an array has a negative dimension ({d})")
        cells *= d
    rest = kinds[3:]
    if mx_class in (MX_CELL, MX_STRUCT) and cells > (end - pos) // 8:
        raise bad_mat(label, pos, f"a cell or struct array announces {cells:,} elements in {end - pos:,} bytes")
    if mx_class == MX_CELL:
        fits = rest == [MI_MATRIX] * cells
    elif mx_class == MX_STRUCT:
        fits = len(rest) >= 2 and rest[:2] == [MI_INT32, MI_INT8] and parts[3][2] == 4
        width = struct.unpack_from(order + "i", data, parts[3][1])[0] if fits else 0
        fits = fits and width > 0 and parts[4][2] % width == 0
        fits = fits and rest[2:] == [MI_MATRIX] * (cells * (parts[4][2] // width if width > 0 else 0))
    elif mx_class == MX_SPARSE:
        fits = len(rest) == 3 + complex_ and MI_MATRIX not in rest
    elif MX_CHAR <= mx_class <= MX_UINT64:
        fits = len(rest) == 1 + complex_ and MI_MATRIX not in rest
    else:
        raise bad_mat(label, pos, f"an array of class {mx_class} (objects, functions: not in a devkit)")
    if not fits:
        raise bad_mat(label, pos, f"an array of class {mx_class} holds parts {rest[:8]} that do not fit it")


def check_items(kind: int, size: int, label: str, offset: int, small: bool = False) -> None:
    """A data element of a known type holding whole items (a small one holds at most 4 bytes)."""
    item = MI_ITEM_BYTES.get(kind)
    if item is None or size % item or (small and size > 4):
        raise bad_mat(label, offset, f"an element of type {kind} holds {size} bytes")


def inflate_mat(compressed: bytes, label: str, offset: int) -> bytes:
    try:
        inflater = zlib.decompressobj()
        inner = inflater.decompress(compressed, MAT_MAX_BYTES + 1)
    except zlib.error as err:
        raise bad_mat(label, offset, f"a compressed element does not inflate ({err})") from None
    if len(inner) > MAT_MAX_BYTES:
        raise bad_mat(label, offset, f"a compressed element inflates past {MAT_MAX_BYTES:,} bytes")
    return inner


def bad_mat(label: str, offset: int, why: str) -> DevkitError:
    return DevkitError(
        f"{label} is corrupt at byte {offset:,}: {why}. This is not the ILSVRC2012 devkit's meta.mat: "
        "download the devkit again."
    )


def check_field_types(synsets, label: str) -> None:
    """Each synset's numbers are whole numbers >= 0 and its WNID and words are text, as in the devkit;
    a string, array, struct or NaN where one belongs fails naming the synset and the field."""
    for index, synset in enumerate(synsets, start=1):
        for field in NUMBER_FIELDS:
            if whole_number(synset[field]) is None:
                raise bad_field(label, index, field, synset[field], "a whole number >= 0")
        for field in TEXT_FIELDS:
            if not isinstance(synset[field], str):
                raise bad_field(label, index, field, synset[field], "text")


def whole_number(value) -> int | None:
    """A Python or numpy integer, or a float with no fraction (MATLAB stores doubles), in [0, 2**31)."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (float, np.floating)) and not (np.isfinite(value) and float(value).is_integer()):
        return None
    number = int(value)
    return number if 0 <= number < MAX_COUNT else None


def bad_field(label: str, index: int, field: str, value, expected: str) -> DevkitError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return DevkitError(
        f"{label}: synset {index} has {field} = {shown} ({type(value).__name__}) where {expected} belongs. "
        "This is not the ILSVRC2012 devkit's meta.mat: download the devkit again."
    )


# ---------------------------------------------------------------- names (untrusted until they match)


@dataclass(frozen=True)
class NamePatterns:
    """dataset.patterns.wnid and .ilsvrc_id, compiled in ASCII (no other digits, no other letters)."""

    wnid: re.Pattern
    ilsvrc_id: re.Pattern

    @classmethod
    def of(cls, wnid: str, ilsvrc_id: str) -> NamePatterns:
        return cls(re.compile(wnid, re.ASCII), re.compile(ilsvrc_id, re.ASCII))


def leaf_wnid(value, names: NamePatterns, label: str) -> str:
    """A synset's WNID, which becomes a folder name: it must match dataset.patterns.wnid in full."""
    text = value if isinstance(value, str) else str(value)
    if not names.wnid.fullmatch(text):
        raise DevkitError(
            f"{label}: the field WNID holds {text[:40]!r}, which does not match the pattern "
            f"{names.wnid.pattern!r} (dataset.patterns.wnid); it would become a folder name. This is "
            "not the ILSVRC2012 devkit: download it again."
        )
    return text


def leaf_id(value, names: NamePatterns, label: str) -> int:
    """A synset's ILSVRC2012_ID: an integer whose decimal text matches dataset.patterns.ilsvrc_id."""
    text = number_text(value)
    if not names.ilsvrc_id.fullmatch(text):
        raise DevkitError(
            f"{label}: the field ILSVRC2012_ID holds {text[:40]!r}, which does not match the pattern "
            f"{names.ilsvrc_id.pattern!r} (dataset.patterns.ilsvrc_id). This is not the ILSVRC2012 "
            "devkit: download it again."
        )
    return int(text)


def number_text(value) -> str:
    """The decimal text of a number read from meta.mat (an integer, or a float with no fraction, as
    MATLAB stores numbers); anything else as it is written, for the pattern to refuse."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return value if isinstance(value, str) else repr(value)


def check_unique(values: list, field: str, label: str) -> None:
    seen: set = set()
    for value in values:
        if value in seen:
            raise DevkitError(
                f"{label}: two leaf synsets have the {field} {value!r}; this is not the ILSVRC2012 "
                "devkit: download it again."
            )
        seen.add(value)


def parse_meta_mat(
    data: bytes, label: str, names: NamePatterns
) -> tuple[dict[int, str], dict[str, tuple[str, ...]], dict[str, int]]:
    """(ILSVRC2012_ID -> WNID, WNID -> class names, WNID -> train count) of the leaf synsets."""
    import numpy as np
    import scipy.io

    check_mat_elements(data, label)
    try:
        synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    except Exception as err:  # scipy raises many kinds for a bad file
        raise DevkitError(f"{label} is not a readable meta.mat with `synsets` ({err}).") from err
    synsets = np.atleast_1d(synsets)
    fields = synsets.dtype.names or ()
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise DevkitError(
            f"{label}: the synsets lack the field(s) {', '.join(missing)}; a devkit meta.mat has "
            f"{', '.join(REQUIRED_FIELDS)} (and more). Use the original ILSVRC2012 devkit."
        )
    check_field_types(synsets, label)
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    if not leaves:
        raise DevkitError(f"{label}: no leaf synsets (num_children == 0) in meta.mat")
    ids = [leaf_id(s["ILSVRC2012_ID"], names, label) for s in leaves]
    wnids = [leaf_wnid(s["WNID"], names, label) for s in leaves]
    check_unique(ids, "ILSVRC2012_ID", label)
    check_unique(wnids, "WNID", label)
    id_to_wnid = dict(zip(ids, wnids))
    wnid_to_classes = {w: tuple(str(s["words"]).split(", ")) for w, s in zip(wnids, leaves)}
    counts = {w: int(s["num_train_images"]) for w, s in zip(wnids, leaves)}
    return id_to_wnid, wnid_to_classes, counts


def parse_ground_truth(data: bytes, id_to_wnid: dict[int, str], label: str, names: NamePatterns) -> list[str]:
    """WNID of each val image, from one ILSVRC2012_ID per line (ASCII digits, `\\n`-terminated)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the file ends with a newline
        lines.pop()
    wnids = []
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("ascii", "replace")
        if not names.ilsvrc_id.fullmatch(text) or int(text) not in id_to_wnid:
            raise DevkitError(
                f"{label}: line {number} is {text[:40]!r}, not the ILSVRC2012_ID of a leaf synset "
                f"(pattern {names.ilsvrc_id.pattern!r}, 1..{len(id_to_wnid)}). The ground truth does "
                "not belong to this meta.mat: download the devkit again."
            )
        wnids.append(id_to_wnid[int(text)])
    return wnids


def parse_devkit(
    path: Path, meta_member: str, ground_truth_member: str, max_bytes: int, *, wnid_pattern: str, id_pattern: str
) -> Devkit:
    """Read meta.mat and the validation ground truth out of the devkit archive; every WNID and
    ILSVRC2012_ID must match its pattern (dataset.patterns) before anything uses it."""
    path = Path(path)
    if not path.is_file():
        raise DevkitError(f"The devkit archive {path} is not there.")
    names = NamePatterns.of(wnid_pattern, id_pattern)
    members = read_devkit_members(path, (meta_member, ground_truth_member), max_bytes)
    id_to_wnid, wnid_to_classes, counts = parse_meta_mat(members[meta_member], f"{path}:{meta_member}", names)
    val_wnids = parse_ground_truth(members[ground_truth_member], id_to_wnid, f"{path}:{ground_truth_member}", names)
    return Devkit(wnid_to_classes=wnid_to_classes, num_train_images=counts, val_wnids=val_wnids)
