"""status: a failed verify shows as failed (verdict, count of problems, report; non-zero exit), and
on SLURM its report job fails, so sacct and afterok dependants see it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from launcher.layout import read_lines

from conftest import cli, dataset_overrides, sacct, storage_overrides


def broken_root(archives, tmp_path) -> tuple[list[str], Path]:
    """A prepared root with one train image removed; the overrides that address it."""
    result = archives("tiny")
    root = tmp_path / "root"
    args = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result)]
    assert cli("prepare", *args, "cluster=debug").returncode == 0
    next((root / "train").glob("*/*.JPEG")).unlink()
    return args, root


def test_status_of_a_failed_verify_says_so_and_fails(archives, tmp_path):
    args, root = broken_root(archives, tmp_path)
    assert cli("verify", *args, "cluster=debug", "verify.level=exists").returncode == 1
    run = cli("status", f"storage.root={root}")
    assert run.returncode == 1, run.stdout + run.stderr
    report = root / ".launcher" / "verify-all.json"
    assert re.search(rf"verify: FAILED, [1-9]\d* problems; report {re.escape(str(report))}\n", run.stdout), run.stdout


def test_status_of_a_passed_verify_says_ok(archives, tmp_path):
    result = archives("tiny")
    args = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result), "cluster=debug"]
    assert cli("prepare", *args).returncode == 0
    assert cli("verify", *args, "verify.level=exists").returncode == 0
    run = cli("status", f"storage.root={tmp_path / 'root'}")
    assert run.returncode == 0 and "verify: ok, no problems; report" in run.stdout, run.stdout


def wait_for_jobs(job_ids: list[str], timeout: float = 300) -> dict[str, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = {r["JobID"]: r for r in sacct("-j", ",".join(job_ids))}
        if all(j in rows and rows[j]["State"] not in ("PENDING", "RUNNING", "REQUEUED") for j in job_ids):
            return rows
        time.sleep(2)
    pytest.fail(f"jobs {job_ids} did not finish in {timeout}s")


@pytest.mark.slurm
def test_failed_verify_on_slurm_fails_the_report_job(archives, slurm_cluster, tmp_path):
    args, root = broken_root(archives, tmp_path)
    run = cli("verify", *args, "cluster=slurm", "verify.level=exists", "cluster.mem_gb=null")
    assert run.returncode == 0, run.stderr  # submitted, not waited for
    entry = read_lines(root / ".launcher" / "ledger.jsonl")[-1]
    report_job = next(j["job_id"] for j in entry["jobs"] if j["units"] == ["verify-report"])
    rows = wait_for_jobs([j["job_id"] for j in entry["jobs"]])
    assert rows[report_job]["State"] == "FAILED" and rows[report_job]["ExitCode"] != "0:0", rows
    status = cli("status", f"storage.root={root}")
    assert status.returncode == 1, status.stdout
    report = re.escape(str(root / ".launcher" / "verify-all.json"))
    assert re.search(rf"verify: FAILED, [1-9]\d* problems; report {report}\n", status.stdout), status.stdout
