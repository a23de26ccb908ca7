"""dispatch: cluster.name is the job name, and hydra-submitit-launcher's SLURM keys pass through to
the sbatch file submitit writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import compose_config
from launcher.cli.requests import cluster_of
from launcher.core.dispatch import local_job_alive, make_executor, submit

from conftest import sacct

SLURM_KEYS = {
    "exclude": ("'node17,node18'", "#SBATCH --exclude=node17,node18"),
    "gres": ("gpu:2", "#SBATCH --gres=gpu:2"),
    "mem_per_cpu": ("3G", "#SBATCH --mem-per-cpu=3G"),
    "cpus_per_gpu": (6, "#SBATCH --cpus-per-gpu=6"),
    "gpus_per_task": (1, "#SBATCH --gpus-per-task=1"),
    "mem_per_gpu": ("20G", "#SBATCH --mem-per-gpu=20G"),
    "comment": ("imagenet-prep", "#SBATCH --comment=imagenet-prep"),
}


def sbatch_text(overrides: list[str], tmp_path: Path, step: str = "prepare-train") -> str:
    cluster = cluster_of(compose_config("prepare", ["cluster=slurm", *overrides]))
    executor = make_executor(cluster, tmp_path, step)
    return executor._executor._make_submission_file_text(command="true", uid="x")  # what sbatch receives


def test_hydra_submitit_launcher_slurm_keys_reach_the_sbatch_file(tmp_path):
    overrides = [f"cluster.{key}={value}" for key, (value, _) in SLURM_KEYS.items()]
    text = sbatch_text([*overrides, "cluster.stderr_to_stdout=true", "cluster.mem_gb=null"], tmp_path)
    for key, (_, line) in SLURM_KEYS.items():
        assert line in text, (key, text)
    assert "#SBATCH --error" not in text  # stderr_to_stdout: one log per job


def test_cluster_name_is_the_job_name(tmp_path):
    assert "#SBATCH --job-name=prepare-train" in sbatch_text([], tmp_path / "a")
    assert "#SBATCH --job-name=imnet" in sbatch_text(["cluster.name=imnet"], tmp_path / "b")


@pytest.mark.slurm
def test_keys_reach_a_real_submission(slurm_cluster, tmp_path):
    overrides = ["cluster.name=launcher-keys", "cluster.comment=launcher-test", "cluster.stderr_to_stdout=true"]
    cluster = cluster_of(compose_config("prepare", ["cluster=slurm", "cluster.mem_gb=null", *overrides]))
    (job,) = submit(cluster, tmp_path, "keys", os.getpid, [(["keys"], ())])  # importable in the job
    deadline = time.time() + 180
    while not job.handle.done() and time.time() < deadline:
        time.sleep(2)
    assert isinstance(job.handle.result(), int)
    (script,) = tmp_path.glob("*submission.sh")
    text = script.read_text()
    assert "#SBATCH --job-name=launcher-keys" in text and "#SBATCH --comment=launcher-test" in text
    names = set()
    for _ in range(30):  # accounting lags the job's end by a moment on a busy machine
        names = {r["JobName"] for r in sacct("-j", job.job_id.split("_")[0])}
        if "launcher-keys" in names:
            break
        time.sleep(1)
    assert "launcher-keys" in names, names


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads procfs")
def test_a_local_job_is_alive_only_while_its_controller_runs():
    """A zombie (exited, not reaped yet: after Ctrl-C, init reaps orphans when it gets to them) or an id
    now held by another program is not a running job: status says interrupted, not running."""
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "submitit.local._local"])
    other = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen([sys.executable, "-c", "pass", "submitit.local._local"])
    try:
        deadline = time.time() + 10
        while time.time() < deadline and " Z " not in Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[1][:3]:
            time.sleep(0.02)
        assert local_job_alive(str(controller.pid))
        assert not local_job_alive(str(other.pid))
        assert not local_job_alive(str(zombie.pid))
        assert not local_job_alive("not-a-pid")
    finally:
        for process in (controller, other, zombie):
            process.kill()
            process.wait()
    assert not local_job_alive(str(controller.pid))
