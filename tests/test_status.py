"""status: one line per split for a run of many units, every unit on request, JSON for scripts, the
job that ran each unit, interrupted units after Ctrl-C, SLURM's pending reasons; unit logs and the
ledger's resolved config; a failed verify shows as failed (verdict, count of problems, report;
non-zero exit), and on SLURM its report job fails, so sacct and afterok dependants see it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.core.layout import read_json, read_lines

from conftest import cli, dataset_overrides, launch, sacct, storage_overrides

MANY = ["prepare.train_shards=12", "prepare.val_shards=6"]


def many_units_root(archives, tmp_path, cluster="local"):
    result = archives("uneven")  # 24 classes
    root = tmp_path / "root"
    overrides = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result)]
    assert launch("prepare", [*overrides, f"cluster={cluster}", "cluster.workers=2", *MANY]) == 0
    return result, root, overrides


def ledger(root) -> list[dict]:
    return [json.loads(line) for line in (root / ".launcher" / "ledger.jsonl").read_text().splitlines()]


def test_status_of_many_units_is_one_line_per_split(archives, tmp_path, capsys):
    result, root, overrides = many_units_root(archives, tmp_path)
    capsys.readouterr()
    assert launch("status", overrides) == 0
    out = capsys.readouterr().out
    train_images = sum(result.train_counts.values())
    assert re.search(rf"^  train\s+14/14 complete; {train_images} images, [\d.]+ [KM]B done$", out, re.M), out
    assert re.search(rf"^  val\s+8/8 complete; {len(result.val_wnids)} images", out, re.M), out
    assert re.search(r"^  common\s+2/2 complete; [\d.]+ KB done$", out, re.M), out  # meta, md5-devkit
    assert "train-0003-of-0012" not in out, "one line per split, not a row per unit"
    assert f"root {root} (dataset=synthetic, storage.format=folder); ledger" in out


def test_status_units_shows_the_job_that_ran_each_unit(archives, tmp_path, capsys):
    _, root, overrides = many_units_root(archives, tmp_path)
    capsys.readouterr()
    assert launch("status", [*overrides, "status.units=true"]) == 0
    out = capsys.readouterr().out
    jobs = {j["job_id"] for j in ledger(root)[-1]["jobs"]}
    for i in range(12):
        uid = f"train-{i:04d}-of-0012"
        ran = read_json(root / ".launcher" / "units" / f"{uid}.json")["job"]
        assert ran in jobs
        assert re.search(rf"^{uid}\s+complete\s+{ran}\s", out, re.M), out


def test_status_json_parses_and_counts(archives, tmp_path, capsys):
    _, root, overrides = many_units_root(archives, tmp_path)
    capsys.readouterr()
    assert launch("status", [*overrides, "status.json=true"]) == 0
    report = json.loads(capsys.readouterr().out)
    prepare = report["commands"]["prepare"]
    assert report["ok"] is True and prepare["counts"] == {"complete": 2 + 14 + 8}
    assert report["dataset"] == "synthetic" and report["format"] == "folder" and report["root"] == str(root)
    assert prepare["splits"]["train"]["counts"] == {"complete": 14} and prepare["splits"]["train"]["units"] == 14
    assert len(prepare["units"]) == 24 and {u["state"] for u in prepare["units"]} == {"complete"}


def test_ledger_keeps_the_resolved_config_and_resubmit_reproduces_it(archives, tmp_path, monkeypatch, capsys):
    """storage.root comes from $LAUNCHER_DATA; the ledger and the resubmit line carry the resolved path."""
    result = archives("tiny")
    data = tmp_path / "data"
    monkeypatch.setenv("LAUNCHER_DATA", str(data))
    shutil.copytree(result.archive_dir, data / "archives")
    overrides = [*dataset_overrides(result), "cluster=debug"]
    assert launch("prepare", overrides) == 0
    entry = ledger(data / "imagenet")[-1]
    assert entry["config"]["storage"]["root"] == str(data / "imagenet")
    assert entry["config"]["storage"]["archive_dir"] == str(data / "archives")
    assert entry["config"]["dataset"]["name"] == "synthetic" and entry["config"]["cluster"]["executor"] == "debug"
    (data / "imagenet" / ".launcher" / "units" / "train-0000-of-0003.json").unlink()  # as if the unit had failed
    capsys.readouterr()
    launch("status", [])
    out = capsys.readouterr().out
    assert f"storage.root={data / 'imagenet'}" in out.split("resubmit what is missing with:")[1]


def test_a_unit_log_has_timestamps_duration_and_throughput(archives, tmp_path):
    _, root, _ = many_units_root(archives, tmp_path)
    logs = [j["stdout"] for j in ledger(root)[-1]["jobs"]]
    text = "".join(open(p).read() for p in logs)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO"
    assert re.search(rf"^{stamp} unit train-\d{{4}}-of-0012 \(train\) started: reads [\d.]+ KB$", text, re.M), text
    rate = r"\([\d.]+ [KM]B/s, \d+ images/s\)"
    finished = rf"^{stamp} unit train-\d{{4}}-of-0012 finished: \d+ images, [\d.]+ KB in [\d.]+s {rate}$"
    assert re.search(finished, text, re.M), text


def test_units_say_interrupted_after_ctrl_c(archives, tmp_path):
    """Ctrl-C (SIGINT to the foreground process group) while local jobs start: status says interrupted."""
    result = archives("uneven")
    root = tmp_path / "root"
    args = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=local"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen(
        [sys.executable, "-m", "launcher", "prepare", *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    ledger_file = root / ".launcher" / "ledger.jsonl"
    end = time.time() + 120
    while not ledger_file.exists() and time.time() < end and run.poll() is None:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGINT)
    out = run.communicate(timeout=120)[0].decode()
    assert run.returncode == 130, out
    time.sleep(1)
    status = cli("status", *args)
    assert "interrupted" in status.stdout and "unknown" not in status.stdout, status.stdout
    assert "resubmit what is missing with" in status.stdout, status.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_status_shows_slurm_pending_reasons(slurm_cluster, archives, tmp_path):
    """One array task at a time (%1) and finalize jobs behind afterok: squeue's reasons show in status."""
    result = archives("uneven")
    root = tmp_path / "root"
    args = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result)]
    args += ["cluster=slurm", "cluster.timeout_min=10", "cluster.mem_gb=1", "cluster.array_parallelism=1"]
    run = cli("prepare", *args, *MANY)
    assert run.returncode == 0, run.stdout + run.stderr
    try:
        status = cli("status", *args)
        lines = [line for line in status.stdout.splitlines() if line.startswith("  train")]
        assert lines and re.search(r"queued \(.*(Dependency|JobArrayTaskLimit)", lines[0]), status.stdout
        report = json.loads(cli("status", *args, "status.json=true").stdout)
        reasons = {u["reason"] for u in report["commands"]["prepare"]["units"]}
        assert reasons & {"Dependency", "JobArrayTaskLimit"}, reasons
    finally:
        arrays = {j["job_id"].split("_")[0] for j in ledger(root)[-1]["jobs"]}
        subprocess.run(["scancel", *arrays], check=False)


def test_a_running_split_shows_rate_eta_and_pending_reasons():
    """The line of a split half done: rate from the units finished since the submission, ETA from
    the bytes left, SLURM's reasons beside the queued count."""
    from launcher.core.status import UnitStatus, part_line, summarize_part

    since = 1000.0
    done = [
        UnitStatus(f"train-000{i}-of-0008", "train", "complete", size=100, images=10, bytes=100, started=since + 10 * i)
        for i in range(4)
    ]
    for s in done:
        s.wall_s = 10.0
    running = [UnitStatus("train-0004-of-0008", "train", "running", size=100)]
    queued = [
        UnitStatus(f"train-000{i}-of-0008", "train", "queued", size=100, reason="JobArrayTaskLimit") for i in (5, 6)
    ]
    queued.append(UnitStatus("finalize-train", "train", "queued", size=0, reason="Dependency"))
    part = summarize_part("train", done + running + queued, since, now=since + 40)
    assert part.counts == {"complete": 4, "running": 1, "queued": 3}
    assert part.images == 40 and part.bytes == 400 and part.rate_bytes_s == 10.0
    assert part.eta_s == 30.0  # 300 bytes left at 400 bytes per 40 s
    line = part_line(part)
    assert line == (
        "4/8 complete, 1 running, 3 queued (Dependency 1, JobArrayTaskLimit 2); 40 images, 400 B done; 10 B/s; ETA 30s"
    ), line


def test_a_split_whose_units_failed_has_no_eta():
    """Nothing runs or waits: no rate, no ETA (they would only grow with the time since)."""
    from launcher.core.status import UnitStatus, part_line, summarize_part

    since = 1000.0
    done = UnitStatus("train-0000-of-0002", "train", "complete", size=100, images=10, bytes=100, started=since)
    done.wall_s = 10.0
    failed = [UnitStatus(u, "train", "failed", size=100) for u in ("train-0001-of-0002", "md5-train")]
    part = summarize_part("train", [done, *failed], since, now=since + 600)
    assert part.eta_s is None and part.rate_bytes_s is None
    assert part_line(part) == "1/3 complete, 2 failed; 10 images, 100 B done"


def test_a_failed_units_log_tail_leaves_out_traceback_frames(tmp_path):
    """The unit's own error line, then the exception, fit in the tail; the frames between are one line."""
    from launcher.core.status import log_tail

    frames = [f'  File "/x/mod{i}.py", line {i}, in f{i}\n    call{i}()\n' for i in range(12)]
    log = tmp_path / "job_log.err"
    log.write_text(
        "2026-12-02 22:54:15,141 ERROR unit md5-train failed after 0.03s: md5 mismatch for a.tar\n"
        "Traceback (most recent call last):\n" + "".join(frames) + "launcher.units.UnitsFailed: 1 of 1 units failed:\n"
        "  md5-train: md5 mismatch for a.tar\n"
        "srun: error: vm: task 0: Exited with exit code 1\n"
    )
    assert log_tail(str(log), 6).splitlines() == [
        "2026-12-02 22:54:15,141 ERROR unit md5-train failed after 0.03s: md5 mismatch for a.tar",
        "Traceback (24 lines of frames left out)",
        "launcher.units.UnitsFailed: 1 of 1 units failed:",
        "  md5-train: md5 mismatch for a.tar",
        "srun: error: vm: task 0: Exited with exit code 1",
    ]
    assert log_tail(str(log), 2).splitlines()[0] == "  md5-train: md5 mismatch for a.tar"
    assert log_tail(str(tmp_path / "missing.err"), 5) == ""


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
