"""prepare's inputs read once and cached beside the root: the archives' header indexes, each by its
split's shape (launcher.sources); the labels they are checked against come from the dataset's adapter."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.archive.index import same_archive
from launcher.core.layout import read_json, write_json
from launcher.core.progress import human_bytes
from launcher.datasets import adapter_of

if TYPE_CHECKING:
    pass

from launcher.prepare.request import PrepareRequest
from launcher.sources import shape_module


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_index(req: PrepareRequest, split: str, labels: Any) -> tuple[dict, dict | None]:
    """The index of a split's archive (cached while the archive is unchanged), and the previous
    index when the archive changed since."""
    path, cache = req.split_archive(split), req.layout.index_file(split)
    cached = read_json(cache)
    if same_archive(cached, path):
        return cached, None
    md5 = req.archives[req.source(split)["archive"]][1]
    announce_indexing(req, path, split, cached, labels)
    t0 = time.time()
    listing = adapter_of(req.adapter).listing(labels, req.source(split))
    index = shape_module(req.source(split)["shape"]).index(path, req.source(split), req.patterns, listing, md5)
    print(f"indexed {path.name}: {len(index['members'])} members in {time.time() - t0:.1f}s", file=sys.stderr)
    if not req.dry_run:
        write_json(cache, index)
    return index, cached


def announce_indexing(req: PrepareRequest, path: Path, split: str, cached: dict | None, labels: Any) -> None:
    """Say what happens before the first unit: which archive is indexed and how many headers (the
    devkit's count of class tars or val images; the last index's when the archive changed)."""
    known = len(cached["members"]) if cached else adapter_of(req.adapter).member_count(labels, split)
    what = shape_module(req.source(split)["shape"]).MEMBER
    print(
        f"indexing {path.name} ({human_bytes(path.stat().st_size)}): {human_count(known)} {what} headers",
        file=sys.stderr,
        flush=True,
    )


def human_count(n: int) -> str:
    """50000 -> 50 k, 1281167 -> 1.28 M."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return str(n)
