"""prepare: ILSVRC2012 archives -> the root torchvision.datasets.ImageNet reads, as small units.

    check inputs -> lock the root -> devkit + indexes (cached) -> refuse another dataset's root
    -> plan units (meta, md5s, train shards, val ranges) -> dispatch the incomplete ones
    -> finalize each split (counts, manifest, complete record) -> summary

No Hydra here: `PrepareRequest` carries paths and values; commands.py builds it from the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive import safefs
from launcher.archive.extract import Output, make_dir
from launcher.archive.index import IDENTITY_KEYS, archive_identity, index_train, index_val, same_archive, same_identity
from launcher.core import plan
from launcher.core.errors import LauncherError
from launcher.core.layout import SPLITS, Layout, Lock, read_json, read_root_id, write_json
from launcher.core.manifest import build_manifest, read_manifest, write_manifest
from launcher.core.progress import human_bytes, table
from launcher.core.units import Unit, is_complete, run_unit
from launcher.datasets.imagenet.devkit import Devkit, parse_devkit

if TYPE_CHECKING:
    from launcher.core import dispatch

ARCHIVES_OF = {"train": ("devkit", "train"), "val": ("devkit", "val")}


@dataclass
class PrepareRequest:
    layout: Layout
    archive_dir: Path
    # key -> (file name, md5 or None)
    archives: dict[str, tuple[str, str | None]]
    # train/val/classes -> expected count or None
    expected: dict[str, int | None]
    devkit_meta: str
    devkit_ground_truth: str
    devkit_max_bytes: int
    train_class_pattern: str
    train_image_pattern: str
    val_image_pattern: str
    # dataset.patterns.wnid and .ilsvrc_id: what a WNID and an ILSVRC2012_ID must match (ASCII)
    wnid_pattern: str
    ilsvrc_id_pattern: str
    splits: list[str]
    train_shards: int | None = None
    val_shards: int | None = None
    dry_run: bool = False
    force: bool = False
    check_md5: bool = True
    output: Output = field(default_factory=Output)
    stripe_count: int | None = None
    log_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    # the storage option chosen (local, lustre, nfs, scratch or a variant): shared storage warns on a login node
    storage: str = "local"
    # the resolved config of the run (for the ledger); the dataset choice and values (for the identity)
    config: dict = field(default_factory=dict)

    def archive(self, key: str) -> Path:
        return self.archive_dir / self.archives[key][0]

    def archive_keys(self) -> list[str]:
        return sorted({k for s in self.splits for k in ARCHIVES_OF[s]}, key=["devkit", "train", "val"].index)


@dataclass
class Plan:
    units: list[Unit]
    finalize: dict[str, Unit]
    devkit: Devkit
    identity: dict


# ---------------------------------------------------------------- inputs


def check_archives(req: PrepareRequest) -> None:
    """Every archive the splits need is there and readable, or the error says where to put it."""
    for key in req.archive_keys():
        path = req.archive(key)
        if not path.is_file():
            raise LauncherError(
                f"The archive {req.archives[key][0]} is not in {req.archive_dir} (looked for {path}). "
                f"Place it there, or point storage.archive_dir=<folder> (or "
                f"dataset.archives.{key}.file=<name>) at it."
            )
        if not os.access(path, os.R_OK):
            raise LauncherError(f"The archive {path} is not readable by this user; fix its permissions.")


def check_writable(layout: Layout, replace: bool = False) -> None:
    for folder in (layout.root, layout.state_dir):
        try:
            with safefs.Dir.of(folder, create=True, replace=replace) as d:
                probe = f".write-test-{os.getpid()}"
                os.close(d.create(probe, replace_temp=True))
                d.unlink_entry(probe)
        except OSError as err:
            raise LauncherError(
                f"cannot write into the output folder {folder}: {err.strerror or err}. Point "
                "storage.root (or storage.state_dir) at a writable folder."
            ) from err


def warn_unchecked_md5(req: PrepareRequest) -> None:
    for key in req.archive_keys():
        if req.archives[key][1] is None:
            print(
                f"warning: dataset.archives.{key}.md5 is null: {req.archive(key).name} is not md5-checked.",
                file=sys.stderr,
            )


SHARED_STORAGE = ("lustre", "nfs")
OURS = {"meta.bin", "train", "val", ".partial", ".launcher"}


def warn_probable_mistakes(req: PrepareRequest, cluster: dispatch.Cluster) -> None:
    """One line on stderr for each setting that is probably a mistake; the work goes on."""
    for message in (login_node_warning(req, cluster), foreign_folder_warning(req)):
        if message:
            print(f"warning: {message}", file=sys.stderr)


def login_node_warning(req: PrepareRequest, cluster: dispatch.Cluster) -> str | None:
    """Work on this machine, on shared storage, where SLURM is at hand but no job runs: a login node."""
    if cluster.executor == "slurm" or not req.storage.startswith(SHARED_STORAGE):
        return None
    if not shutil.which("sbatch") or os.environ.get("SLURM_JOB_ID"):
        return None
    return (
        f"cluster={cluster.name} runs the units on this machine, which looks like a login node (sbatch is "
        f"here, SLURM_JOB_ID is not set), with storage={req.storage}: pass cluster=slurm to run them as "
        "SLURM jobs, or run this inside a job (salloc/srun)."
    )


def foreign_folder_warning(req: PrepareRequest) -> str | None:
    """storage.root holds things that are neither an ImageNet root's, ours, nor the archives."""
    root = req.layout.root
    if not root.is_dir() or (req.layout.state_dir / "identity.json").exists():
        return None
    archives = {name for name, _ in req.archives.values()}
    try:
        names = sorted(e.name for e in os.scandir(root) if e.name not in OURS | archives)
    except OSError:
        return None
    if not names or OURS & set(os.listdir(root)) - {".launcher"}:
        return None  # empty, or a root of its own (the identity guard decides about it)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"storage.root={root} is not empty ({shown}) and is not an ImageNet root: prepare adds meta.bin, "
        "train/ and val/ beside what is there. Point storage.root at a new folder if that is not what you want."
    )


# ---------------------------------------------------------------- devkit and indexes (cached)


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


# ---------------------------------------------------------------- another dataset in the root?


def conflicts(layout: Layout, split: str, old: dict | None, new: dict, devkit: Devkit) -> list[str]:
    """Members that changed between two indexes of a split and whose output the root holds already."""
    if old is None:
        return []
    before = {m[0]: m for m in old["members"]}
    after = {m[0]: m for m in new["members"]}
    changed = sorted(
        n for n in before.keys() | after.keys() if (before.get(n) or [0] * 3)[2] != (after.get(n) or [0] * 3)[2]
    )

    def output(name: str) -> Path:
        if split == "train":
            return layout.split_dir("train") / name.removesuffix(".tar")
        number = (after.get(name) or before[name])[3]
        return (
            layout.split_dir("val") / devkit.val_wnids[number - 1] / name
            if number <= len(devkit.val_wnids)
            else layout.split_dir("val") / name
        )

    return [name for name in changed if safefs.exists(output(name))]


FINGERPRINTS = ("devkit", *SPLITS)


def guard_identity(req: PrepareRequest, identity: dict, clashes: dict[str, list[str]]) -> None:
    """Refuse a root that holds another dataset's files (or another tool's) unless prepare.force=true.
    An archive replaced after a failure (a truncated class tar downloaded again) is accepted as long
    as nothing it changes was prepared already; what was prepared from the archive's old bytes is
    prepared again. Records of another root (a shared state_dir) are refused, those of a root that
    is gone are forgotten."""
    layout = req.layout
    check_tree(layout, req.force and not req.dry_run)
    stored = read_json(layout.state_dir / "identity.json")
    if stored is None and safefs.exists(layout.state_dir / "identity.json"):
        stored = identity_of_complete_splits(layout)  # damaged: what the complete records say
    stored = records_of_this_root(layout, stored)
    if stored is None:
        outputs = (layout.meta_bin, layout.split_dir("train"), layout.split_dir("val"))
        found = [p.name for p in outputs if safefs.exists(p)]
        if found and not req.force:
            raise LauncherError(
                f"{layout.root} already holds {', '.join(found)} that launcher did not prepare (or whose "
                f"records are not in {layout.state_dir}). Check it with `launcher verify`, or pass "
                f"prepare.force=true to prepare over it (its {', '.join(found)} are replaced)."
            )
        if req.dry_run:  # checked, nothing written
            return
        if found:
            reset(layout, ["train", "val"], meta=True)
        write_json(layout.state_dir / "identity.json", identity)
        return
    changed = [k for k in FINGERPRINTS if k in identity and k in stored and stored[k] != identity[k]]
    prepared = [k for k in changed if k == "devkit" and safefs.exists(layout.meta_bin) or clashes.get(k)]
    if prepared and not req.force:
        examples = "; ".join(f"{k}: {', '.join(clashes[k][:3])}" for k in prepared if clashes.get(k))
        raise LauncherError(
            f"{layout.root} was prepared from other archives ({', '.join(prepared)} differ from what the "
            f"root holds{': ' + examples if examples else ''}). Point storage.root at a new folder, or pass "
            "prepare.force=true to replace what is there."
        )
    if req.dry_run:
        return
    if prepared:
        splits = SPLITS if "devkit" in prepared else [s for s in SPLITS if s in prepared]
        reset(layout, splits, meta="devkit" in prepared)
    archives = stored.get("archives") or {}
    redo_changed_archives(layout, archives, identity["archives"])
    write_json(
        layout.state_dir / "identity.json", {**stored, **identity, "archives": {**archives, **identity["archives"]}}
    )


def check_tree(layout: Layout, force: bool) -> None:
    """The root's own outputs are what launcher writes there (meta.bin a file; train/, val/,
    .partial/ folders) before anything is written into it, on every run: a link, FIFO or file in
    their place is refused naming it (with prepare.force=true a link is unlinked, never its target)."""
    safefs.check_entry(layout.meta_bin, "file", replace=force)
    for folder in (
        *(layout.split_dir(s) for s in SPLITS),
        layout.partial_dir,
        *(layout.partial_dir / s for s in SPLITS),
    ):
        safefs.check_entry(folder, "folder", replace=force)


def redo_changed_archives(layout: Layout, before: dict, now: dict) -> None:
    """A split whose archive is not the file (unchanged) that its outputs came from is prepared
    again: a rewrite in place with the same sizes, or a replacement, would leave the root a mix of
    two archives' bytes that no size or name comparison sees."""
    for split in SPLITS:
        if split not in now or not before.get(split) or same_identity(before[split], now[split]):
            continue
        if not safefs.exists(layout.split_dir(split)) and not list(layout.units_dir.glob(f"*{split}*.json")):
            continue
        differ = [k for k in IDENTITY_KEYS if before[split].get(k) != now[split].get(k)]
        reason = f"{now[split]['path']} changed since {split} was prepared from it ({', '.join(differ)} differ)"
        reset(layout, [split], meta=False, reason=reason)


def root_identity(root: Path) -> dict | None:
    """Which root folder this is: its random id (root/.launcher-root.json), device and inode."""
    rid = read_root_id(root)
    if rid is None:
        return None
    st = os.stat(root)
    return {"path": str(root), "id": rid, "dev": st.st_dev, "ino": st.st_ino}


ROOT_KEYS = ("id", "dev", "ino")


def same_root(a: dict | None, b: dict | None, keys: tuple[str, ...] = ROOT_KEYS) -> bool:
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def root_keys(layout: Layout) -> tuple[str, ...]:
    """What tells this root's records from another root's: the id, device and inode of the root
    folder; the id alone when the state_dir lives inside the root (then the records moved or were
    copied along with the files they describe, which changes the inode, not what they describe)."""
    return ("id",) if layout.state_dir.is_relative_to(layout.root) else ROOT_KEYS


def make_root_identity(layout: Layout) -> dict:
    """The root's identity, its id file written first if the root has none."""
    if read_root_id(layout.root) is None:
        write_json(layout.root_id_file, {"id": secrets.token_hex(16), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return root_identity(layout.root)


def records_of_this_root(layout: Layout, stored: dict | None) -> dict | None:
    """The identity record when the state_dir's records are this root's (or name no root: older
    launchers); None after forgetting the records of a root that is gone (deleted, or deleted and
    made again); a refusal when they are another root's that is still there."""
    if stored is None or not stored.get("root"):
        return stored
    theirs = stored["root"]
    if same_root(theirs, root_identity(layout.root), root_keys(layout)):
        return stored
    other = Path(theirs.get("path", ""))
    if other != layout.root and other.is_dir() and same_root(theirs, root_identity(other)):
        raise LauncherError(
            f"storage.state_dir={layout.state_dir} holds the records of the root {other}, not of {layout.root}. "
            f"Give each root its own state folder: storage.state_dir={layout.root / '.launcher'} (the default)."
        )
    print(
        f"{layout.state_dir} holds records of a root that is no longer there ({other}, id {theirs.get('id')}); "
        "they are forgotten.",
        file=sys.stderr,
    )
    forget_records(layout)
    return None


def forget_records(layout: Layout) -> None:
    """Unit, complete and manifest records (the devkit and archive indexes describe the archives and
    stay)."""
    for split in SPLITS:
        safefs.remove(layout.complete_file(split))
        safefs.remove(layout.manifest_file(split))
    remove_records(layout, lambda name: True)


def remember_dataset(layout: Layout, dataset: dict | None) -> None:
    """Keep the dataset config a root is prepared with (choice and resolved values: archive names,
    md5s, expected counts, patterns) in its identity record, for verify, status and bench."""
    if not dataset:
        return
    path = layout.state_dir / "identity.json"
    stored = read_json(path) or {}
    if stored.get("dataset") != dataset:
        write_json(path, {**stored, "dataset": dataset})


def root_dataset(layout: Layout) -> dict | None:
    """The dataset config the root was prepared with, or None (not ours, or prepared before we kept it)."""
    stored = read_json(layout.state_dir / "identity.json")
    return stored.get("dataset") if isinstance(stored, dict) else None


def identity_of_complete_splits(layout: Layout) -> dict:
    """The archives' identity as the complete records of the splits state it (for a damaged identity.json)."""
    identity: dict = {}
    for split in SPLITS:
        done = read_json(layout.complete_file(split)) or {}
        if isinstance(done.get("identity"), dict):
            identity.update(done["identity"])
    return identity


def reset(layout: Layout, splits, meta: bool, reason: str = "prepare.force") -> None:
    """Forget and delete what was prepared for `splits` (and meta.bin); links are removed
    themselves, never followed."""
    for split in splits:
        print(f"{reason}: removing {layout.split_dir(split)} and its records", file=sys.stderr)
        safefs.remove_tree(layout.split_dir(split))
        safefs.remove_tree(layout.partial_dir / split)
        for path in (layout.complete_file(split), layout.manifest_file(split)):
            safefs.remove(path)
        remove_records(layout, lambda name, split=split: split in name)
    if meta:
        safefs.remove(layout.meta_bin)
        remove_records(layout, lambda name: name.startswith(("meta", "md5-")))


def remove_records(layout: Layout, which) -> None:
    """Unlink the unit records (.json) whose names `which` accepts, in the opened units folder."""
    try:
        units = safefs.Dir.of(layout.units_dir, replace=True)
    except FileNotFoundError:
        return
    with units:
        for entry in units.entries():
            if entry.name.endswith(".json") and which(entry.name):
                units.unlink_entry(entry.name)


# ---------------------------------------------------------------- planning


def plan_units(
    req: PrepareRequest, devkit: Devkit, indexes: dict, parallelism: int, identity: dict, min_bytes: int
) -> Plan:
    layout, out = req.layout, req.output
    rec = layout.unit_record
    devkit_json = str(layout.devkit_file)
    units = [
        Unit(
            "meta",
            "meta",
            req.archive("devkit").stat().st_size,
            str(rec("meta")),
            {"devkit": devkit_json, "meta_bin": str(layout.meta_bin)},
        )
    ]
    for key in req.archive_keys():
        md5 = req.archives[key][1]
        if key in md5_keys(req):
            ident = identity["archives"][key]
            if not req.dry_run:
                forget_stale_md5(rec(f"md5-{key}"), ident, md5)
            units.append(
                Unit(
                    f"md5-{key}",
                    "md5",
                    ident["size"],
                    str(rec(f"md5-{key}")),
                    {"path": str(req.archive(key)), "expected": md5, "key": key, "identity": ident},
                )
            )
    if "train" in indexes:
        members = indexes["train"]["members"]
        sizes = [m[2] for m in members]
        train_bytes = sum(sizes)
        n = req.train_shards or plan.default_train_shards(len(members), train_bytes, parallelism, min_bytes)
        groups = plan.balanced_groups(sizes, n)
        for i, group in enumerate(groups):
            uid = plan.shard_id("train", i, len(groups))
            wnids = [members[j][0][: -len(".tar")] for j in group]
            units.append(
                Unit(
                    uid,
                    "train",
                    sum(sizes[j] for j in group),
                    str(rec(uid)),
                    {
                        "train_tar": str(req.archive("train")),
                        "root": str(layout.root),
                        "index": str(layout.index_file("train")),
                        "devkit": devkit_json,
                        "wnids": wnids,
                        "image_template": req.train_image_pattern,
                        "out": out,
                        "wnid_pattern": req.wnid_pattern,
                        "root_id": identity["root"]["id"],
                    },
                )
            )
    if "val" in indexes:
        members = indexes["val"]["members"]
        sizes = [m[2] for m in members]
        n = req.val_shards or plan.default_val_shards(len(members), sum(sizes), parallelism, min_bytes)
        ranges = plan.contiguous_ranges(sizes, n)
        for i, (a, b) in enumerate(ranges):
            uid = plan.shard_id("val", i, len(ranges))
            units.append(
                Unit(
                    uid,
                    "val",
                    sum(sizes[a:b]),
                    str(rec(uid)),
                    {
                        "val_tar": str(req.archive("val")),
                        "root": str(layout.root),
                        "index": str(layout.index_file("val")),
                        "devkit": devkit_json,
                        "start": a,
                        "stop": b,
                        "out": out,
                        "image_pattern": req.val_image_pattern,
                        "wnid_pattern": req.wnid_pattern,
                        "root_id": identity["root"]["id"],
                    },
                )
            )
    finalize = {split: finalize_unit(req, split, units, identity) for split in req.splits}
    return Plan(units, finalize, devkit, identity)


def forget_stale_md5(record: Path, identity: dict, expected: str) -> None:
    """An md5 record of another file (or of this one before a change) or of another expected md5 is
    checked again."""
    done = read_json(record)
    if done and (not same_identity(done.get("archive"), identity) or done.get("md5") != expected.lower()):
        safefs.remove(record)


def split_identity(identity: dict, split: str) -> dict:
    """What a split's complete record is tied to: the devkit's and the archive's contents, which
    root, and which archive files (unchanged) its units read."""
    return {
        "devkit": identity["devkit"],
        split: identity[split],
        "root": identity["root"],
        "archives": {k: identity["archives"][k] for k in ("devkit", split)},
    }


def same_split_identity(a: dict | None, b: dict, keys: tuple[str, ...]) -> bool:
    if not a or any(a.get(k) != b[k] for k in b if k not in ("root", "archives")):
        return False
    archives = a.get("archives") or {}
    return same_root(a.get("root"), b["root"], keys) and all(
        same_identity(archives.get(k), v) for k, v in b["archives"].items()
    )


def finalize_unit(req: PrepareRequest, split: str, units: list[Unit], identity: dict) -> Unit:
    needs = [
        u
        for u in units
        if u.kind == split or u.kind == "meta" or (u.kind == "md5" and u.args["key"] in ARCHIVES_OF[split])
    ]
    layout = req.layout
    uid = f"finalize-{split}"
    return Unit(
        uid,
        "finalize",
        0,
        str(layout.complete_file(split)),  # its completion record is the split's
        {
            "split": split,
            "records": [u.record for u in needs],
            "devkit": str(layout.devkit_file),
            "expected": req.expected.get(split),
            "manifest": str(layout.manifest_file(split)),
            "identity": split_identity(identity, split),
            "root": str(layout.root),
            "partial": partial_folders(req, split),
        },
    )


def finalize_split(
    split: str,
    records: list[str],
    devkit: str,
    expected: int | None,
    manifest: str,
    identity: dict,
    root: str,
    partial: list[str] | None = None,
) -> dict:
    """Finalize unit: every unit of the split complete, from the archives and root of the plan ->
    counts checked -> manifest -> empty root/.partial folders removed. Its completion record (written
    by the unit runner) is the split's complete-<split>.json."""
    done = [read_json(Path(r)) if safefs.is_file(r) else None for r in records]
    if missing := [Path(r).stem for r, d in zip(records, done) if d is None]:
        raise LauncherError(
            f"{split} is not complete: units {', '.join(missing)} have no completion record "
            "(their errors are in their job logs; `launcher status` shows them)."
        )
    check_sources(split, done, identity, Path(root))
    kit = read_devkit_record(Path(devkit))
    if split == "train":
        files = [(w, n, s) for d in done if d["kind"] == "train" for w, fs in d["classes"].items() for n, s in fs]
        classes = {w for d in done if d["kind"] == "train" for w in d["classes"]}
        if classes != set(kit["wnid_to_classes"]):
            raise LauncherError(f"train is missing classes {sorted(set(kit['wnid_to_classes']) - classes)[:5]}")
    else:
        files = [tuple(f) for d in done if d["kind"] == "val" for f in d["files"]]
        if len(files) != len(kit["val_wnids"]):
            raise LauncherError(f"val holds {len(files)} images, the ground truth {len(kit['val_wnids'])}")
    if expected is not None and len(files) != expected:
        raise LauncherError(f"{split} holds {len(files)} images, dataset.expected.{split} is {expected}")
    if lost := missing_folders(Path(root) / split, {f[0] for f in files}):
        raise LauncherError(
            f"{split} is not complete: {Path(root) / split} lacks {', '.join(lost[:5])}. Run prepare again."
        )
    write_manifest(Path(manifest), build_manifest(split, files, kit["wnid_to_classes"]))
    if root is not None:
        remove_empty_partial(Path(root), partial or [])
    return {
        "split": split,
        "images": len(files),
        "bytes": sum(f[2] for f in files),
        "classes": len(kit["wnid_to_classes"]),
        "manifest": manifest,
        "identity": identity,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def check_sources(split: str, done: list[dict], identity: dict, root: Path) -> None:
    """Every record of the split came from the archive file the plan indexed, still unchanged now,
    and was written into this root: otherwise the split could mix two archives' bytes."""
    archives = identity["archives"]
    for record in done:
        key = record.get("key") or record.get("kind")
        if key not in archives:
            continue
        now = archive_identity(archives[key]["path"])
        if not same_identity(record.get("archive"), archives[key]) or not same_identity(now, archives[key]):
            raise LauncherError(
                f"{split} is not complete: {archives[key]['path']} changed during the run (unit "
                f"{record.get('unit')} read other bytes than the index describes). Run `launcher prepare` "
                "again: it indexes the archive anew and prepares what came from the old bytes again."
            )
        if record.get("kind") in SPLITS and record.get("root_id") != identity["root"]["id"]:
            raise LauncherError(
                f"{split} is not complete: unit {record.get('unit')} wrote into another root. Run prepare again."
            )
    if read_root_id(root) != identity["root"]["id"]:
        raise LauncherError(f"{split} is not complete: {root} is not the root of the plan. Run prepare again.")


def missing_folders(folder: Path, wnids: set[str]) -> list[str]:
    """Class folders that are not in `folder` (one listing, no walk)."""
    try:
        present = set(os.listdir(folder))
    except OSError:
        present = set()
    return sorted(wnids - present)


def remove_empty_partial(root: Path, folders: list[str]) -> None:
    """rmdir each of `folders` (".partial/train", ".partial") under root when it is an empty folder.
    Every step is opened with O_NOFOLLOW and rmdir never follows a link: a link there is left
    alone, and so is a folder that holds anything."""
    for folder in folders:
        parent, _, name = folder.rpartition("/")
        try:
            fd = open_dir_nofollow(root, parent)
        except OSError:
            continue
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError:  # absent, not empty, or a link (ENOTDIR): leave it
            pass
        finally:
            os.close(fd)


def open_dir_nofollow(root: Path, relative: str) -> int:
    """A descriptor of root/relative, opened one component at a time, never through a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    for part in filter(None, relative.split("/")):
        try:
            child = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def partial_folders(req: PrepareRequest, split: str) -> list[str]:
    """What finalize-<split> removes when empty: train's own .partial/train, and .partial itself
    unless train (the one split that writes there) is also being prepared and finalizes it."""
    own = [".partial/train"] if split == "train" else []
    return own + ([".partial"] if split == "train" or "train" not in req.splits else [])


def read_devkit_record(path: Path) -> dict:
    """The devkit facts cached by prepare; damaged or missing, the next prepare reads the devkit again."""
    cached = read_json(path)
    if cached is None or not isinstance(cached.get("devkit"), dict):
        raise LauncherError(f"{path} is missing or damaged; the next `launcher prepare` reads the devkit again.")
    return cached["devkit"]


# ---------------------------------------------------------------- output folders


def make_output_dirs(req: PrepareRequest) -> None:
    for split in req.splits:
        make_dir(req.layout.split_dir(split), req.output)
    make_dir(req.layout.partial_dir, req.output)
    if req.stripe_count is None:
        return
    if not shutil.which("lfs"):
        print(f"storage.stripe_count={req.stripe_count}: `lfs` not found, striping left as it is", file=sys.stderr)
        return
    for split in req.splits:
        subprocess.run(["lfs", "setstripe", "-c", str(req.stripe_count), str(req.layout.split_dir(split))], check=True)


def split_complete(layout: Layout, split: str, identity: dict) -> dict | None:
    done = read_json(layout.complete_file(split))
    if done and same_split_identity(done.get("identity"), split_identity(identity, split), root_keys(layout)):
        return done
    return None


# ---------------------------------------------------------------- the whole command


def already_complete(req: PrepareRequest) -> list[dict] | None:
    """The complete records of every split, when the cached devkit and indexes still describe the
    archives (the same files, unchanged), the records belong to this root, and the tree still holds
    meta.bin, each split folder and every class folder (a few stats and one listing per split);
    read-only, so a rerun on a complete root writes nothing."""
    layout = req.layout
    devkit = read_json(layout.devkit_file)
    if not same_archive(devkit, req.archive("devkit")):
        return None
    root = root_identity(layout.root)
    if root is None:
        return None
    identity = {"devkit": devkit["fingerprint"], "root": root, "archives": {"devkit": devkit["archive"]}}
    for split in req.splits:
        index = read_json(layout.index_file(split))
        if not same_archive(index, req.archive(split)):
            return None
        identity[split] = index["fingerprint"]
        identity["archives"][split] = index["archive"]
    done = [split_complete(layout, split, identity) for split in req.splits]
    if not all(done) or not tree_intact(layout, req.splits, devkit["devkit"]):
        return None
    for key in md5_keys(req):
        record = read_json(layout.unit_record(f"md5-{key}")) or {}
        if record.get("md5") != req.archives[key][1].lower():
            return None
        if not same_identity(record.get("archive"), identity["archives"][key]):
            return None
    return done


def tree_intact(layout: Layout, splits: list[str], kit: dict) -> bool:
    """meta.bin, each split folder and every class folder the devkit names are there."""
    if not safefs.is_file(layout.meta_bin):
        return False
    wanted = {"train": set(kit["wnid_to_classes"]), "val": set(kit["val_wnids"])}
    return all(layout.split_dir(s).is_dir() and not missing_folders(layout.split_dir(s), wanted[s]) for s in splits)


def md5_keys(req: PrepareRequest) -> list[str]:
    return [k for k in req.archive_keys() if req.archives[k][1] and req.check_md5]


def print_complete(req: PrepareRequest, done: list[dict]) -> None:
    rows = [[d["split"], d["classes"], d["images"], human_bytes(d["bytes"]), d["finished"]] for d in done]
    print(f"already complete in {req.layout.root}: nothing to do.")
    print(table(["split", "classes", "images", "bytes", "finished"], rows))


def make_plan(req: PrepareRequest, parallelism: int, min_bytes: int = 0) -> Plan:
    """Load devkit and indexes, check them, guard the root, and plan the units."""
    devkit, devkit_fp = load_devkit(req)
    loaded = {split: load_index(req, split, devkit) for split in req.splits}
    indexes = {split: new for split, (new, _) in loaded.items()}
    check_against_devkit(req, devkit, indexes)
    kit_archive = (read_json(req.layout.devkit_file) or {}).get("archive")  # none cached in a dry run
    kit_archive = kit_archive or archive_identity(req.archive("devkit"), req.archives["devkit"][1])
    archives = {"devkit": kit_archive, **{s: indexes[s]["archive"] for s in indexes}}
    identity = {"devkit": devkit_fp, **{s: indexes[s]["fingerprint"] for s in indexes}, "archives": archives}
    clashes = {s: conflicts(req.layout, s, old, indexes[s], devkit) for s, (_, old) in loaded.items()}
    guard_identity(req, identity, clashes)
    identity["root"] = root_of_plan(req)
    if not req.dry_run:
        remember_dataset(req.layout, req.config.get("dataset"))
    p = plan_units(req, devkit, indexes, parallelism, identity, min_bytes)
    if not req.dry_run:
        drop_stale_records(req.layout, p)
    return p


def root_of_plan(req: PrepareRequest) -> dict:
    """The root's identity, once the guard accepted the root: made if new, kept in identity.json
    (a dry run makes nothing)."""
    if req.dry_run:
        return root_identity(req.layout.root) or {"id": "(not made yet)"}
    root = make_root_identity(req.layout)
    record = req.layout.state_dir / "identity.json"
    write_json(record, {**read_json(record), "root": root})
    return root


def drop_stale_records(layout: Layout, p: Plan) -> None:
    """Records that no longer describe the root are forgotten, so their units run again: written for
    other work under the same id (shards regrouped), from another archive file or root, or whose
    outputs (meta.bin, a class folder) are gone. A split with such a unit is not complete."""
    stale_splits = set()
    for u in p.units:
        done = read_json(Path(u.record))
        if done is None or record_holds(layout, u, done, p.identity):
            continue
        safefs.remove(u.record)
        stale_splits.update(
            SPLITS if u.kind == "meta" or u.args.get("key") == "devkit" else [u.args.get("key", u.kind)]
        )
    for split, fin in p.finalize.items():
        done = read_json(Path(fin.record))
        held = same_split_identity(done.get("identity"), fin.args["identity"], root_keys(layout)) if done else True
        lost = done and read_manifest(layout.manifest_file(split)) is None  # damaged or gone: written again
        if done and (split in stale_splits or not held or lost):
            safefs.remove(fin.record)


def record_holds(layout: Layout, u: Unit, done: dict, identity: dict) -> bool:
    """A unit's record still describes what the root holds (a few stats, no walk)."""
    if u.kind == "meta":
        return safefs.is_file(layout.meta_bin)
    if u.kind == "md5":
        return True  # forget_stale_md5 checked it against the archive's identity
    if (
        not same_identity(done.get("archive"), identity["archives"][u.kind])
        or done.get("root_id") != identity["root"]["id"]
    ):
        return False
    if u.kind == "train":
        return set(done.get("classes", ())) == set(u.args["wnids"]) and not missing_folders(
            layout.split_dir("train"), set(u.args["wnids"])
        )
    return done.get("range") == [u.args["start"], u.args["stop"]] and not missing_folders(
        layout.split_dir("val"), {f[0] for f in done.get("files", ())}
    )


def print_plan(req: PrepareRequest, p: Plan) -> None:
    rows = []
    for u in [*p.units, *p.finalize.values()]:
        where = {
            "meta": req.layout.meta_bin,
            "train": req.layout.split_dir("train"),
            "val": req.layout.split_dir("val"),
            "md5": "(check only)",
            "finalize": req.layout.manifest_file(u.args.get("split", "")),
        }[u.kind]
        rows.append([u.id, u.kind, human_bytes(u.size), "done" if is_complete(u) else "to do", where])
    print(table(["unit", "kind", "reads", "state", "writes into"], rows, "llrll"))
    todo = [u for u in p.units if not is_complete(u)]
    print(
        f"\n{len(todo)} of {len(p.units)} units to run, {human_bytes(sum(u.size for u in todo))} to read; "
        f"records in {req.layout.units_dir}"
    )


def summary_rows(units: list[Unit], before: set[str]) -> list[list]:
    rows = []
    for kind in ("meta", "md5", "train", "val", "finalize"):
        of_kind = [u for u in units if u.kind == kind]
        if not of_kind:
            continue
        records = {u.id: read_json(Path(u.record)) for u in of_kind}
        done = [r for uid, r in records.items() if r and uid not in before]
        skipped = [r for uid, r in records.items() if r and uid in before]
        failed = len(of_kind) - len(done) - len(skipped)
        images = sum(r.get("images", 0) for r in done + skipped)
        nbytes = sum(r.get("bytes", 0) for r in done)
        secs = sum(r.get("wall_s", 0) for r in done)
        rate = f"{human_bytes(nbytes / secs)}/s" if secs > 0 and kind in ("train", "val", "md5") else ""
        rows.append([kind, len(done), len(skipped), failed, images, human_bytes(nbytes), f"{secs:.2f}", rate])
    return rows


def print_summary(req: PrepareRequest, units: list[Unit], before: set[str], wall: float) -> None:
    headers = ["units", "done", "skipped", "failed", "images", "written", "unit-s", "throughput"]
    print(table(headers, summary_rows(units, before)))
    print(f"wall time {wall:.1f}s; root {req.layout.root}")


def common_units(units: list[Unit]) -> list[Unit]:
    """What both splits need first: meta.bin and the devkit's md5."""
    return [u for u in units if u.kind == "meta" or (u.kind == "md5" and u.args["key"] == "devkit")]


def split_units(units: list[Unit], split: str) -> list[Unit]:
    """A split's own units: its shards and its archive's md5."""
    return [u for u in units if u.kind == split or (u.kind == "md5" and u.args["key"] == split)]


def dispatch_slurm(cluster: dispatch.Cluster, folder: Path, p: Plan, todo: list[Unit], active: dict) -> list:
    """Arrays per split. Without waiting, each split's finalize job waits (afterok) for its arrays in
    SLURM; when this process waits anyway, it finalizes itself, as on the other executors."""
    from launcher.core import runner

    jobs = runner.submit_units(cluster, folder, "prepare-common", common_units(todo))
    running = [job for uid, (_, _, job) in active.items() if uid in ("meta", "md5-devkit")]
    after_common = [j.job_id for j in jobs] + running
    for split, fin in p.finalize.items():
        split_jobs = runner.submit_units(cluster, folder, f"prepare-{split}", split_units(todo, split))
        jobs += split_jobs
        waiting = [job for uid, (_, _, job) in active.items() if uid.startswith((f"{split}-", f"md5-{split}"))]
        if not cluster.waits and not is_complete(fin) and fin.id not in active:
            after = after_common + [j.job_id for j in split_jobs] + waiting
            jobs += runner.submit_units(cluster, folder, f"prepare-{split}-finalize", [fin], after=after)
    return jobs


def planned_submissions(cluster: dispatch.Cluster, p: Plan, todo: list[Unit]) -> list[tuple[str, list[Unit], str]]:
    """(job name, units, what it waits for) of each submission a real run would make now."""
    if cluster.executor != "slurm":
        return [("prepare", todo, "")]
    subs = [("prepare-common", common_units(todo), "")]
    for split, fin in p.finalize.items():
        subs.append((f"prepare-{split}", split_units(todo, split), ""))
        if not cluster.waits and not is_complete(fin):
            subs.append((f"prepare-{split}-finalize", [fin], f"afterok: prepare-common, prepare-{split}"))
    return [sub for sub in subs if sub[1]]


def run_dry(req: PrepareRequest, cluster: dispatch.Cluster) -> int:
    """prepare.dry_run=true: the plan and what would be submitted, from what is on disk (devkit and
    indexes read into memory when not cached); creates no folder, record, index, lock or ledger line."""
    from launcher.core import runner

    min_bytes = plan.MIN_SHARD_BYTES if cluster.executor == "slurm" else 0
    p = make_plan(req, cluster.parallelism, min_bytes)
    print_plan(req, p)
    todo = [u for u in p.units if not is_complete(u)]
    print(f"\ndry run: nothing was written; a real run would submit to cluster={cluster.name}:")
    print(runner.describe_submissions(cluster, planned_submissions(cluster, p, todo)))
    if cluster.waits:
        print("and then finalize each split in this process (wait=true)")
    return 0


def finalize_here(p: Plan) -> dict[str, str]:
    errors = {}
    for unit in p.finalize.values():
        try:
            run_unit(unit)
        except LauncherError as err:
            errors[unit.id] = str(err)
    return errors


def finish_interrupted_fixes(layout: Layout) -> None:
    """A verify.fix stopped between its intent and its report: bring the records up to date first
    (under the root's lock), so that `complete` and the manifest agree with the files."""
    from launcher.check.fixlog import pending_fixes, reconcile_fixes

    try:
        if not pending_fixes(layout.state_dir):
            return
    except (FileNotFoundError, NotADirectoryError):  # no state folder (yet): nothing to finish
        return
    with Lock(layout.lock_file, f"prepare of {layout.root}"):
        for message in reconcile_fixes(layout.root, layout.state_dir):
            print(f"warning: {message}", file=sys.stderr)


def run_prepare(req: PrepareRequest, cluster: dispatch.Cluster) -> int:
    """The prepare command: returns the exit code (0 only when every split is complete)."""
    t0 = time.time()
    check_archives(req)
    warn_probable_mistakes(req, cluster)
    if req.dry_run:
        return run_dry(req, cluster)
    finish_interrupted_fixes(req.layout)
    if done := already_complete(req):
        print_complete(req, done)
        return 0
    from launcher.core import dispatch, runner  # submitit: not needed when everything is complete

    req.output = dataclasses.replace(req.output, replace=req.force)
    check_writable(req.layout, replace=req.force)
    with Lock(req.layout.lock_file, f"prepare of {req.layout.root}", replace=req.force):
        min_bytes = plan.MIN_SHARD_BYTES if cluster.executor == "slurm" else 0
        p = make_plan(req, cluster.parallelism, min_bytes)
        all_units = [*p.units, *p.finalize.values()]
        warn_unchecked_md5(req)
        make_output_dirs(req)
        if cluster.executor != "slurm":
            runner.wait_for_earlier_local_jobs(req.layout, all_units, cluster.poll_s)
        before = {u.id for u in all_units if is_complete(u)}
        active = runner.active_units(req.layout, all_units) if cluster.executor == "slurm" else {}
        todo = [u for u in p.units if u.id not in before and u.id not in active]
        folder = req.log_dir / time.strftime("prepare-%Y%m%d-%H%M%S")
        if active:
            print(f"{len(active)} units already queued or running, not submitted again: {', '.join(sorted(active))}")
        if cluster.executor == "slurm":
            jobs = dispatch_slurm(cluster, folder, p, todo, active)
        else:
            jobs = runner.submit_units(cluster, folder, "prepare", todo)
        records = {u.id: u.record for u in all_units}
        sizes = {u.id: u.size for u in all_units}
        runner.record_submission(
            req.layout,
            "prepare",
            req.argv,
            cluster,
            folder,
            list(records),
            jobs,
            records=records,
            sizes=sizes,
            config=req.config,
        )
        if not cluster.waits:
            runner.print_submitted("prepare", cluster, folder, jobs, req.argv)
            return 0
        if jobs:
            print(runner.jobs_line(cluster, folder, jobs), flush=True)
        jobs += [dispatch.attach(ex, job, where) for ex, where, job in sorted(set(active.values()))]
        errors = runner.follow("prepare", all_units, jobs, cluster, then=lambda: finalize_here(p))
        print_summary(req, all_units, before, time.time() - t0)
        if errors or not all(is_complete(u) for u in all_units):
            runner.print_errors(errors or {"prepare": "some units did not complete; see `launcher status`"})
            return 1
        return 0
