"""The units of `launcher prepare storage.format=tar` for a split whose archive a file list names
(Places365: dataset.splits.<split>.listed_by), run through the kinds of launcher.prepare.tarunits:

    tarindex  the listed files of a byte range of the split's archive -> state_dir/tarparts/<unit>.bin
              (launcher.tarformat.listed.index_listed_part); with the md5 checked, one unit reads the
              whole archive once, hashing and indexing in the same sequential read
    tarfinal  the parts merged in the list's order (merge_listed_parts), every listed file there,
              counted against dataset.expected -> state_dir/tarindex-<split>.bin

The file list and the class paths come from prepare's cache of the label archive, parsed again with
every check by the dataset's adapter (`tar_listing`). No image file is written anywhere; no torch.
"""

from __future__ import annotations

from launcher.datasets import adapter_of
from launcher.prepare.tarunits import check_merged_unchanged, read_parts, record_part, write_split_index
from launcher.tarformat.listed import Listing, check_expected, index_listed_part, listing_of, merge_listed_parts


def listed_args(adapter: str, source: dict) -> dict:
    """What a listed split's tarindex and tarfinal units are given besides ImageNet's arguments."""
    return {"listed": True, "adapter": adapter, "source": dict(source)}


def split_listing(adapter: str, split: str, devkit: str, source: dict, patterns: dict) -> Listing:
    """The split's Listing: its file list and the class paths from the cached labels (devkit.json)."""
    listed, classes = adapter_of(adapter).tar_listing(devkit, source)
    return listing_of(split, source, patterns, listed, classes)


def index_listed_range(
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
    adapter: str,
    source: dict,
) -> dict:
    """tarindex unit of a listed split: the listed files whose headers lie in [first, stop) of its
    archive, written as an index part; with `md5` (the whole archive) its md5 checked too."""
    listing = split_listing(adapter, split, devkit, source, patterns)
    index = index_listed_part(archive, listing, first, stop, md5=md5 is not None)
    return record_part(archive, split, key, first, md5, part, identity, index)


def finalize_listed_split(
    split: str,
    archive: str,
    parts: list[str],
    records: list[str],
    devkit: str,
    patterns: dict,
    expected: int | None,
    index: str,
    identity: dict,
    adapter: str,
    source: dict,
) -> dict:
    """tarfinal unit of a listed split: the parts merged into its tar index (the list's order), every
    listed file there once, the count against dataset.expected, the archive still the file planned;
    the parts removed once the index is written. Its record is the split's complete-<split>.json."""
    listing = split_listing(adapter, split, devkit, source, patterns)
    merged = merge_listed_parts(read_parts(split, parts, records), listing)
    check_merged_unchanged(archive, identity["archives"][split], merged)
    check_expected(merged, expected, f"The archive {archive}")
    return write_split_index(split, parts, merged, index, identity)
