"""verify: check a torchvision ImageNet root (ours or one prepared by anything else) and say exactly
what is wrong. The command: check the request, plan, run the units here or submit them, report.

    expected layout (devkit archive, our cached devkit.json, or meta.bin + the folders)
    -> meta.bin (torchvision's load_meta_file, against the devkit) -> top level and split folders
       (here: a few thousand directory entries at most)
    -> shards of class folders as units: each lists its folders, checks names, labels and counts,
       and every file at verify.level; verify.fix re-encodes the odd files
    -> a report unit merges the shard records into the JSON report (after a fix it also rewrites
       the manifest and prepare's records for the files it changed)

Levels: `exists` (present, size as in the manifest), `header` (JPEG/PNG structure read from the
head and the tail of the file: signature, segments, SOFn dimensions, end marker), `decode`
(header + PIL decodes all the image data; see launcher.check.images.decode). Every level reads
regular files only, each within verify.max_file_bytes, its header within verify.max_pixels and its
JPEG scans within verify.max_scans (launcher.check.imagebounds); meta.bin and the state files verify
reads are bounded too (launcher.datasets.imagenet.meta.meta_bounds,
launcher.check.structure.read_state_json). Records of a run live in state_dir/verify/<run id>/, so
each run checks everything again. No Hydra, no submitit here:
VerifyRequest carries paths and values.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from launcher.check.fixlog import reconcile_fixes
from launcher.check.plan import SLURM_MIN_SHARD_BYTES, make_plan
from launcher.check.report import print_report, print_submitted
from launcher.check.request import VerifyRequest, check_request
from launcher.core import dispatch, runner
from launcher.core.errors import LauncherError
from launcher.core.layout import Lock, read_json
from launcher.core.units import is_complete, run_unit


def run_verify(req: VerifyRequest, cluster: dispatch.Cluster) -> int:
    """The verify command: returns the exit code (0 only when nothing failed)."""
    t0 = time.time()
    check_request(req)
    report_path = Path(req.report or req.layout.state_dir / "verify.json")
    processes = int(cluster.params.get("cpus_per_task") or 1) if cluster.executor == "slurm" else 1
    with Lock(req.layout.lock_file, f"the root {req.layout.root} (a prepare or verify runs on it)"):
        for message in reconcile_fixes(req.layout.root, req.layout.state_dir):
            print(f"warning: {message}", file=sys.stderr)
        min_bytes = SLURM_MIN_SHARD_BYTES[req.level] if cluster.executor == "slurm" else 0
        p = make_plan(req, cluster.parallelism, processes, min_bytes)
        units = [*p.shards, *p.md5]
        folder = (req.log_dir or req.layout.state_dir / "logs") / f"verify-{p.run_id}"
        if cluster.executor == "slurm":
            jobs = runner.submit_units(cluster, folder, "verify", units)
            jobs += runner.submit_units(cluster, folder, "verify-report", [p.report], after=[j.job_id for j in jobs])
        else:
            jobs = runner.submit_units(cluster, folder, "verify", units)
        plan_ids = [u.id for u in [*units, p.report]]
        runner.record_submission(
            req.layout,
            "verify",
            req.argv,
            cluster,
            folder,
            plan_ids,
            jobs,
            records_dir=p.run_dir / "units",
            sizes={u.id: u.size for u in [*units, p.report]},
            config=req.config,
        )
        if not cluster.waits:
            print_submitted(p, cluster, folder, jobs, report_path, req.argv)
            return 0
        print(runner.jobs_line(cluster, folder, jobs), flush=True)
        label = f"verify {'+'.join(req.splits)} {req.level}"
        watched = [*units, p.report] if cluster.executor == "slurm" else units
        errors = runner.follow(label, watched, jobs, cluster)
        if cluster.executor != "slurm":
            try:
                run_unit(p.report)
            except LauncherError as err:
                errors["verify-report"] = str(err)
    if not is_complete(p.report):
        runner.print_errors(errors or {"verify": "the report was not written; see the job logs in " + str(folder)})
        return 1
    report = read_json(report_path)
    print_report(report, report_path)
    print(f"wall time {time.time() - t0:.1f}s")
    if errors:
        runner.print_errors(errors)
    return 0 if report["ok"] and not errors else 1
