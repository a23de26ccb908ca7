"""The tar index of an image archive whose files a file list names: the *tree* shape (Places365 train:
`<top>/<class path>/<file>`) and the *flat with labels* shape labelled by a list (Places365 val:
`<top>/<file>`), launcher.sources.tree's shapes read in place instead of extracted.

    listing = listing_of(split, source, patterns, listed, classes)    # from the parsed file lists
    part = index_listed_part(path, listing, first, stop)              # one unit: a byte range
    index = merge_listed_parts([part, ...], listing)                  # the list's order
    write_index(state_dir / "tarindex-train.bin", index)              # launcher.tarformat.indexfile

A unit walks the headers in bytes [first, stop) of the archive (launcher.tarformat.index's range
walk over launcher.archive.tarscan; with `md5=True` the whole file read once, in order, and hashed as
it passes). Every member is checked as the folder prepare checks it (launcher.sources.tree's
listed_member: a regular file listed in the file list, or a folder a listed file sits in, each file
once; its path then checked by the shape's entry_checker, the patterns in full, in ASCII), its size
bounded; a file's label is its class path's (tree, checked against the list) or the list's (flat).
The merge checks that the units covered the archive, that no file was indexed twice and that every
listed file is there, and orders the images as the list does (torchvision's Places365 `imgs`). The
index is a `listed` TarIndex: names are paths below the split's images folder, the classes the
list's class paths in index order. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from launcher.archive.tarscan import Member
from launcher.core.errors import LauncherError
from launcher.sources import check_folder, shape_module
from launcher.sources.tree import EntryCheck, ShapeError, check_all_present, listed_folders, listed_member
from launcher.tarformat.index import check_cover, checked_size, padded, walk_range
from launcher.tarformat.indexfile import MAX_NAME_BYTES, TarIndex


@dataclass(frozen=True)
class Listing:
    """What a listed split's archive must hold, from its parsed file list and the dataset config."""

    split: str
    prefix: str  # the archive's top folder (dataset.splits.<split>.top)
    listed: dict[str, int]  # path below the images folder -> label, in the list's line order
    classes: list[str]  # the class paths in index order (the categories file's)
    folder: str  # the split's images folder in a folder root (dataset.splits.<split>.folder)
    entry_ok: EntryCheck  # the shape's check of a listed path (launcher.sources.*.entry_checker)
    label_from_path: bool  # tree: a file's label is its class path's
    list_label: str  # how messages name the file list


def listing_of(split: str, source: dict, patterns: dict, listed: dict[str, int], classes: Iterable[str]) -> Listing:
    """The Listing of a split from its dataset.splits.<split> node, dataset.patterns and its list."""
    shape = shape_module(source["shape"])
    return Listing(
        split,
        source.get("top") or "",
        listed,
        list(classes),
        check_folder(split, source["folder"]),
        shape.entry_checker(patterns),
        shape.LABEL_FROM_PATH,
        str(source["listed_by"]),
    )


def new_index(listing: Listing, archive: dict, kind: str = "index") -> TarIndex:
    """An empty listed TarIndex of the split: the list's class paths, each its own class name."""
    classes = list(listing.classes)
    return TarIndex(
        listing.split, archive, classes, [[c] for c in classes], kind=kind, layout="listed", folder=listing.folder
    )


# ---------------------------------------------------------------- one unit: a byte range


def index_listed_part(
    path: str | Path, listing: Listing, first: int = 0, stop: int | None = None, md5: bool = False
) -> TarIndex:
    """One unit: the listed files whose headers lie in [first, stop) of the archive at `path` (the
    whole archive by default), in archive order. With `md5` (the whole archive only) every byte is
    read once, in order, and hashed as it is read; the md5 lands in the part's identity."""

    def walk(fd: int, members: Iterable[Member], window, ident: dict) -> tuple[TarIndex, int]:
        part = new_index(listing, ident, kind="part")
        return part, walk_listed(members, part, listing, f"The archive {path}")

    return walk_range(path, first, stop, md5, walk)


def walk_listed(members: Iterable[Member], part: TarIndex, listing: Listing, label: str) -> int:
    """Each listed file of the walk into `part` (folders of listed files passed over, anything else
    refused); returns the byte after the last member walked."""
    folders, seen, after = listed_folders(listing.listed), set(), 0
    target_of = {name: i for i, name in enumerate(listing.classes)}
    for m in members:
        after = m.offset + padded(m.size)
        rel = listed_member(m, listing.prefix, listing.listed, folders, seen, (label, listing.list_label))
        if rel is None:
            continue
        check_path(rel, m, listing, label)
        size = checked_size(m, label, "The archive is not the one the file list describes.", ShapeError)
        part.add(rel, m.offset, size, label_of(rel, listing, target_of, label))
    return after


def check_path(rel: str, member: Member, listing: Listing, label: str) -> None:
    """The file's path below the images folder passes the shape's patterns (ASCII, in full) and fits
    the index (a name of at most MAX_NAME_BYTES bytes)."""
    if not listing.entry_ok(rel) or len(rel.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ShapeError(
            f"{label}: member {member.name!r} (offset {member.offset:,}) is not a path of the dataset's patterns "
            f"of at most {MAX_NAME_BYTES} bytes below {listing.prefix}/; nothing was indexed. The archive and "
            f"{listing.list_label} do not belong together: download both again from the same release."
        )


def label_of(rel: str, listing: Listing, target_of: dict[str, int], label: str) -> int:
    """The file's class index: its class path's (tree; the list must say the same) or the list's (flat)."""
    listed = listing.listed[rel]
    if not listing.label_from_path:
        return listed
    class_path = "/" + rel.rpartition("/")[0]
    target = target_of.get(class_path)
    if target != listed:
        raise ShapeError(
            f"{label}: {rel!r} lies under class {class_path} (index {target}), but {listing.list_label} labels it "
            f"{listed}; the archive and the file lists do not belong together: download both again."
        )
    return target


# ---------------------------------------------------------------- the parts merged


def merge_listed_parts(parts: list[TarIndex], listing: Listing) -> TarIndex:
    """The split's index from its units' parts: one unchanged archive covered from byte 0 to its
    end-of-archive marker, each listed file indexed once, none missing; in the list's order."""
    if not parts:
        raise ValueError("no parts to merge")
    parts = sorted(parts, key=lambda p: p.span[0])
    check_cover(parts)
    label = f"The archive {parts[0].archive['path']}"
    found: dict[str, tuple[int, int, int]] = {}
    for part in parts:
        if part.layout != "listed" or part.wnids != listing.classes:
            raise ValueError("parts of another listing")
        for name, offset, size, target in part.entries():
            if name in found:
                raise ShapeError(f"{label}: {name!r} appears twice; download the archive again.")
            found[name] = (offset, size, target)
    check_all_present(listing.listed, found.keys(), label, listing.list_label)
    merged = new_index(listing, dict(parts[0].archive))
    for rel in listing.listed:
        merged.add(rel, *found[rel])
    return merged


def check_expected(index: TarIndex, expected: int | None, label: str) -> None:
    """The split's image count against dataset.expected.<split> (the list's own count merge checked)."""
    if expected is not None and len(index) != expected:
        raise LauncherError(
            f"{label} holds {len(index)} {index.split} images, dataset.expected.{index.split} is {expected}. Use the "
            "archives the dataset describes, or its synthetic variant (it takes every count from the file lists)."
        )
