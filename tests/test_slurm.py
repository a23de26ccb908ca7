"""Dispatch on a real SLURM cluster (slurm/devcluster.sh): arrays, non-blocking submit, status,
requeue and preemption, failures and resubmission."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.core.layout import read_json

from archive_tools import copy_archives, rewrite_class, tar_bytes
from conftest import REPO, cli, dataset_overrides, sacct, storage_overrides, tree_bytes
from test_prepare import assert_same_as_oracle
from test_tarprepare import assert_same_as_torchvision, loader_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SLURM = ["cluster=slurm", "cluster.timeout_min=10", "cluster.mem_gb=1", "cluster.poll_s=1"]


def args(result, root, *extra, archive_dir=None):
    return [*storage_overrides(archive_dir or result.archive_dir, root), *dataset_overrides(result), *SLURM, *extra]


def ledger_job_ids(root) -> list[str]:
    lines = (root / ".launcher" / "ledger.jsonl").read_text().splitlines()
    return [j["job_id"] for j in json.loads(lines[-1])["jobs"]]


def wait_until(predicate, timeout=180, step=1.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_prepare_on_slurm_uses_arrays_and_equals_torchvision(slurm_cluster, archives, oracle, tmp_path):
    root = tmp_path / "root"
    extra = ["wait=true", "prepare.train_shards=5", "prepare.val_shards=2", "cluster.max_array_size=3"]
    run = cli("prepare", *args(archives(), root, *extra))
    assert run.returncode == 0, run.stdout + run.stderr
    assert_same_as_oracle(root, oracle())
    ids = ledger_job_ids(root)
    entry = json.loads((root / ".launcher" / "ledger.jsonl").read_text().splitlines()[-1])
    train_arrays = {j["job_id"].split("_")[0] for j in entry["jobs"] if j["units"][0].startswith("train-")}
    assert len(train_arrays) == 2, "5 train units with MaxArraySize 3 go out as two arrays"
    arrays = {j.split("_")[0] for j in ids if "_" in j}
    assert arrays, f"no job arrays among {ids}"
    for array in arrays:
        rows = [r for r in sacct("-X", "-j", array) if r["JobID"].startswith(array + "_")]
        assert rows and all(r["State"] == "COMPLETED" for r in rows), rows
    status = cli("status", *args(archives(), root))
    assert status.returncode == 0 and "failed" not in status.stdout and "complete" in status.stdout


def test_non_blocking_submit_then_status(slurm_cluster, archives, oracle, tmp_path):
    root = tmp_path / "root"
    start = time.time()
    run = cli("prepare", *args(archives(), root))
    assert run.returncode == 0, run.stderr
    assert "submitted" in run.stdout and "launcher status" in run.stdout and "logs in" in run.stdout
    assert not (root / ".launcher" / "complete-val.json").exists(), "returned only after the work was done"
    assert time.time() - start < 30
    entry = json.loads((root / ".launcher" / "ledger.jsonl").read_text())
    finalize = next(j["job_id"] for j in entry["jobs"] if j["units"] == ["finalize-val"])
    shown = subprocess.run(["scontrol", "show", "job", finalize], capture_output=True, text=True).stdout
    assert "Dependency=afterok:" in shown or "JobState=COMPLETED" in shown, shown
    early = cli("status", *args(archives(), root))
    assert early.returncode == 0 and ("queued" in early.stdout or "running" in early.stdout)
    assert wait_until(
        lambda: (
            (root / ".launcher" / "complete-val.json").exists()
            and (root / ".launcher" / "complete-train.json").exists()
        )
    )
    final = cli("status", *args(archives(), root))
    assert final.returncode == 0 and "queued" not in final.stdout and "running" not in final.stdout
    assert_same_as_oracle(root, oracle())


def running_job(root, unit: str, timeout=120) -> str:
    """The job id of `unit` once its job runs the unit (its log says so)."""

    def find():
        for line in (root / ".launcher" / "ledger.jsonl").read_text().splitlines():
            for job in json.loads(line)["jobs"]:
                stdout = job["stdout"]
                if unit in job["units"] and os.path.exists(stdout) and f"unit {unit} (" in open(stdout).read():
                    return job["job_id"]
        return None

    assert wait_until(lambda: find() is not None, timeout=timeout, step=0.1), f"unit {unit} never started"
    return find()


SLOW_UNIT = """
# Test harness only (on PYTHONPATH of the jobs): the real ImageNet's units run for minutes; here a
# train unit is made to last a few seconds on its first attempt, so that a signal finds it running.
import os, time
if os.environ.get("LAUNCHER_TEST_SLOW_S") and not int(os.environ.get("SLURM_RESTART_COUNT") or 0):
    import launcher.archive.extract as extract

    def slow(*args, _extract=extract.extract_train, **kwargs):
        time.sleep(float(os.environ["LAUNCHER_TEST_SLOW_S"]))
        return _extract(*args, **kwargs)

    extract.extract_train = slow
"""


@pytest.mark.parametrize("how", ["requeue", "preempt-signal"])
def test_requeued_or_preempted_unit_completes(how, slurm_cluster, archives, oracle, tmp_path):
    """A unit interrupted mid-run by `scontrol requeue`, or by the USR2 that SLURM sends before a
    preemption (submitit checkpoints and requeues the job), still completes; the root is identical."""
    harness = tmp_path / "harness"
    harness.mkdir()
    (harness / "sitecustomize.py").write_text(SLOW_UNIT)
    env = {"PYTHONPATH": str(harness), "LAUNCHER_TEST_SLOW_S": "6"}
    root = tmp_path / "root"
    run = cli("prepare", *args(archives(), root, "prepare.train_shards=2"), env=env)
    assert run.returncode == 0, run.stderr
    job = running_job(root, "train-0000-of-0002")
    time.sleep(1)  # inside the unit now
    if how == "requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert wait_until(
        lambda: (
            (root / ".launcher" / "complete-train.json").exists()
            and (root / ".launcher" / "complete-val.json").exists()
        ),
        timeout=300,
    )
    history = [r for r in sacct("-D", "-X", "-j", job.split("_")[0]) if r["JobID"] == job]
    assert len(history) >= 2 and history[0]["State"] in ("REQUEUED", "PREEMPTED"), history
    assert_same_as_oracle(root, oracle())


def test_failed_unit_is_reported_and_resubmitted_alone(slurm_cluster, archives, oracle, tmp_path):
    result = archives()
    broken = copy_archives(result, tmp_path / "archives")
    good = (broken / "ILSVRC2012_img_train.tar").read_bytes()
    bad_class = rewrite_class(broken, 3, lambda images: tar_bytes(images)[:2000])
    root = tmp_path / "root"
    # the rewritten tar has another md5: do not check it for this test
    extra = ["dataset.archives.train.md5=null", "prepare.train_shards=3", "wait=true"]
    run = cli("prepare", *args(result, root, *extra, archive_dir=broken))
    assert run.returncode == 1
    status = cli("status", *args(result, root, archive_dir=broken))
    assert status.returncode == 1
    assert "failed" in status.stdout and f"member {bad_class}" in status.stdout and "resubmit" in status.stdout
    records = root / ".launcher" / "units"
    assert (records / "val-0000-of-0001.json").exists() and (records / "meta.json").exists()
    done_before = sorted(p.name for p in records.glob("train-*.json"))
    assert len(done_before) == 2
    extracted = {d.name: d.stat().st_mtime_ns for d in (root / "train").iterdir()}
    assert bad_class[:-4] not in extracted
    (broken / "ILSVRC2012_img_train.tar").write_bytes(good)
    rerun = cli("prepare", *args(result, root, *extra, archive_dir=broken))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    last = json.loads((root / ".launcher" / "ledger.jsonl").read_text().splitlines()[-1])
    resubmitted = {u for j in last["jobs"] for u in j["units"]}
    assert resubmitted and not resubmitted & {"meta", "val-0000-of-0001", "finalize-val"}, resubmitted
    # the train tar is another file now (its identity changed), so train is prepared again from it
    # whole: classes of the old file are not kept (same names and sizes cannot prove the same bytes)
    assert all((root / "train" / d).stat().st_mtime_ns != t for d, t in extracted.items())
    assert tree_bytes(root) == tree_bytes(oracle())
    assert read_json(root / ".launcher" / "complete-train.json")["images"] == sum(result.train_counts.values())


@pytest.mark.faults
def test_cancelled_array_task_then_rerun_completes_only_the_missing(slurm_cluster, archives, oracle, tmp_path):
    """A node 'fails': one array task is cancelled; the split's finalize job never runs (afterok);
    a rerun submits the missing unit and finalize only."""
    root = tmp_path / "root"
    run = cli("prepare", *args(archives(), root, "prepare.train_shards=3"))
    assert run.returncode == 0, run.stderr
    train = next(
        j
        for j in json.loads((root / ".launcher" / "ledger.jsonl").read_text())["jobs"]
        if j["units"] == ["train-0001-of-0003"]
    )
    subprocess.run(["scancel", train["job_id"]], check=True)
    assert wait_until(lambda: (root / ".launcher" / "complete-val.json").exists())
    assert wait_until(
        lambda: not subprocess.run(["squeue", "-h", "-u", "root"], capture_output=True, text=True).stdout.strip(),
        timeout=120,
    )
    assert not (root / ".launcher" / "complete-train.json").exists()
    status = cli("status", *args(archives(), root))
    assert "train-0001-of-0003" in status.stdout and status.returncode == 1
    rerun = cli("prepare", *args(archives(), root, "prepare.train_shards=3", "wait=true"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    last = json.loads((root / ".launcher" / "ledger.jsonl").read_text().splitlines()[-1])
    assert sorted(u for j in last["jobs"] for u in j["units"]) == ["train-0001-of-0003"]  # finalized here
    assert_same_as_oracle(root, oracle())


@pytest.mark.faults
def test_login_side_killed_while_waiting_then_status_and_rerun_recover(slurm_cluster, archives, oracle, tmp_path):
    import signal

    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "launcher", "prepare", *args(archives(), root, "wait=true")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_until(lambda: (root / ".launcher" / "ledger.jsonl").exists(), timeout=60, step=0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status = cli("status", *args(archives(), root))
    assert status.returncode == 0 and "prepare: submitted" in status.stdout
    rerun = cli("prepare", *args(archives(), root, "wait=true"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_same_as_oracle(root, oracle())
    final = cli("status", *args(archives(), root))
    assert final.returncode == 0 and "queued" not in final.stdout and "failed" not in final.stdout


def test_max_array_size_comes_from_scontrol(slurm_cluster):
    from launcher.config.schema import SlurmClusterConfig
    from launcher.core.backends import backend_of
    from launcher.core.dispatch import max_array_size

    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    expected = int(next(line.split("=")[1] for line in shown.splitlines() if line.startswith("MaxArraySize")))
    assert max_array_size(backend_of(SlurmClusterConfig())) == expected
    assert max_array_size(backend_of(SlurmClusterConfig(max_array_size=7))) == 7


@pytest.mark.parametrize("storage_format", ["folder", "tar"])
def test_training_example_on_two_ranks(storage_format, slurm_cluster, archives, tmp_path):
    """slurm/train_example.sbatch: 2 ranks stage the root once (storage.format=tar: its archives and
    indexes, no image file), then see every val image once."""
    result = archives()
    shared = tmp_path / "shared"
    fmt = [f"storage.format={storage_format}", f"storage.archive_dir={result.archive_dir}"]
    prepare = [*storage_overrides(result.archive_dir, shared), *dataset_overrides(result), "cluster=debug", *fmt]
    assert cli("prepare", *prepare).returncode == 0
    local = tmp_path / "node-local" / "imagenet"
    out = tmp_path / "job.out"
    run = subprocess.run(
        [
            "sbatch",
            "--wait",
            f"--output={out}",
            "--mem-per-cpu=1G",
            "slurm/train_example.sbatch",
            f"storage.root={shared}",
            *fmt,
            "loader.batch_size=4",
            "loader.num_workers=0",
            "loader.drop_last=false",
            "transform.train_crop_size=32",
            "transform.eval_crop_size=32",
        ],
        cwd=REPO,
        env={**os.environ, "STAGE_TO": str(local)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = out.read_text() if out.exists() else ""
    assert run.returncode == 0, run.stderr + log
    n_train, n_val = sum(result.train_counts.values()), len(result.val_wnids)
    counts = re.search(r"ranks=2 train images/epoch=(\d+) val images=(\d+)", log)
    assert counts, log
    assert int(counts.group(2)) == n_val
    assert n_train <= int(counts.group(1)) <= n_train + 1  # DistributedSampler pads train to even shares
    if storage_format == "folder":
        assert (local / "meta.bin").exists() and tree_bytes(local) == tree_bytes(shared)
        return
    staged = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"meta.bin", "archives/ILSVRC2012_img_train.tar", "archives/ILSVRC2012_img_val.tar"} <= staged
    assert {".launcher/tarindex-train.bin", ".launcher/tarindex-val.bin"} <= staged
    assert not [p for p in staged if p.endswith(".JPEG")]  # no image file anywhere: read from the archives


SHARD_PROBE = """\
import os, sys
from launcher import training_config
from launcher.data import build_loader

cfg = training_config([f"storage.root={sys.argv[1]}", "loader.batch_size=2", "loader.num_workers=0"])
val = build_loader(cfg, "val")
s = val.sampler
print(f"task {os.environ['SLURM_PROCID']} rank {s.rank} world {s.world_size} val {len(s)} of {len(val.dataset)}")
"""


@pytest.mark.parametrize("start", ["python", "srun python"])
def test_sharding_follows_how_the_tasks_were_started(start, slurm_cluster, archives, tmp_path):
    """`sbatch --ntasks=2 --wrap 'python ...'` is one process with SLURM_PROCID=0 SLURM_NTASKS=2:
    the whole split and one line on stderr saying why; under srun the two tasks shard it."""
    result = archives()
    root = tmp_path / "root"
    overrides = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
    assert cli("prepare", *overrides).returncode == 0
    (tmp_path / "probe.py").write_text(SHARD_PROBE)
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    run = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "--mem-per-cpu=1G",
            f"--output={out}",
            f"--error={err}",
            f"--wrap={start.replace('python', sys.executable)} {tmp_path / 'probe.py'} {root}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log, errors = out.read_text() if out.exists() else "", err.read_text() if err.exists() else ""
    assert run.returncode == 0, run.stderr + log + errors
    n_val = len(result.val_wnids)
    lines = sorted(line for line in log.splitlines() if line.startswith("task "))
    if start == "python":
        assert lines == [f"task 0 rank 0 world 1 val {n_val} of {n_val}"]
        notes = [line for line in errors.splitlines() if line.startswith("launcher.data:")]
        assert len(notes) == 1 and "SLURM_NTASKS=2" in notes[0] and "srun" in notes[0], errors
    else:
        shares = [len(range(r, n_val, 2)) for r in (0, 1)]
        assert lines == [f"task {r} rank {r} world 2 val {shares[r]} of {n_val}" for r in (0, 1)], log + errors
        assert "launcher.data:" not in errors


def test_waiting_verify_on_slurm_prints_job_ids_and_log_folder(slurm_cluster, archives, tmp_path):
    """Issue 15 point 5 on SLURM: with wait=true verify says its jobs and where their logs are, as
    prepare does (the README's transcript checks prepare's line)."""
    root = tmp_path / "root"
    base = [*storage_overrides(archives("tiny").archive_dir, root), *dataset_overrides(archives("tiny"))]
    assert cli("prepare", *base, "cluster=debug").returncode == 0
    run = cli("verify", *base, *SLURM, "wait=true", "verify.level=exists")
    assert run.returncode == 0, run.stdout + run.stderr
    line = re.search(r"^submitted \d+ jobs to slurm \(job ids (\d+(?:, \d+)*)\); logs in (\S+)$", run.stdout, re.M)
    assert line, run.stdout
    folder = tmp_path / "root" / ".launcher" / "logs"
    assert line.group(2).startswith(str(folder / "verify-")), line.group(2)
    assert {r["JobID"].split("_")[0] for r in sacct("-X", "-j", line.group(1).replace(" ", ""))} == set(
        line.group(1).split(", ")
    )


# ---------------------------------------------------------------- storage.format=tar on SLURM

TAR = "storage.format=tar"
NO_MD5 = [f"dataset.archives.{k}.md5=null" for k in ("devkit", "train", "val")]


def last_ledger_entry(root) -> dict:
    return json.loads((root / ".launcher" / "ledger.jsonl").read_text().splitlines()[-1])


def job_of_units(entry: dict) -> dict[str, str]:
    """unit id -> the job (or array task) that ran it, as the ledger line says."""
    return {unit: job["job_id"] for job in entry["jobs"] for unit in job["units"]}


def all_completed(job_ids) -> list[dict]:
    """The sacct rows of the jobs and array tasks given, each asserted COMPLETED (sacct may show a
    task a few seconds after it ended: slurmdbd records it asynchronously)."""
    wanted = set(job_ids)
    arrays = ",".join(sorted({j.split("_")[0] for j in wanted}))

    def rows():
        return [r for r in sacct("-X", "-j", arrays) if r["JobID"] in wanted]

    wait_until(lambda: len(rows()) == len(wanted) and all(r["State"] == "COMPLETED" for r in rows()), timeout=30)
    found = rows()
    assert len(found) == len(wanted) and all(r["State"] == "COMPLETED" for r in found), found
    return found


def split_lines(status_out: str) -> dict[str, str]:
    return {line.split()[0]: line.strip() for line in status_out.splitlines() if line.startswith("  ")}


def test_tar_prepare_with_md5s_on_slurm_is_one_job_per_split(slurm_cluster, archives, tmp_path):
    """md5s set: each split is one tarindex job hashing and indexing its archive in one read; not
    waiting, the tarfinal units go out as jobs that wait for them (afterok). sacct says every job
    COMPLETED; status reads each split complete and names the root's format."""
    result = archives()
    root = tmp_path / "root"
    run = cli("prepare", *args(result, root, TAR))
    assert run.returncode == 0 and "submitted" in run.stdout, run.stdout + run.stderr
    state = root / ".launcher"
    assert wait_until(lambda: all((state / f"complete-{s}.json").exists() for s in ("train", "val")), timeout=120)
    jobs = job_of_units(last_ledger_entry(root))
    units = ["train-index-0000-of-0001", "val-index-0000-of-0001", "finalize-train", "finalize-val"]
    assert set(units) <= set(jobs), jobs
    all_completed(jobs.values())
    assert len({jobs[u].split("_")[0] for u in units}) == 4, jobs
    folder = Path(last_ledger_entry(root)["folder"])
    for final in units[2:]:
        assert "#SBATCH --dependency=afterok:" in (folder / f"{jobs[final]}_submission.sh").read_text()
    for split in ("train", "val"):
        record = read_json(state / "units" / f"{split}-index-0000-of-0001.json")
        assert record["md5"] == result.md5[split] and record["job"] == jobs[f"{split}-index-0000-of-0001"]
    status = cli("status", *args(result, root, TAR))
    assert status.returncode == 0, status.stdout + status.stderr
    lines = split_lines(status.stdout)
    assert lines["train"].startswith(f"train   2/2 complete; {sum(result.train_counts.values())} images"), lines
    assert lines["val"].startswith(f"val     2/2 complete; {len(result.val_wnids)} images"), lines
    assert "storage.format=tar)" in status.stdout


def test_tar_prepare_by_ranges_on_slurm_then_verify_and_load(slurm_cluster, archives, oracle, tmp_path):
    """No md5: byte-range units as job arrays run 2 at a time (array_parallelism); status reads each
    split complete; verify.level=decode runs as an array on the tar root and passes; a loader built
    from the same config gives torchvision's ImageNet of a folder root of the same archives."""
    result = archives()
    root = tmp_path / "root"
    ranges = ["prepare.train_shards=4", "prepare.val_shards=3", "cluster.array_parallelism=2", "wait=true"]
    run = cli("prepare", *args(result, root, TAR, *NO_MD5, *ranges))
    assert run.returncode == 0, run.stdout + run.stderr
    entry = last_ledger_entry(root)
    jobs = job_of_units(entry)
    for split, n in (("train", 4), ("val", 3)):
        tasks = [jobs[f"{split}-index-{i:04d}-of-{n:04d}"] for i in range(n)]
        array = tasks[0].split("_")[0]
        assert sorted(tasks) == [f"{array}_{i}" for i in range(n)], tasks
        assert f"#SBATCH --array=0-{n - 1}%2" in (Path(entry["folder"]) / f"{array}_submission.sh").read_text()
        all_completed(tasks)
    status = cli("status", *args(result, root, TAR, *NO_MD5))
    lines = split_lines(status.stdout)
    assert (
        status.returncode == 0
        and lines["train"].startswith("train   5/5 complete")
        and lines["val"].startswith("val     4/4 complete")
    ), status.stdout
    verify = cli("verify", *args(result, root, TAR, *NO_MD5, "wait=true", "verify.level=decode", "verify.shards=1"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = read_json(root / ".launcher" / "verify-all.json")
    assert report["ok"] and {s: c["checked"] for s, c in report["counts"].items()} == {
        "train": sum(result.train_counts.values()),
        "val": len(result.val_wnids),
    }
    checked = job_of_units(last_ledger_entry(root))
    shards = [checked.get(f"verify-{split}-decode-0000-of-0001", "") for split in ("train", "val")]
    assert len({j.split("_")[0] for j in shards}) == 1 and all("_" in j for j in shards), checked
    all_completed([*shards, checked["verify-report"]])
    from launcher import data as D

    cfg = loader_config(result, root, *NO_MD5, *SLURM, "loader.num_workers=0", "loader.batch_size=7")
    for split in ("train", "val"):
        loader = D.build_loader(cfg, split, D.build_dataset(cfg, split, transform=D.build_transforms({}, False)))
        assert_same_as_torchvision(loader.dataset, root, oracle(), split)
    val = D.build_loader(cfg, "val", D.build_dataset(cfg, "val", transform=D.build_transforms({}, False)))
    assert [t for _, y in val for t in y.tolist()] == val.dataset.targets
