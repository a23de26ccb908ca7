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
from launcher.core.layout import Layout, Lock, read_json
from launcher.core.progress import human_bytes, table
from launcher.core.units import Unit, is_complete

if TYPE_CHECKING:
    from launcher.core import dispatch, engine

from launcher.check.plan import new_run_id
from launcher.prepare import tarplan
from launcher.prepare.checks import check_archives, check_writable, warn_probable_mistakes, warn_unchecked_md5
from launcher.prepare.guards import check_started_format, claim_format
from launcher.prepare.plan import already_complete, make_output_dirs, make_plan, print_complete, print_plan
from launcher.prepare.request import Plan, PrepareRequest


def summary_rows(units: list[Unit], before: set[str]) -> list[list]:
    rows = []
    for kind in ("meta", "md5", "train", "val", "tarindex", "finalize", "tarfinal"):
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
        rate = f"{human_bytes(nbytes / secs)}/s" if secs > 0 and kind in ("train", "val", "md5", "tarindex") else ""
        rows.append([kind, len(done), len(skipped), failed, images, human_bytes(nbytes), f"{secs:.2f}", rate])
    return rows


def print_summary(req: PrepareRequest, units: list[Unit], before: set[str], wall: float) -> None:
    headers = ["units", "done", "skipped", "failed", "images", "written", "unit-s", "throughput"]
    print(table(headers, summary_rows(units, before)))
    print(f"wall time {wall:.1f}s; root {req.layout.root}")


def common_units(units: list[Unit], labels_key: str = "devkit") -> list[Unit]:
    """What both splits need first: the root's label files and the label archive's md5."""
    return [u for u in units if u.kind == "meta" or (u.kind == "md5" and u.args["key"] == labels_key)]


def split_units(units: list[Unit], split: str) -> list[Unit]:
    """A split's own units: its shards (or, storage.format=tar, its index ranges) and its archive's md5."""
    own = {"md5": "key", "tarindex": "split"}  # the argument naming the split of these kinds
    return [u for u in units if u.kind == split or (u.kind in own and u.args[own[u.kind]] == split)]


def work_of(p: Plan, folder: Path) -> engine.Work:
    """The plan as the engine runs it: common units, one step per split, each split's finalize once
    the common units and the split's succeeded (a job on SLURM when this run does not wait, else here)."""
    from launcher.core import engine

    steps = [engine.Step("prepare-common", common_units(p.units, p.labels_key))]
    finals = []
    for split, fin in p.finalize.items():
        steps.append(engine.Step(f"prepare-{split}", split_units(p.units, split)))
        finals.append(engine.Final(fin, f"prepare-{split}-finalize", ("prepare-common", f"prepare-{split}")))
    units = [*p.units, *p.finalize.values()]
    return engine.Work("prepare", units, steps, finals, folder, resumable=True)


def plan_of(req: PrepareRequest, backend: dispatch.Backend) -> Plan:
    """The plan of storage.format: tar indexes the archives in place, folder extracts them."""
    min_bytes = backend.min_unit_bytes(plan.MIN_SHARD_BYTES)
    if req.storage_format == tarplan.FORMAT:
        return tarplan.make_tar_plan(req, backend.parallelism, min_bytes)
    return make_plan(req, backend.parallelism, min_bytes)


def complete_records(req: PrepareRequest) -> list[dict] | None:
    """Every split's complete record when the root (or, for tar, the state folder) is whole for this format."""
    if req.storage_format == tarplan.FORMAT:
        return tarplan.tar_already_complete(req)
    return already_complete(req)


def run_dry(req: PrepareRequest, backend: dispatch.Backend) -> int:
    """prepare.dry_run=true: the plan and what would be submitted, from what is on disk (devkit and
    indexes read into memory when not cached); creates no folder, record, index, lock or ledger line."""
    from launcher.core import engine

    p = plan_of(req, backend)
    print_plan(req, p)
    graph = engine.job_graph(backend, "prepare", work_of(p, req.log_dir or Path(".")))
    print(f"\ndry run: nothing was written; a real run would submit to cluster={backend.executor}:")
    print(engine.describe(backend, graph))
    if backend.waits:
        print("and then finalize each split in this process (wait=true)")
    return 0


def announce(argv: list[str]):
    """What prepare prints once its jobs are submitted."""

    def say(backend: dispatch.Backend, folder: Path, jobs: list, waits: bool) -> None:
        from launcher.core import runner

        if not waits:
            runner.print_submitted("prepare", backend, folder, jobs, argv)
        elif jobs:
            print(runner.jobs_line(backend, folder, jobs), flush=True)

    return say


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
        for message in reconcile_fixes(layout.root, layout.state_dir, dict(layout.folders)):
            print(f"warning: {message}", file=sys.stderr)


def run_prepare(req: PrepareRequest, backend: dispatch.Backend) -> int:
    """The prepare command: returns the exit code (0 only when every split is complete)."""
    t0 = time.time()
    if req.storage_format == tarplan.FORMAT:
        tarplan.check_tar_request(req)
    check_archives(req)
    tarplan.check_root_format(req, req.storage_format)
    check_started_format(req.layout, req.storage_format, req.argv)
    warn_probable_mistakes(req, backend)
    if req.dry_run:
        return run_dry(req, backend)
    finish_interrupted_fixes(req.layout)
    if done := complete_records(req):
        print_complete(req, done)
        return 0
    from launcher.core import engine, runner  # submitit: not needed when everything is complete

    req.output = dataclasses.replace(req.output, replace=req.force)
    check_writable(req.layout, replace=req.force)

    def build() -> engine.Work:
        p = plan_of(req, backend)
        claim_format(req.layout, req.storage_format, req.argv)
        warn_unchecked_md5(req)
        if req.storage_format != tarplan.FORMAT:  # tar: nothing under the root but meta.bin
            make_output_dirs(req)
        work = work_of(p, req.log_dir / f"prepare-{new_run_id()}")
        work.announce = announce(req.argv)
        return work

    run = engine.Run("prepare", req.layout, req.argv, req.config, f"prepare of {req.layout.root}", req.force)
    outcome = engine.execute(backend, run, build)
    if not outcome.waited:
        return 0
    units = outcome.work.units
    print_summary(req, units, outcome.before, time.time() - t0)
    if outcome.errors or not all(is_complete(u) for u in units):
        runner.print_errors(outcome.errors or {"prepare": "some units did not complete; see `launcher status`"})
        return 1
    return 0
