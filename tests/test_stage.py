"""stage: node-local copies, once per node (local rank 0 copies, the others wait), reuse, resumption."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import test_data
import torchvision
from test_data import ATTRIBUTES

from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json
from launcher.data import build_dataset
from launcher.stage import MARKER, WaitingLock, stage_root

from conftest import cli, dataset_overrides, launch, tree_bytes
from test_prepare import assert_same_as_oracle

prepared = test_data.prepared  # the session fixture of prepared roots, shared


def assert_staged_copy(source, dest):
    assert tree_bytes(dest) == tree_bytes(source)
    assert (dest / "meta.bin").read_bytes() == (source / "meta.bin").read_bytes()
    cfg = {"storage": {"root": str(dest), "state_dir": str(dest / ".launcher")}}
    for split in ("train", "val"):
        assert (dest / ".launcher" / f"manifest-{split}.json").exists()
        ours, theirs = build_dataset(cfg, split), torchvision.datasets.ImageNet(str(dest), split)
        for name in ATTRIBUTES:
            assert getattr(ours, name) == getattr(theirs, name), name


def actions(out: str) -> dict[int, str]:
    """local rank -> what it did, from the command's output."""
    lines = [line.split() for line in out.splitlines() if line.startswith("stage: local rank")]
    return {int(words[3]): words[6] for words in lines}


def copied_once(out: str) -> bool:
    """Local rank 0 copied; the other did not (it waited, or found the copy done when it started)."""
    return actions(out)[0] == "copied" and actions(out)[1] in ("waited", "reused") and len(actions(out)) == 2


def test_two_local_ranks_copy_once_then_reuse(prepared, tmp_path, capsys):
    source, dest = prepared(), tmp_path / "node" / "imagenet"
    args = [f"stage.source={source}", f"storage.root={dest}", "cluster=local", "cluster.tasks_per_node=2"]
    assert launch("stage", [*args, "cluster.poll_s=0.2"]) == 0
    assert copied_once(capsys.readouterr().out)
    assert_staged_copy(source, dest)
    marker = read_json(dest / ".launcher" / MARKER)
    assert marker["state"] == "complete" and marker["files"] == len(tree_bytes(source))
    mtimes = {p: p.stat().st_mtime_ns for p in (dest / "train").rglob("*.JPEG")}
    assert launch("stage", [*args, "cluster.poll_s=0.2"]) == 0
    assert actions(capsys.readouterr().out) == {0: "reused", 1: "reused"}
    assert mtimes == {p: p.stat().st_mtime_ns for p in (dest / "train").rglob("*.JPEG")}


def stage_in_process(source, dest, rank, delay, queue):
    time.sleep(delay)
    result = stage_root(source, dest, local_rank=rank, wait_s=60)
    queue.put((rank, result.action, result.copied_files, time.time()))


def test_other_ranks_wait_for_local_rank_0(prepared, tmp_path):
    """Rank 1 starts first and finds nothing: it waits on the lock until rank 0 has copied."""
    source, dest = prepared("uneven"), tmp_path / "imagenet"
    queue = multiprocessing.get_context("fork").Queue()
    procs = [
        multiprocessing.get_context("fork").Process(target=stage_in_process, args=(source, dest, rank, delay, queue))
        for rank, delay in ((1, 0.0), (2, 0.0), (0, 1.0))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    done = {rank: (action, copied, at) for rank, action, copied, at in (queue.get() for _ in procs)}
    assert done[0][:2] == ("copied", len(tree_bytes(source)))
    assert done[1][:2] == done[2][:2] == ("waited", 0)
    assert done[1][2] >= done[0][2] and done[2][2] >= done[0][2]
    assert_staged_copy(source, dest)


def test_interrupted_copy_resumes_and_changed_source_restages(prepared, tmp_path):
    source, dest = prepared(), tmp_path / "imagenet"
    stage_root(source, dest)
    files = sorted((dest / "train").rglob("*.JPEG"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:10])  # a half-written file
    marker = dest / ".launcher" / MARKER
    write_json(marker, {**read_json(marker), "state": "copying"})  # as a crash leaves it
    again = stage_root(source, dest)
    assert (again.action, again.copied_files) == ("copied", 2)
    assert_staged_copy(source, dest)
    assert stage_root(source, dest).action == "reused"
    assert stage_root(source, dest, reuse=False).copied_files == 0  # recopied only what differs
    stray = dest / "train" / files[0].parent.name / "stray.JPEG"
    stray.write_bytes(b"x")
    complete = source / ".launcher" / "complete-train.json"
    saved = complete.read_bytes()
    try:  # the source was prepared again: the copy is not reused, stray files go
        write_json(complete, {**read_json(complete), "finished": "later"})
        changed = stage_root(source, dest)
        assert changed.action == "copied" and changed.copied_files == len(tree_bytes(source))
        assert not stray.exists()
    finally:
        complete.write_bytes(saved)


def test_unprepared_source_is_refused(tmp_path):
    (tmp_path / "src" / "train").mkdir(parents=True)
    with pytest.raises(LauncherError, match="meta.bin"):
        stage_root(tmp_path / "src", tmp_path / "dest")


def test_waiting_lock_waits_then_times_out(tmp_path):
    path = tmp_path / "lock"
    with WaitingLock(path):
        with pytest.raises(LauncherError, match="waited"):
            with WaitingLock(path, timeout_s=0.3):
                pass
    with WaitingLock(path, timeout_s=0.3):
        assert "pid" in path.read_text()


def test_stage_archives_then_prepare_on_the_node(archives, oracle, tmp_path, capsys):
    result = archives("tiny")
    base = tmp_path / "scratch"
    args = [f"stage.source={result.archive_dir}", f"storage.base={base}", "cluster=debug", *dataset_overrides(result)]
    assert launch("stage", args) == 0
    assert "copied 3 of 3 files" in capsys.readouterr().out
    assert sorted(os.listdir(base / "archives")) == sorted(p.name for p in result.files.values())
    assert_same_as_oracle(base / "imagenet", oracle("tiny"))
    assert launch("stage", args) == 0
    assert "reused" in capsys.readouterr().out


@pytest.mark.slurm
def test_two_ranks_stage_on_slurm(slurm_cluster, prepared, tmp_path):
    source, dest = prepared(), tmp_path / "node" / "imagenet"
    slurm = ["cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1", "cluster.mem_gb=1"]
    run = cli("stage", f"stage.source={source}", f"storage.root={dest}", *slurm, "cluster.timeout_min=5", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert copied_once(run.stdout), run.stdout
    assert_staged_copy(source, dest)
