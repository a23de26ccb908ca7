"""prepare's plan for storage.format=tar: index the original archives instead of extracting them.

    meta (root/meta.bin, as for folder) + the devkit's md5
    per split: tarindex units over byte ranges of its archive, then tarfinal (merge, counts, index file)

The md5 of a split's archive (checked when dataset.archives.<key>.md5 is set and prepare.check_md5)
is computed by the indexing unit itself, in one unit that reads the whole archive once in order:
an md5 cannot be split, and indexing without it reads only the headers (a few hundred bytes per
image), so a separate md5 unit beside range units would read the archive twice for nothing. Without
an md5 the archive is cut into byte ranges (plan_ranges over the cached header index), one unit each.
A split whose archive a file list names (Places365's tree and list-labelled flat archives) has the
same units, run by launcher.prepare.tarlisted; its root gets the label files the folder format writes.

Nothing is written under storage.root but the label files (meta.bin; Places365's lists); the
indexes and records live in state_dir.
"""

from __future__ import annotations

import math
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.index import archive_identity, same_archive, same_identity
from launcher.core.errors import ConfigError
from launcher.core.layout import Layout, read_json
from launcher.core.units import Unit
from launcher.datasets import ADAPTERS, adapter_of
from launcher.prepare.guards import remember_dataset
from launcher.prepare.inputs import load_index
from launcher.prepare.plan import md5_keys, md5_units, meta_unit
from launcher.prepare.request import Plan, PrepareRequest
from launcher.prepare.tarlisted import listed_args
from launcher.tarformat.index import plan_ranges

FORMAT = "tar"
COMPRESSED = (".tar.gz", ".tgz", ".gz")


def tar_index_file(layout: Layout, split: str) -> Path:
    """Where the split's tar index lives (read by the loaders with storage.format=tar)."""
    return layout.state_dir / f"tarindex-{split}.bin"


def part_file(layout: Layout, unit_id: str) -> Path:
    return layout.state_dir / "tarparts" / f"{unit_id}.bin"


def tar_adapters() -> list[str]:
    """The dataset adapters that can be read from their archives (they have `load_tar_split`)."""
    return [name for name in ADAPTERS if hasattr(adapter_of(name), "load_tar_split")]


def check_tar_request(req: PrepareRequest) -> None:
    """storage.format=tar needs an adapter that reads its archives and uncompressed split archives."""
    if not hasattr(adapter_of(req.adapter), "load_tar_split"):
        raise ConfigError(
            f"storage.format=tar supports dataset.adapter={', '.join(tar_adapters())}, not {req.adapter}; "
            "use storage.format=folder"
        )
    for split in req.splits:
        name = req.archives[req.source(split)["archive"]][0]
        if name.lower().endswith(COMPRESSED):
            raise ConfigError(
                f"storage.format=tar reads images in place from uncompressed tars, and the {split} archive {name} "
                "is compressed: use storage.format=folder (it extracts it), or give the uncompressed .tar."
            )


def make_tar_plan(req: PrepareRequest, parallelism: int, min_bytes: int = 0) -> Plan:
    """Devkit and header indexes (cached as for folder), checked; the units a tar root still needs
    (byte ranges of at least `min_bytes` of archive unless prepare.<split>_shards says how many)."""
    adapter = adapter_of(req.adapter)
    devkit, devkit_fp = adapter.read_labels(req)
    indexes = {split: load_index(req, split, devkit)[0] for split in req.splits}
    adapter.check_labels(req, devkit, indexes)
    kit_archive = (read_json(req.layout.devkit_file) or {}).get("archive")
    kit_archive = kit_archive or archive_identity(req.labels_archive(), req.archives[req.labels_key][1])
    archives = {req.labels_key: kit_archive, **{s: indexes[s]["archive"] for s in indexes}}
    identity = {"format": FORMAT, "devkit": devkit_fp, "archives": archives}
    if not req.dry_run:
        remember_dataset(req.layout, req.config.get("dataset"))
    units = [meta_unit(req, identity)]
    units += [u for u in md5_units(req, identity) if u.args["key"] == req.labels_key]
    for split in req.splits:
        units += index_units(req, split, indexes[split]["members"], parallelism, identity, min_bytes)
    finals = {split: final_unit(req, split, units, identity) for split in req.splits}
    p = Plan(units, finals, devkit, identity, req.labels_key)
    if not req.dry_run:
        drop_stale_tar_records(req.layout, p)
    return p


def checked_md5(req: PrepareRequest, key: str) -> str | None:
    """The md5 the split's archive is checked against, or None (not set, or prepare.check_md5=false)."""
    return req.archives[key][1] if key in md5_keys(req) else None


def range_count(size: int, wanted: int | None, parallelism: int, min_bytes: int) -> int:
    """prepare.<split>_shards when set; else one range per parallel job, fewer where a range would
    span less than `min_bytes` of the archive (SLURM: each array task costs a job's start-up)."""
    if wanted:
        return wanted
    return max(1, min(parallelism, math.ceil(size / min_bytes))) if min_bytes else parallelism


def index_units(
    req: PrepareRequest, split: str, members: list, parallelism: int, identity: dict, min_bytes: int = 0
) -> list[Unit]:
    """The split's tarindex units: one per byte range, or one reading the whole archive with its md5."""
    key = req.source(split)["archive"]
    md5 = checked_md5(req, key)
    wanted = req.train_shards if split == "train" else req.val_shards
    size = identity["archives"][split]["size"]
    ranges = [(0, None)] if md5 else plan_ranges(members, range_count(size, wanted, parallelism, min_bytes))
    units = []
    for i, (first, stop) in enumerate(ranges):
        uid = f"{split}-index-{i:04d}-of-{len(ranges):04d}"
        args = {
            "archive": str(req.split_archive(split)),
            "split": split,
            "key": key,
            "devkit": str(req.layout.devkit_file),
            "patterns": dict(req.patterns),
            "first": first,
            "stop": stop,
            "md5": md5,
            "part": str(part_file(req.layout, uid)),
            "identity": identity["archives"][split],
            **listed_args_of(req, split),
        }
        units.append(Unit(uid, "tarindex", (stop or size) - first, str(req.layout.unit_record(uid)), args))
    return units


def listed_args_of(req: PrepareRequest, split: str) -> dict:
    """A split whose archive a file list names (dataset.splits.<split>.listed_by: Places365) is indexed
    by launcher.prepare.tarlisted: its units also carry the adapter and the split's source."""
    source = req.source(split)
    return listed_args(req.adapter, source) if source.get("listed_by") else {}


def split_tar_identity(identity: dict, split: str, labels_key: str) -> dict:
    """What a split's complete record is tied to: the format, the devkit's contents, the files read."""
    archives = identity["archives"]
    return {"format": FORMAT, "devkit": identity["devkit"], "archives": {k: archives[k] for k in (labels_key, split)}}


def final_unit(req: PrepareRequest, split: str, units: list[Unit], identity: dict) -> Unit:
    own = [u for u in units if u.kind == "tarindex" and u.args["split"] == split]
    needs = [u for u in units if u.kind == "meta" or u.kind == "md5"] + own
    layout = req.layout
    args = {
        "split": split,
        "archive": str(req.split_archive(split)),
        "parts": [u.args["part"] for u in own],
        "records": [u.record for u in needs],
        "devkit": str(layout.devkit_file),
        "patterns": dict(req.patterns),
        "expected": req.expected.get(split),
        "index": str(tar_index_file(layout, split)),
        "identity": split_tar_identity(identity, split, req.labels_key),
        **listed_args_of(req, split),
    }
    return Unit(f"finalize-{split}", "tarfinal", 0, str(layout.complete_file(split)), args)


def same_tar_identity(a: dict | None, b: dict) -> bool:
    if not a or a.get("format") != FORMAT or a.get("devkit") != b["devkit"]:
        return False
    archives = a.get("archives") or {}
    return all(same_identity(archives.get(k), v) for k, v in b["archives"].items())


def drop_stale_tar_records(layout: Layout, p: Plan) -> None:
    """Records that no longer describe the state folder are forgotten, so their units run again: a
    split's complete record of other archives or whose index file is gone; a tarindex record of
    another file or range, or whose part is gone while its split still needs merging."""
    for fin in p.finalize.values():
        done = read_json(Path(fin.record))
        if done and (not same_tar_identity(done.get("identity"), fin.args["identity"]) or not index_there(fin)):
            safefs.remove(fin.record)
    for u in p.units:
        done = read_json(Path(u.record))
        if done is None or u.kind != "tarindex":
            continue
        merged = read_json(Path(p.finalize[u.args["split"]].record)) is not None
        same_work = done.get("span", [None])[0] == u.args["first"] and done.get("md5") == u.args["md5"]
        part_lost = not merged and not safefs.is_file(u.args["part"])
        if not same_identity(done.get("archive"), u.args["identity"]) or not same_work or part_lost:
            safefs.remove(u.record)


def index_there(fin: Unit) -> bool:
    return safefs.is_file(fin.args["index"])


def tar_already_complete(req: PrepareRequest) -> list[dict] | None:
    """The complete records of every split when the cached devkit and header indexes still describe
    the archives, each record is a tar index of them, its index file and meta.bin are there and the
    md5s checked match; read-only, so a rerun on a complete state folder writes nothing."""
    layout = req.layout
    devkit = read_json(layout.devkit_file)
    if not same_archive(devkit, req.labels_archive()):
        return None
    identity = {"devkit": devkit["fingerprint"], "archives": {req.labels_key: devkit["archive"]}}
    done = []
    for split in req.splits:
        index = read_json(layout.index_file(split))
        record = read_json(layout.complete_file(split))
        if not same_archive(index, req.split_archive(split)) or record is None:
            return None
        identity["archives"][split] = index["archive"]
        expected = split_tar_identity(identity, split, req.labels_key)
        if not same_tar_identity(record.get("identity"), expected) or not safefs.is_file(record.get("index", "")):
            return None
        md5 = checked_md5(req, req.source(split)["archive"])
        if md5 and record_md5(layout, split) != md5.lower():
            return None
        done.append(record)
    if not all(safefs.is_file(p) for p in adapter_of(req.adapter).meta_args(req, {})["outputs"]):
        return None
    for key in [k for k in md5_keys(req) if k == req.labels_key]:
        record = read_json(layout.unit_record(f"md5-{key}")) or {}
        if record.get("md5") != req.archives[key][1].lower():
            return None
    return done


def record_md5(layout: Layout, split: str) -> str | None:
    """The md5 the whole-archive tarindex unit of the split computed (None when it ran by ranges)."""
    record = read_json(layout.unit_record(f"{split}-index-0000-of-0001")) or {}
    return record.get("md5")


def check_root_format(req: PrepareRequest, wanted: str) -> None:
    """A state folder whose splits were completed in the other storage.format is refused (the records
    of one would be taken for the other's), naming both ways out; nothing is removed."""
    for split in req.splits:
        record = read_json(req.layout.complete_file(split))
        if record is None:
            continue
        had = (record.get("identity") or {}).get("format") or "folder"
        if had != wanted:
            raise ConfigError(
                f"{req.layout.complete_file(split)} says {split} of storage.root={req.layout.root} was prepared "
                f"with storage.format={had}: run with storage.format={had}, or prepare storage.format={wanted} "
                "into another storage.root (or storage.state_dir)."
            )
