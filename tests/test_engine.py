"""The job graph a plan becomes, checked without a cluster: arrays, afterok, parameters, array
size; beside test_slurm.py, which submits the same graphs to the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher import compose_config
from launcher.cli.requests import cluster_of, prepare_request, verify_request
from launcher.core import engine, plan
from launcher.prepare.plan import make_plan
from launcher.prepare.run import work_of

from conftest import REPO, dataset_overrides, launch, storage_overrides

SLURM = ["cluster=slurm", "cluster.max_array_size=3", "cluster.array_parallelism=4", "cluster.partition=cpu"]
SLURM += ["cluster.mem_gb=2", "cluster.timeout_min=30", "prepare.train_shards=5", "prepare.val_shards=2"]


def prepare_graph(archives, tmp_path, *overrides, active=None):
    result = archives()
    base = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    cfg = compose_config("prepare", [*base, *overrides])
    req, backend = prepare_request(cfg), cluster_of(cfg)
    p = make_plan(req, backend.parallelism, backend.min_unit_bytes(plan.MIN_SHARD_BYTES))
    work = work_of(p, tmp_path / "logs")
    return backend, work, engine.job_graph(backend, "prepare", work, active)


def by_name(graph) -> dict[str, engine.Submission]:
    return {sub.name: sub for sub in graph}


def task_units(sub: engine.Submission) -> list[list[str]]:
    return [task for array in sub.arrays for task in array]


def test_prepare_all_on_slurm_is_arrays_per_split_then_finalize_after_them(archives, tmp_path):
    _, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false")
    names = [sub.name for sub in graph]
    assert names == ["prepare-common", "prepare-train", "prepare-train-finalize", "prepare-val", "prepare-val-finalize"]
    subs = by_name(graph)
    assert task_units(subs["prepare-common"]) == [["meta"], ["md5-devkit"]]
    train = subs["prepare-train"]
    assert [len(a) for a in train.arrays] == [3, 3]  # 5 shards + md5-train, cut to MaxArraySize 3
    assert sorted(t[0] for t in task_units(train)) == ["md5-train"] + [f"train-{i:04d}-of-0005" for i in range(5)]
    assert [len(a) for a in subs["prepare-val"].arrays] == [3]  # 2 ranges + md5-val
    for split in ("train", "val"):
        fin = subs[f"prepare-{split}-finalize"]
        assert fin.after == ("prepare-common", f"prepare-{split}") and fin.after_jobs == ()
        assert fin.tasks == 1
    for sub in graph:
        assert all(len(task) == 1 for task in task_units(sub))  # one unit per array task
        p = sub.parameters
        assert p["name"] == sub.name and p["timeout_min"] == 30 and p["mem_gb"] == 2 and p["cpus_per_task"] == 1
        assert p["slurm_partition"] == "cpu" and p["slurm_array_parallelism"] == 4
        assert "slurm_dependency" not in p  # job ids are known at submission: `after` names them
    assert all(not sub.after for sub in graph if not sub.name.endswith("-finalize"))


@pytest.mark.parametrize("split,other", [("train", "val"), ("val", "train")])
def test_prepare_one_split_on_slurm_has_only_its_arrays(archives, tmp_path, split, other):
    _, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false", f"split={split}")
    assert [sub.name for sub in graph] == ["prepare-common", f"prepare-{split}", f"prepare-{split}-finalize"]
    ids = {uid for sub in graph for task in task_units(sub) for uid in task}
    assert not {uid for uid in ids if uid.startswith((f"{other}-", f"md5-{other}"))}
    assert by_name(graph)[f"prepare-{split}-finalize"].after == ("prepare-common", f"prepare-{split}")


def test_prepare_waiting_on_slurm_finalizes_here(archives, tmp_path):
    _, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=true")
    assert [sub.name for sub in graph] == ["prepare-common", "prepare-train", "prepare-val"]


def test_units_still_queued_are_not_submitted_again_and_finalize_waits_for_their_jobs(archives, tmp_path):
    active = {"train-0002-of-0005": ("slurm", "/logs", "77_2"), "meta": ("slurm", "/logs", "70_0")}
    _, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false", active=active)
    subs = by_name(graph)
    assert ["train-0002-of-0005"] not in task_units(subs["prepare-train"]) and subs["prepare-train"].tasks == 5
    assert task_units(subs["prepare-common"]) == [["md5-devkit"]]
    assert set(subs["prepare-train-finalize"].after_jobs) == {"77_2", "70_0"}
    assert subs["prepare-val-finalize"].after_jobs == ("70_0",)


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_prepare_elsewhere_is_one_queue_shared_by_the_workers(archives, tmp_path, cluster):
    backend, work, graph = prepare_graph(archives, tmp_path, f"cluster={cluster}", "cluster.poll_s=1")
    (sub,) = graph
    assert sub.name == "prepare" and sub.after == () and len(sub.arrays) == 1
    assert sub.tasks == backend.parallelism if cluster == "local" else sub.tasks == 1
    sizes = {u.id: u.size for u in work.units}
    for task in task_units(sub):  # every job holds the whole queue, largest first
        assert sorted(task) == sorted(u.id for u in work.units if u.kind != "finalize")
        assert [sizes[uid] for uid in task] == sorted((sizes[uid] for uid in task), reverse=True)
    assert "slurm_partition" not in sub.parameters and sub.parameters["name"] == "prepare"


def test_cluster_name_names_every_job(archives, tmp_path):
    _, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false", "cluster.name=imnet")
    assert {sub.parameters["name"] for sub in graph} == {"imnet"}


def test_dry_run_prints_the_job_graph(archives, tmp_path, capsys):
    backend, _, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false")
    result = archives()
    overrides = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    assert launch("prepare", [*overrides, *SLURM, "wait=false", "prepare.dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert engine.describe(backend, graph) in out
    assert "  prepare-train: 2 job arrays of 6 tasks, %4\n" in engine.describe(backend, graph)


def verify_graph(archives, tmp_path, *overrides):
    result = archives("tiny")
    base = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    assert launch("prepare", [*base, "cluster=debug"]) == 0
    cfg = compose_config("verify", [*base, *overrides])
    req, backend = verify_request(cfg), cluster_of(cfg)
    from launcher.check.plan import make_plan as make_verify_plan
    from launcher.check.verify import work_of as verify_work

    p = make_verify_plan(req, backend.parallelism, backend.processes_per_unit())
    return engine.job_graph(backend, "verify", verify_work(req, p, tmp_path / "report.json"))


@pytest.mark.parametrize("wait", ["true", "false"])
def test_verify_on_slurm_is_shards_then_a_report_job_after_them(archives, tmp_path, wait):
    overrides = ["cluster=slurm", "verify.shards=4", "cluster.cpus_per_task=2", f"wait={wait}"]
    graph = verify_graph(archives, tmp_path, *overrides)
    assert [sub.name for sub in graph] == ["verify", "verify-report"]
    shards, report = graph
    assert shards.tasks >= 2 and all(len(t) == 1 for t in task_units(shards)) and shards.after == ()
    assert task_units(report) == [["verify-report"]] and report.after == ("verify",)
    assert shards.parameters["cpus_per_task"] == 2 and shards.parameters["slurm_array_parallelism"] == 64


def test_verify_elsewhere_writes_the_report_here(archives, tmp_path):
    (sub,) = verify_graph(archives, tmp_path, "cluster=local", "cluster.workers=2")
    assert sub.name == "verify" and sub.tasks == 2 and "verify-report" not in task_units(sub)[0]


def test_no_executor_branches_outside_the_backends():
    """What differs between debug, local and SLURM lives in the backend classes (launcher.core.backends)."""
    branch = re.compile(r"executor\s*(==|!=|in\b)|==\s*\"slurm\"|!=\s*\"slurm\"", re.ASCII)
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "launcher").rglob("*.py"))
        if path.relative_to(REPO).as_posix() not in ("launcher/core/dispatch.py", "launcher/core/backends.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def test_graph_tasks_match_the_units_they_run(archives, tmp_path):
    _, work, graph = prepare_graph(archives, tmp_path, *SLURM, "wait=false")
    for sub in graph:
        assert task_units(sub) == [[u.id for u in g] for g in sub.groups]
        assert {u.id for u in sub.units} == {uid for task in task_units(sub) for uid in task}
    assert isinstance(work.folder, Path)
