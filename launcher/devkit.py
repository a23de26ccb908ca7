"""The ILSVRC2012 devkit: synsets from data/meta.mat, validation labels, and torchvision's meta.bin.

The devkit is read as a stream with a bound on decompressed bytes (a gzip bomb in the devkit slot
stops with an error, not a full disk or memory), and only the two members needed are kept.
Class order: ImageFolder/torchvision index classes by *sorted WNID*; meta.mat's ILSVRC2012_ID order
is different, and the val ground truth is in ILSVRC2012_IDs. Both are kept apart here.
"""

from __future__ import annotations

import gzip
import io
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


def parse_meta_mat(data: bytes, label: str) -> tuple[dict[int, str], dict[str, tuple[str, ...]], dict[str, int]]:
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
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    wnid_to_classes = {str(s["WNID"]): tuple(str(s["words"]).split(", ")) for s in leaves}
    counts = {str(s["WNID"]): int(s["num_train_images"]) for s in leaves}
    return id_to_wnid, wnid_to_classes, counts


def parse_ground_truth(data: bytes, id_to_wnid: dict[int, str], label: str) -> list[str]:
    """WNID of each val image, from one ILSVRC2012_ID per line."""
    wnids = []
    for number, line in enumerate(data.decode("ascii", "replace").split(), start=1):
        try:
            wnids.append(id_to_wnid[int(line)])
        except (ValueError, KeyError):
            raise DevkitError(
                f"{label}: line {number} is {line!r}, not the ILSVRC2012_ID of a leaf synset "
                f"(1..{len(id_to_wnid)}). The ground truth does not belong to this meta.mat."
            ) from None
    return wnids


def parse_devkit(path: Path, meta_member: str, ground_truth_member: str, max_bytes: int) -> Devkit:
    """Read meta.mat and the validation ground truth out of the devkit archive."""
    path = Path(path)
    if not path.is_file():
        raise DevkitError(f"The devkit archive {path} is not there.")
    members = read_devkit_members(path, (meta_member, ground_truth_member), max_bytes)
    id_to_wnid, wnid_to_classes, counts = parse_meta_mat(members[meta_member], f"{path}:{meta_member}")
    val_wnids = parse_ground_truth(members[ground_truth_member], id_to_wnid, f"{path}:{ground_truth_member}")
    return Devkit(wnid_to_classes=wnid_to_classes, num_train_images=counts, val_wnids=val_wnids)
