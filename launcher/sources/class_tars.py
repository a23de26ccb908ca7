"""The *class tars* shape: a tar of per-class tars, `<class>.tar` each holding that class's images
(ImageNet train). Indexed by the outer tar's headers (one row per class tar: name, offset, size);
units are groups of whole class tars balanced by bytes; a unit writes `<root>/<folder>/<class>/`
(launcher.archive.extract.extract_train: inner tars read in place, never written)."""

from __future__ import annotations

from pathlib import Path

from launcher.archive.index import index_train
from launcher.core import plan

# what one index row is, in messages
MEMBER = "class-tar"
# stages each class under root/.partial/<folder>/ before renaming it into place
STAGES = True
# the unit function, looked up when the unit runs
EXTRACT = "launcher.archive.extract:extract_train"


def index(path: Path, source: dict, patterns: dict[str, str], listing: object, md5: str | None = None) -> dict:
    """[class tar name, data offset, size] per class; each stem matches patterns['wnid'] (the class
    tars name themselves: `listing` is not used)."""
    return index_train(path, patterns["train_class"], patterns["wnid"], md5)


def shard(members: list, wanted: int | None, parallelism: int, min_bytes: int) -> list[list[int]]:
    """Groups of class tars (row numbers), balanced by bytes; a class never spans two units."""
    sizes = [m[2] for m in members]
    n = wanted or plan.default_train_shards(len(members), sum(sizes), parallelism, min_bytes)
    return plan.balanced_groups(sizes, n)


def classes_of(members: list, group: list[int]) -> list[str]:
    return [members[j][0][: -len(".tar")] for j in group]


def unit_args(members: list, group: list[int], paths: dict, patterns: dict[str, str]) -> dict:
    """What one unit is given: the archive, root, index and label record, and its classes."""
    return {
        "train_tar": paths["archive"],
        "root": paths["root"],
        "index": paths["index"],
        "devkit": paths["labels"],
        "wnids": classes_of(members, group),
        "image_template": patterns["train_image"],
        "wnid_pattern": patterns["wnid"],
        "folder": paths["folder"],
    }


def unit_size(members: list, group: list[int]) -> int:
    return sum(members[j][2] for j in group)


def files_of(record: dict) -> list[tuple[str, str, int]]:
    """(class, file name, size) of every file a unit wrote."""
    return [(w, n, s) for w, fs in record["classes"].items() for n, s in fs]


def folders_of(record: dict) -> set[str]:
    return set(record.get("classes", ()))


def record_holds(record: dict, args: dict) -> bool:
    """A unit's record is of the same work: the same classes."""
    return set(record.get("classes", ())) == set(args["wnids"])


def expected_folders(args: dict) -> set[str]:
    return set(args["wnids"])
