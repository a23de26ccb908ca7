"""The units of `launcher prepare storage.format=tar` (launcher.core.units runs them by kind):

    tarindex  the images of a byte range of a split's archive -> state_dir/tarparts/<unit>.bin
              (launcher.tarformat.index.index_part); with the md5 checked, one unit reads the whole
              archive once, hashing and indexing in the same sequential read
    tarfinal  the parts merged in torchvision's order (merge_parts), counted against the devkit and
              dataset.expected -> state_dir/tarindex-<split>.bin; its record is complete-<split>.json

A split whose archive a file list names (Places365: dataset.splits.<split>.listed_by) runs the same
two kinds through launcher.prepare.tarlisted (the unit's arguments say `listed`).

No image file is written anywhere: the loaders read each image's byte range from the archive.
No torch here (prepare runs without it).
"""

from __future__ import annotations

import time
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.index import archive_identity, same_identity
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json
from launcher.datasets.imagenet.devkit import Devkit
from launcher.tarformat.index import Patterns, index_part, merge_parts
from launcher.tarformat.indexfile import TarIndex, read_index, write_index


def devkit_of(devkit: str) -> Devkit:
    """The devkit prepare cached (devkit.json), or one line saying the next prepare reads it again."""
    cached = read_json(Path(devkit))
    if cached is None or not isinstance(cached.get("devkit"), dict):
        raise LauncherError(f"{devkit} is missing or damaged; the next `launcher prepare` reads the devkit again.")
    return Devkit.from_json(cached["devkit"])


def check_unchanged(path: str, planned: dict, seen: dict) -> None:
    """The archive a unit read is the file the plan indexed, unchanged (else its ranges mean nothing)."""
    if not same_identity(seen, planned):
        raise LauncherError(
            f"The archive {path} changed since prepare planned its units (size, times or inode differ). "
            "Run `launcher prepare` again: it indexes the archive anew."
        )


def check_md5(path: str, key: str, expected: str | None, actual: str | None) -> None:
    if expected is not None and actual != expected.lower():
        raise LauncherError(
            f"md5 mismatch for {path}: expected {expected} (dataset.archives.{key}.md5), got {actual}. The "
            f"archive is corrupt or another version: download it again, or set dataset.archives.{key}.md5 to "
            "the right value (null skips the check)."
        )


def index_range(
    archive: str,
    split: str,
    key: str,
    devkit: str,
    patterns: dict,
    first: int,
    stop: int | None,
    md5: str | None,
    part: str,
    identity: dict,
) -> dict:
    """tarindex unit: the images of the outer members whose headers lie in [first, stop) of the
    split's archive, written as an index part; with `md5` (the whole archive) its md5 checked too."""
    index = index_part(archive, split, devkit_of(devkit), Patterns.of(patterns), first, stop, md5=md5 is not None)
    return record_part(archive, split, key, first, md5, part, identity, index)


def record_part(
    archive: str, split: str, key: str, first: int, md5: str | None, part: str, identity: dict, index: TarIndex
) -> dict:
    """A tarindex unit's part checked (the archive planned, unchanged; its md5 when asked), written,
    and the unit's record."""
    check_unchanged(archive, identity, index.archive)
    check_md5(archive, key, md5, index.archive.get("md5"))
    write_index(part, index)
    end = index.span[1]
    return {
        "split": split,
        "key": key,
        "images": len(index),
        "bytes": (end - first) if md5 is None else index.archive["size"],
        "archive": index.archive,
        "span": index.span,
        "md5": index.archive.get("md5"),
        "part": part,
    }


def read_parts(split: str, parts: list[str], records: list[str]) -> list[TarIndex]:
    """Every index part of the split, once each of its units has a completion record."""
    missing = [Path(r).stem for r in records if not safefs.is_file(r) or read_json(Path(r)) is None]
    if missing:
        raise LauncherError(
            f"{split} is not complete: units {', '.join(missing)} have no completion record "
            "(their errors are in their job logs; `launcher status` shows them)."
        )
    return [read_index(p, split, kind="part") for p in parts]


def check_total(split: str, index: TarIndex, devkit: Devkit, expected: int | None, label: str) -> None:
    """The split's image count against the devkit's (train: num_train_images summed; val: one per
    ground-truth line, merge_parts checked it) and against dataset.expected.<split>."""
    if split == "train" and len(index) != sum(devkit.num_train_images.values()):
        raise LauncherError(
            f"{label} holds {len(index)} train images, the devkit announces {sum(devkit.num_train_images.values())}. "
            "The archive and the devkit do not belong together: download both again from the same release."
        )
    if expected is not None and len(index) != expected:
        raise LauncherError(
            f"{label} holds {len(index)} {split} images, dataset.expected.{split} is {expected}. Use the archives "
            "the dataset describes, or dataset=synthetic (it takes every count from the devkit)."
        )


def finalize_tar_split(
    split: str,
    archive: str,
    parts: list[str],
    records: list[str],
    devkit: str,
    patterns: dict,
    expected: int | None,
    index: str,
    identity: dict,
) -> dict:
    """tarfinal unit: the parts merged into the split's tar index (torchvision's order), counts
    checked, the archive still the file planned; the parts removed once the index is written. Its
    completion record (written by the unit runner) is the split's complete-<split>.json."""
    kit = devkit_of(devkit)
    merged = merge_parts(read_parts(split, parts, records), kit, Patterns.of(patterns))
    check_merged_unchanged(archive, identity["archives"][split], merged)
    check_total(split, merged, kit, expected, f"The archive {archive}")
    return write_split_index(split, parts, merged, index, identity)


def check_merged_unchanged(archive: str, planned: dict, merged: TarIndex) -> None:
    """The parts read the archive planned, and it is still that file, unchanged."""
    check_unchanged(archive, planned, merged.archive)
    check_unchanged(archive, planned, archive_identity(archive))


def write_split_index(split: str, parts: list[str], merged: TarIndex, index: str, identity: dict) -> dict:
    """The merged index written (atomically), the parts removed; the tarfinal unit's record."""
    size = write_index(index, merged)
    for part in parts:
        safefs.remove(part)
    return {
        "split": split,
        "format": "tar",
        "images": len(merged),
        "bytes": sum(merged.sizes),
        "classes": len(merged.wnids),
        "index": index,
        "index_bytes": size,
        "identity": identity,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ---------------------------------------------------------------- the kinds' functions (launcher.core.units)


def index_unit(listed: bool = False, **args) -> dict:
    """tarindex unit: a split whose archive a file list names by launcher.prepare.tarlisted, else
    (ImageNet's class tars and numbered val) index_range."""
    if listed:
        from launcher.prepare.tarlisted import index_listed_range

        return index_listed_range(**args)
    return index_range(**args)


def final_unit(listed: bool = False, **args) -> dict:
    """tarfinal unit: a listed split by launcher.prepare.tarlisted, else finalize_tar_split."""
    if listed:
        from launcher.prepare.tarlisted import finalize_listed_split

        return finalize_listed_split(**args)
    return finalize_tar_split(**args)
