"""prepare's plan: the units (meta, md5s, train shards, val ranges, finalize) a root still needs, and
what is printed of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive import safefs
from launcher.archive.extract import make_dir
from launcher.archive.index import archive_identity, same_archive, same_identity
from launcher.core import plan
from launcher.core.layout import SPLITS, Layout, read_json, write_json
from launcher.core.manifest import read_manifest
from launcher.core.progress import human_bytes, table
from launcher.core.units import Unit, is_complete
from launcher.datasets.imagenet.devkit import Devkit

if TYPE_CHECKING:
    pass

from launcher.datasets import adapter_of
from launcher.prepare.finalize import finalize_unit, missing_folders, same_split_identity, split_identity
from launcher.prepare.guards import (
    conflicts,
    guard_identity,
    make_root_identity,
    remember_dataset,
    root_identity,
    root_keys,
)
from launcher.prepare.inputs import load_index
from launcher.prepare.request import Plan, PrepareRequest
from launcher.sources import check_folder, shape_module


def plan_units(
    req: PrepareRequest, devkit: Devkit, indexes: dict, parallelism: int, identity: dict, min_bytes: int
) -> Plan:
    units = [meta_unit(req, identity)]
    units += md5_units(req, identity)
    for split in req.splits:
        units += split_units(req, split, indexes[split]["members"], parallelism, identity, min_bytes)
    finalize = {split: finalize_unit(req, split, units, identity) for split in req.splits}
    return Plan(units, finalize, devkit, identity, req.labels_key)


def meta_unit(req: PrepareRequest, identity: dict) -> Unit:
    """The unit that writes the root's label files (ImageNet's meta.bin, Places365's lists): its
    arguments are the adapter's, `outputs` the files it leaves in the root."""
    layout = req.layout
    args = {"adapter": req.adapter, **adapter_of(req.adapter).meta_args(req, identity)}
    return Unit("meta", "meta", req.labels_archive().stat().st_size, str(layout.unit_record("meta")), args)


def md5_units(req: PrepareRequest, identity: dict) -> list[Unit]:
    """One unit per archive whose md5 is checked (a record of another archive's md5 forgotten first)."""
    rec, units = req.layout.unit_record, []
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
    return units


def split_units(
    req: PrepareRequest, split: str, members: list, parallelism: int, identity: dict, min_bytes: int
) -> list[Unit]:
    """The split's index rows in shards of its archive's shape (dataset.splits.<split>.shape), one unit each."""
    source = req.source(split)
    shape = shape_module(source["shape"])
    wanted = req.train_shards if split == "train" else req.val_shards
    shards = shape.shard(members, wanted, parallelism, min_bytes)
    layout = req.layout
    paths = {
        "archive": str(req.split_archive(split)),
        "root": str(layout.root),
        "index": str(layout.index_file(split)),
        "labels": str(layout.devkit_file),
        "folder": check_folder(split, source["folder"]),
        "listed_by": source.get("listed_by"),
    }
    units = []
    for i, part in enumerate(shards):
        uid = plan.shard_id(split, i, len(shards))
        args = shape.unit_args(members, part, paths, req.patterns)
        args.update(out=req.output, root_id=identity["root"]["id"], shape=source["shape"])
        units.append(Unit(uid, split, shape.unit_size(members, part), str(layout.unit_record(uid)), args))
    return units


def forget_stale_md5(record: Path, identity: dict, expected: str) -> None:
    """An md5 record of another file (or of this one before a change) or of another expected md5 is
    checked again."""
    done = read_json(record)
    if done and (not same_identity(done.get("archive"), identity) or done.get("md5") != expected.lower()):
        safefs.remove(record)


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


def already_complete(req: PrepareRequest) -> list[dict] | None:
    """The complete records of every split, when the cached devkit and indexes still describe the
    archives (the same files, unchanged), the records belong to this root, and the tree still holds
    meta.bin, each split folder and every class folder (a few stats and one listing per split);
    read-only, so a rerun on a complete root writes nothing."""
    layout = req.layout
    devkit = read_json(layout.devkit_file)
    if not same_archive(devkit, req.labels_archive()):
        return None
    root = root_identity(layout.root)
    if root is None:
        return None
    identity = {"devkit": devkit["fingerprint"], "root": root, "archives": {req.labels_key: devkit["archive"]}}
    for split in req.splits:
        index = read_json(layout.index_file(split))
        if not same_archive(index, req.split_archive(split)):
            return None
        identity[split] = index["fingerprint"]
        identity["archives"][split] = index["archive"]
    done = [split_complete(layout, split, identity) for split in req.splits]
    if not all(done) or not tree_intact(req, devkit["devkit"]):
        return None
    for key in md5_keys(req):
        record = read_json(layout.unit_record(f"md5-{key}")) or {}
        if record.get("md5") != req.archives[key][1].lower():
            return None
        if not same_identity(record.get("archive"), identity["archives"][key]):
            return None
    return done


def tree_intact(req: PrepareRequest, kit: dict) -> bool:
    """The root's label files, each split folder and every class folder the labels name are there."""
    adapter, layout = adapter_of(req.adapter), req.layout
    if not all(safefs.is_file(p) for p in adapter.meta_args(req, {})["outputs"]):
        return False
    return all(
        layout.split_dir(s).is_dir() and not missing_folders(layout.split_dir(s), adapter.folders_of(kit, s))
        for s in req.splits
    )


def md5_keys(req: PrepareRequest) -> list[str]:
    return [k for k in req.archive_keys() if req.archives[k][1] and req.check_md5]


def print_complete(req: PrepareRequest, done: list[dict]) -> None:
    rows = [[d["split"], d["classes"], d["images"], human_bytes(d["bytes"]), d["finished"]] for d in done]
    print(f"already complete in {req.layout.root}: nothing to do.")
    print(table(["split", "classes", "images", "bytes", "finished"], rows))


def make_plan(req: PrepareRequest, parallelism: int, min_bytes: int = 0) -> Plan:
    """Load devkit and indexes, check them, guard the root, and plan the units."""
    adapter = adapter_of(req.adapter)
    devkit, devkit_fp = adapter.read_labels(req)
    loaded = {split: load_index(req, split, devkit) for split in req.splits}
    indexes = {split: new for split, (new, _) in loaded.items()}
    adapter.check_labels(req, devkit, indexes)
    kit_archive = (read_json(req.layout.devkit_file) or {}).get("archive")  # none cached in a dry run
    kit_archive = kit_archive or archive_identity(req.labels_archive(), req.archives[req.labels_key][1])
    archives = {req.labels_key: kit_archive, **{s: indexes[s]["archive"] for s in indexes}}
    identity = {"devkit": devkit_fp, **{s: indexes[s]["fingerprint"] for s in indexes}, "archives": archives}
    clashes = {
        s: conflicts(req.layout, s, old, indexes[s], devkit, bool(req.source(s).get("listed_by")))
        for s, (_, old) in loaded.items()
    }
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
        labels = u.kind == "meta" or u.args.get("key") == p.labels_key
        stale_splits.update(SPLITS if labels else [u.args.get("key", u.kind)])
    for split, fin in p.finalize.items():
        done = read_json(Path(fin.record))
        held = same_split_identity(done.get("identity"), fin.args["identity"], root_keys(layout)) if done else True
        lost = done and read_manifest(layout.manifest_file(split)) is None  # damaged or gone: written again
        if done and (split in stale_splits or not held or lost):
            safefs.remove(fin.record)


def record_holds(layout: Layout, u: Unit, done: dict, identity: dict) -> bool:
    """A unit's record still describes what the root holds (a few stats, no walk)."""
    if u.kind == "meta":
        return all(safefs.is_file(p) for p in u.args["outputs"])
    if u.kind == "md5":
        return True  # forget_stale_md5 checked it against the archive's identity
    if (
        not same_identity(done.get("archive"), identity["archives"][u.kind])
        or done.get("root_id") != identity["root"]["id"]
    ):
        return False
    shape = shape_module(u.args["shape"])
    folders = shape.expected_folders(u.args) or shape.folders_of(done)
    return shape.record_holds(done, u.args) and not missing_folders(layout.split_dir(u.kind), folders)


def print_plan(req: PrepareRequest, p: Plan) -> None:
    rows = []
    for u in [*p.units, *p.finalize.values()]:
        where = {
            "meta": ", ".join(u.args["outputs"]) if u.kind == "meta" else "",
            **{split: req.layout.split_dir(split) for split in req.splits},
            "md5": "(check only)",
            "finalize": req.layout.manifest_file(u.args.get("split", "")),
            "tarindex": u.args.get("part", ""),
            "tarfinal": u.args.get("index", ""),
        }[u.kind]
        rows.append([u.id, u.kind, human_bytes(u.size), "done" if is_complete(u) else "to do", where])
    print(table(["unit", "kind", "reads", "state", "writes into"], rows, "llrll"))
    todo = [u for u in p.units if not is_complete(u)]
    print(
        f"\n{len(todo)} of {len(p.units)} units to run, {human_bytes(sum(u.size for u in todo))} to read; "
        f"records in {req.layout.units_dir}"
    )
