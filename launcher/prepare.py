"""prepare: ILSVRC2012 archives -> the root torchvision.datasets.ImageNet reads, as small units.

    check inputs -> lock the root -> devkit + indexes (cached) -> refuse another dataset's root
    -> plan units (meta, md5s, train shards, val ranges) -> dispatch the incomplete ones
    -> finalize each split (counts, manifest, complete record) -> summary

No Hydra here: `PrepareRequest` carries paths and values; commands.py builds it from the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import plan
from launcher.devkit import Devkit, parse_devkit
from launcher.errors import LauncherError
from launcher.extract import Output, make_dir
from launcher.index import archive_identity, index_train, index_val, same_archive
from launcher.layout import SPLITS, Layout, Lock, read_json, write_json
from launcher.manifest import build_manifest, write_manifest
from launcher.progress import human_bytes, table
from launcher.units import Unit, is_complete, run_unit

if TYPE_CHECKING:
    from launcher import dispatch

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


def check_writable(layout: Layout) -> None:
    for folder in (layout.root, layout.state_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
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


# ---------------------------------------------------------------- devkit and indexes (cached)


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_devkit(req: PrepareRequest) -> tuple[Devkit, str]:
    path = req.archive("devkit")
    cached = read_json(req.layout.devkit_file)
    if same_archive(cached, path):
        return Devkit.from_json(cached["devkit"]), cached["fingerprint"]
    devkit = parse_devkit(path, req.devkit_meta, req.devkit_ground_truth, req.devkit_max_bytes)
    data = devkit.to_json()
    fp = digest(data)
    write_json(req.layout.devkit_file, {"archive": archive_identity(path), "fingerprint": fp, "devkit": data})
    return devkit, fp


def load_index(req: PrepareRequest, split: str, devkit: Devkit) -> tuple[dict, dict | None]:
    """The index of a split's archive (cached while the archive is unchanged), and the previous
    index when the archive changed since."""
    path, cache = req.archive(split), req.layout.index_file(split)
    cached = read_json(cache)
    if same_archive(cached, path):
        return cached, None
    if split == "train":
        index = index_train(path, req.train_class_pattern)
    else:
        index = index_val(path, req.val_image_pattern, len(devkit.val_wnids))
    write_json(cache, index)
    return index, cached


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

    return [name for name in changed if output(name).exists()]


def guard_identity(req: PrepareRequest, identity: dict, clashes: dict[str, list[str]]) -> None:
    """Refuse a root that holds another dataset's files (or another tool's) unless prepare.force=true.
    An archive replaced after a failure (a truncated class tar downloaded again) is accepted as long
    as nothing it changes was prepared already."""
    layout = req.layout
    stored = read_json(layout.state_dir / "identity.json")
    if stored is None and (layout.state_dir / "identity.json").exists():
        stored = identity_of_complete_splits(layout)  # damaged: what the complete records say
    if stored is None:
        found = [p.name for p in (layout.meta_bin, layout.split_dir("train"), layout.split_dir("val")) if p.exists()]
        if found and not req.force:
            raise LauncherError(
                f"{layout.root} already holds {', '.join(found)} that launcher did not prepare. Check it "
                "with `launcher verify`, or pass prepare.force=true to prepare over it (its "
                f"{', '.join(found)} are replaced)."
            )
        if found:
            reset(layout, ["train", "val"], meta=True)
        write_json(layout.state_dir / "identity.json", identity)
        return
    changed = [k for k in identity if k in stored and stored[k] != identity[k]]
    prepared = [k for k in changed if k == "devkit" and layout.meta_bin.exists() or clashes.get(k)]
    if prepared and not req.force:
        examples = "; ".join(f"{k}: {', '.join(clashes[k][:3])}" for k in prepared if clashes.get(k))
        raise LauncherError(
            f"{layout.root} was prepared from other archives ({', '.join(prepared)} differ from what the "
            f"root holds{': ' + examples if examples else ''}). Point storage.root at a new folder, or pass "
            "prepare.force=true to replace what is there."
        )
    if prepared:
        splits = SPLITS if "devkit" in prepared else [s for s in SPLITS if s in prepared]
        reset(layout, splits, meta="devkit" in prepared)
    write_json(layout.state_dir / "identity.json", {**stored, **identity})


def identity_of_complete_splits(layout: Layout) -> dict:
    """The archives' identity as the complete records of the splits state it (for a damaged identity.json)."""
    identity: dict = {}
    for split in SPLITS:
        done = read_json(layout.complete_file(split)) or {}
        if isinstance(done.get("identity"), dict):
            identity.update(done["identity"])
    return identity


def reset(layout: Layout, splits, meta: bool) -> None:
    """Forget and delete what was prepared for `splits` (and meta.bin)."""
    for split in splits:
        print(f"prepare.force: removing {layout.split_dir(split)} and its records", file=sys.stderr)
        shutil.rmtree(layout.split_dir(split), ignore_errors=True)
        shutil.rmtree(layout.partial_dir / split, ignore_errors=True)
        for path in (layout.complete_file(split), layout.manifest_file(split)):
            path.unlink(missing_ok=True)
        for record in layout.units_dir.glob(f"*{split}*.json"):
            record.unlink()
    if meta:
        layout.meta_bin.unlink(missing_ok=True)
        for record in layout.units_dir.glob("meta*.json"):
            record.unlink()
        for record in layout.units_dir.glob("md5-*.json"):
            record.unlink()


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
            forget_stale_md5(rec(f"md5-{key}"), req.archive(key), md5)
            units.append(
                Unit(
                    f"md5-{key}",
                    "md5",
                    req.archive(key).stat().st_size,
                    str(rec(f"md5-{key}")),
                    {"path": str(req.archive(key)), "expected": md5, "key": key},
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
                    },
                )
            )
    finalize = {split: finalize_unit(req, split, units, identity) for split in req.splits}
    return Plan(units, finalize, devkit, identity)


def forget_stale_md5(record: Path, archive: Path, expected: str) -> None:
    """An md5 record of another file size or another expected md5 is checked again."""
    done = read_json(record)
    if done and (done.get("bytes") != archive.stat().st_size or done.get("md5") != expected.lower()):
        record.unlink()


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
            "identity": {k: identity[k] for k in ("devkit", split)},
        },
    )


def finalize_split(
    split: str, records: list[str], devkit: str, expected: int | None, manifest: str, identity: dict
) -> dict:
    """Finalize unit: every unit of the split complete -> counts checked -> manifest. Its completion
    record (written by the unit runner) is the split's complete-<split>.json."""
    done = [read_json(Path(r)) for r in records]
    if missing := [Path(r).stem for r, d in zip(records, done) if d is None]:
        raise LauncherError(
            f"{split} is not complete: units {', '.join(missing)} have no completion record "
            "(their errors are in their job logs; `launcher status` shows them)."
        )
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
    write_manifest(Path(manifest), build_manifest(split, files, kit["wnid_to_classes"]))
    return {
        "split": split,
        "images": len(files),
        "bytes": sum(f[2] for f in files),
        "classes": len(kit["wnid_to_classes"]),
        "manifest": manifest,
        "identity": identity,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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
    if done and done.get("identity") == {k: identity[k] for k in ("devkit", split)}:
        return done
    return None


# ---------------------------------------------------------------- the whole command


def already_complete(req: PrepareRequest) -> list[dict] | None:
    """The complete records of every split, when the cached devkit and indexes still describe the
    archives and the records match them; read-only, so a rerun on a complete root writes nothing."""
    layout = req.layout
    devkit = read_json(layout.devkit_file)
    if not same_archive(devkit, req.archive("devkit")):
        return None
    identity = {"devkit": devkit["fingerprint"]}
    for split in req.splits:
        index = read_json(layout.index_file(split))
        if not same_archive(index, req.archive(split)):
            return None
        identity[split] = index["fingerprint"]
    done = [split_complete(layout, split, identity) for split in req.splits]
    if not all(done):
        return None
    for key in md5_keys(req):
        record = read_json(layout.unit_record(f"md5-{key}")) or {}
        if record.get("md5") != req.archives[key][1].lower():
            return None
    return done


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
    identity = {"devkit": devkit_fp, **{s: indexes[s]["fingerprint"] for s in indexes}}
    clashes = {s: conflicts(req.layout, s, old, indexes[s], devkit) for s, (_, old) in loaded.items()}
    guard_identity(req, identity, clashes)
    p = plan_units(req, devkit, indexes, parallelism, identity, min_bytes)
    drop_stale_records(p.units)
    return p


def drop_stale_records(units: list[Unit]) -> None:
    """A record written for other work under the same id (shards regrouped) is forgotten."""
    for u in units:
        done = read_json(Path(u.record)) if u.kind in ("train", "val") else None
        if done is None:
            continue
        same = (
            set(done.get("classes", ())) == set(u.args["wnids"])
            if u.kind == "train"
            else done.get("range") == [u.args["start"], u.args["stop"]]
        )
        if not same:
            Path(u.record).unlink()


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


def dispatch_slurm(cluster: dispatch.Cluster, folder: Path, p: Plan, todo: list[Unit], active: dict) -> list:
    """Arrays per split. Without waiting, each split's finalize job waits (afterok) for its arrays in
    SLURM; when this process waits anyway, it finalizes itself, as on the other executors."""
    from launcher import runner

    common = [u for u in todo if u.kind == "meta" or (u.kind == "md5" and u.args["key"] == "devkit")]
    jobs = runner.submit_units(cluster, folder, "prepare-common", common)
    running = [job for uid, (_, _, job) in active.items() if uid in ("meta", "md5-devkit")]
    after_common = [j.job_id for j in jobs] + running
    for split, fin in p.finalize.items():
        mine = [u for u in todo if u.kind == split or (u.kind == "md5" and u.args["key"] == split)]
        split_jobs = runner.submit_units(cluster, folder, f"prepare-{split}", mine)
        jobs += split_jobs
        waiting = [job for uid, (_, _, job) in active.items() if uid.startswith((f"{split}-", f"md5-{split}"))]
        if not cluster.waits and not is_complete(fin) and fin.id not in active:
            after = after_common + [j.job_id for j in split_jobs] + waiting
            jobs += runner.submit_units(cluster, folder, f"prepare-{split}-finalize", [fin], after=after)
    return jobs


def finalize_here(p: Plan) -> dict[str, str]:
    errors = {}
    for unit in p.finalize.values():
        try:
            run_unit(unit)
        except LauncherError as err:
            errors[unit.id] = str(err)
    return errors


def run_prepare(req: PrepareRequest, cluster: dispatch.Cluster) -> int:
    """The prepare command: returns the exit code (0 only when every split is complete)."""
    t0 = time.time()
    check_archives(req)
    if not req.dry_run and (done := already_complete(req)):
        print_complete(req, done)
        return 0
    from launcher import dispatch, runner  # submitit: not needed when everything is complete

    check_writable(req.layout)
    with Lock(req.layout.lock_file, f"prepare of {req.layout.root}"):
        min_bytes = plan.MIN_SHARD_BYTES if cluster.executor == "slurm" else 0
        p = make_plan(req, cluster.parallelism, min_bytes)
        if req.dry_run:
            print_plan(req, p)
            return 0
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
        runner.record_submission(req.layout, "prepare", req.argv, cluster, folder, list(records), jobs, records=records)
        if not cluster.waits:
            runner.print_submitted("prepare", cluster, folder, jobs, req.argv)
            return 0
        jobs += [dispatch.attach(ex, job, where) for ex, where, job in sorted(set(active.values()))]
        errors = runner.follow("prepare", p.units, jobs, cluster)
        errors.update(finalize_here(p))
        print_summary(req, all_units, before, time.time() - t0)
        if errors or not all(is_complete(u) for u in all_units):
            runner.print_errors(errors or {"prepare": "some units did not complete; see `launcher status`"})
            return 1
        return 0
