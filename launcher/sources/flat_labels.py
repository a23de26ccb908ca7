"""The *flat with labels* shape: one flat tar of images whose labels come from elsewhere. ImageNet
val is labelled by image number (group 1 of patterns['val_image'] -> the devkit's ground truth);
Places365 val by its file list (launcher.sources.tree's listed index and extraction). Indexed by
headers, in name order; units are contiguous ranges balanced by bytes; a unit writes
`<root>/<folder>/<class>/<file>` (launcher.archive.extract.extract_val)."""

from __future__ import annotations

from pathlib import Path

from launcher.archive.index import index_val
from launcher.core import plan
from launcher.sources.tree import (  # noqa: F401  (a flat unit's record has the tree's shape)
    EntryCheck,
    expected_folders,
    files_of,
    flat_checker,
    folders_of,
    index_flat,
    listed_args,
    record_holds,
)

# what one index row is, in messages
MEMBER = "image"
# storage.format=tar by a list (launcher.tarformat.listed): a file's label is the list's
LABEL_FROM_PATH = False
# writes each file in place (an O_EXCL temporary renamed over its name)
STAGES = False
# the unit function, looked up when the unit runs
EXTRACT = "launcher.archive.extract:extract_val"


def index(path: Path, source: dict, patterns: dict[str, str], listing: int | dict, md5: str | None = None) -> dict:
    """By number (`listing` the count of labels): [name, data offset, size, image number] per image,
    one image per number. By list (`listing` file -> label): [file, data offset, size, label] per
    listed file of `<top>/<file>`, every listed file present."""
    if source.get("listed_by"):
        return index_flat(path, source.get("top") or "", listing, source["listed_by"], md5)
    return index_val(path, patterns["val_image"], listing, md5)


def shard(members: list, wanted: int | None, parallelism: int, min_bytes: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the index, balanced by bytes."""
    sizes = [m[2] for m in members]
    n = wanted or plan.default_val_shards(len(members), sum(sizes), parallelism, min_bytes)
    return plan.contiguous_ranges(sizes, n)


def unit_args(members: list, span: tuple[int, int], paths: dict, patterns: dict[str, str]) -> dict:
    """What one unit is given: the archive, root, index and label record, and its range."""
    if paths.get("listed_by"):
        return {**listed_args(span, paths), "class_pattern": None, "image_pattern": patterns["val_image"]}
    return {
        "val_tar": paths["archive"],
        "root": paths["root"],
        "index": paths["index"],
        "devkit": paths["labels"],
        "start": span[0],
        "stop": span[1],
        "image_pattern": patterns["val_image"],
        "wnid_pattern": patterns["wnid"],
        "folder": paths["folder"],
    }


def unit_size(members: list, span: tuple[int, int]) -> int:
    return sum(m[2] for m in members[span[0] : span[1]])


def entry_checker(patterns: dict[str, str]) -> EntryCheck:
    """The check of a listed file's name that this shape's units apply (`<image>`, no folder);
    storage.format=tar checks each indexed member with it."""
    return flat_checker(patterns["val_image"])
