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
from launcher.check.plan import SLURM_MIN_SHARD_BYTES, VerifyPlan, make_plan
from launcher.check.report import print_report, print_submitted
from launcher.check.request import VerifyRequest, check_request
from launcher.core import dispatch, engine, runner
from launcher.core.layout import read_json
from launcher.core.units import is_complete


def work_of(req: VerifyRequest, p: VerifyPlan, report_path: Path) -> engine.Work:
    """The shards (and archive md5s) in one step; the report unit once they succeeded: on SLURM
    always a job (it fails when verify found problems, so sacct and afterok see it), else here."""
    units = [*p.shards, *p.md5]
    folder = (req.log_dir or req.layout.state_dir / "logs") / f"verify-{p.run_id}"

    def announce(backend: dispatch.Backend, folder: Path, jobs: list, waits: bool) -> None:
        if not waits:
            print_submitted(p, backend, folder, jobs, report_path, req.argv)
        elif jobs:
            print(runner.jobs_line(backend, folder, jobs), flush=True)

    return engine.Work(
        f"verify {'+'.join(req.splits)} {req.level}",
        [*units, p.report],
        [engine.Step("verify", units)],
        [engine.Final(p.report, "verify-report", ("verify",), always_job=True, counted=False)],
        folder,
        records_dir=p.run_dir / "units",
        announce=announce,
    )


def run_verify(req: VerifyRequest, backend: dispatch.Backend) -> int:
    """The verify command: returns the exit code (0 only when nothing failed)."""
    t0 = time.time()
    check_request(req)
    report_path = Path(req.report or req.layout.state_dir / "verify.json")
    plans: list[VerifyPlan] = []

    def build() -> engine.Work:
        if req.storage_format == "folder":  # a tar root's fixes are in its overlay, the files untouched
            for message in reconcile_fixes(req.layout.root, req.layout.state_dir, dict(req.layout.folders)):
                print(f"warning: {message}", file=sys.stderr)
        min_bytes = backend.min_unit_bytes(SLURM_MIN_SHARD_BYTES[req.level])
        plans.append(make_plan(req, backend.parallelism, backend.processes_per_unit(), min_bytes))
        return work_of(req, plans[0], report_path)

    holder = f"the root {req.layout.root} (a prepare or verify runs on it)"
    outcome = engine.execute(backend, engine.Run("verify", req.layout, req.argv, req.config, holder), build)
    if not outcome.waited:
        return 0
    errors = outcome.errors
    if not is_complete(plans[0].report):
        runner.print_errors(errors or {"verify": f"the report was not written; see the job logs in {outcome.folder}"})
        return 1
    report = read_json(report_path)
    print_report(report, report_path)
    print(f"wall time {time.time() - t0:.1f}s")
    if errors:
        runner.print_errors(errors)
    return 0 if report["ok"] and not errors else 1
