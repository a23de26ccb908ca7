"""prepare: ILSVRC2012 archives -> the root torchvision.datasets.ImageNet reads, as small units.
The command: lock, plan, run the units here or submit them, finalize, summary.

    check inputs -> lock the root -> devkit + indexes (cached) -> refuse another dataset's root
    -> plan units (meta, md5s, train shards, val ranges) -> dispatch the incomplete ones
    -> finalize each split (counts, manifest, complete record) -> summary

No Hydra here: `PrepareRequest` carries paths and values; launcher.cli.requests builds it from the config.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.core import plan
from launcher.core.errors import LauncherError
from launcher.core.layout import Layout, Lock, read_json
from launcher.core.progress import human_bytes, table
from launcher.core.units import Unit, is_complete, run_unit

if TYPE_CHECKING:
    from launcher.core import dispatch

from launcher.prepare.checks import check_archives, check_writable, warn_probable_mistakes, warn_unchecked_md5
from launcher.prepare.plan import already_complete, make_output_dirs, make_plan, print_complete, print_plan
from launcher.prepare.request import Plan, PrepareRequest


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
