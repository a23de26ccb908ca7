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
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError

REQUIRED_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "num_children", "num_train_images")


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
                "raise dataset.devkit.max_bytes if you are sure."
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
            "check the file, or the member names under dataset.devkit."
        )
    return found


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
