"""prepare's inputs read once and cached beside the root: the parsed devkit and the archives' header
indexes, checked against each other."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive.index import archive_identity, index_train, index_val, same_archive
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json
from launcher.core.progress import human_bytes
from launcher.datasets.imagenet.devkit import Devkit, parse_devkit

if TYPE_CHECKING:
    pass

from launcher.prepare.request import PrepareRequest


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_devkit(req: PrepareRequest) -> tuple[Devkit, str]:
    path = req.archive("devkit")
    cached = read_json(req.layout.devkit_file)
    if same_archive(cached, path):
        return Devkit.from_json(cached["devkit"]), cached["fingerprint"]
    print(f"reading the devkit {path.name}", file=sys.stderr, flush=True)
    devkit = parse_devkit(
        path,
        req.devkit_meta,
        req.devkit_ground_truth,
        req.devkit_max_bytes,
        wnid_pattern=req.wnid_pattern,
        id_pattern=req.ilsvrc_id_pattern,
    )
    data = devkit.to_json()
    fp = digest(data)
    ident = archive_identity(path, req.archives["devkit"][1])
    if not req.dry_run:  # a dry run keeps what it read in memory
        write_json(req.layout.devkit_file, {"archive": ident, "fingerprint": fp, "devkit": data})
    return devkit, fp


def load_index(req: PrepareRequest, split: str, devkit: Devkit) -> tuple[dict, dict | None]:
    """The index of a split's archive (cached while the archive is unchanged), and the previous
    index when the archive changed since."""
    path, cache = req.archive(split), req.layout.index_file(split)
    cached = read_json(cache)
    if same_archive(cached, path):
        return cached, None
    md5 = req.archives[split][1]
    announce_indexing(path, split, cached, devkit)
    t0 = time.time()
    if split == "train":
        index = index_train(path, req.train_class_pattern, req.wnid_pattern, md5)
    else:
        index = index_val(path, req.val_image_pattern, len(devkit.val_wnids), md5)
    print(f"indexed {path.name}: {len(index['members'])} members in {time.time() - t0:.1f}s", file=sys.stderr)
    if not req.dry_run:
        write_json(cache, index)
    return index, cached


def announce_indexing(path: Path, split: str, cached: dict | None, devkit: Devkit) -> None:
    """Say what happens before the first unit: which archive is indexed and how many headers (the
    devkit's count of class tars or val images; the last index's when the archive changed)."""
    known = len(cached["members"]) if cached else len(devkit.wnid_to_classes if split == "train" else devkit.val_wnids)
    what = "class-tar" if split == "train" else "image"
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


def check_against_devkit(req: PrepareRequest, devkit: Devkit, indexes: dict) -> None:
    """Class tars <-> devkit leaves, and the devkit's totals <-> dataset.expected."""
    leaves = set(devkit.wnid_to_classes)
    problems = []
    if req.expected.get("classes") is not None and len(leaves) != req.expected["classes"]:
        problems.append(
            f"the devkit lists {len(leaves)} classes, dataset.expected.classes is {req.expected['classes']}"
        )
    if "train" in indexes:
        tars = {m[0][: -len(".tar")] for m in indexes["train"]["members"]}
        if tars - leaves:
            problems.append(f"class tars with no devkit class: {', '.join(sorted(tars - leaves)[:5])}")
        if leaves - tars:
            problems.append(f"devkit classes with no class tar: {', '.join(sorted(leaves - tars)[:5])}")
        total = sum(devkit.num_train_images.values())
        if req.expected.get("train") is not None and total != req.expected["train"]:
            problems.append(
                f"the devkit announces {total} train images, dataset.expected.train is {req.expected['train']}"
            )
    if "val" in indexes and req.expected.get("val") is not None and len(devkit.val_wnids) != req.expected["val"]:
        problems.append(
            f"the ground truth has {len(devkit.val_wnids)} val labels, dataset.expected.val is {req.expected['val']}"
        )
    if problems:
        raise LauncherError(
            f"The archives in {req.archive_dir} do not match dataset config: "
            + "; ".join(problems)
            + ". Use the archives the dataset describes, or a dataset config that describes these "
            "(dataset=synthetic takes every count from the devkit)."
        )
