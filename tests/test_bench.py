"""bench: one rank in-process, two ranks (gloo) locally and on SLURM, coverage verdicts, sweeps."""

from __future__ import annotations

import csv

import pytest
import test_data
import torch
from torch.utils.data import DistributedSampler

from launcher.data import EvalSampler
from launcher.data.bench import coverage_verdict

from conftest import cli, launch

prepared = test_data.prepared  # the session fixture of prepared roots, shared

SMALL = ["transform.train_crop_size=32", "transform.eval_crop_size=32", "loader.batch_size=8"]


def bench_args(root, *extra):
    return [f"storage.root={root}", *SMALL, *extra]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def counts_of(samplers, n):
    return torch.bincount(torch.tensor([i for s in samplers for i in s], dtype=torch.int64), minlength=n)


# ---------------------------------------------------------------- coverage verdicts


def test_coverage_verdict_refuses_padding_gaps_and_wrong_targets():
    n, world = 10, 3
    exact = counts_of([EvalSampler(n, r, world) for r in range(world)], n)
    assert coverage_verdict(exact, train=False, drop_last=False, batch_size=2, world=world)["ok"]
    padded = counts_of([DistributedSampler(range(n), world, r, shuffle=False) for r in range(world)], n)
    bad = coverage_verdict(padded, train=False, drop_last=False, batch_size=2, world=world)
    assert not bad["ok"] and bad["duplicates"] == 2
    assert coverage_verdict(padded, train=True, drop_last=False, batch_size=2, world=world)["ok"]
    gap = exact.clone()
    gap[4] = 0
    assert not coverage_verdict(gap, train=False, drop_last=False, batch_size=2, world=world)["ok"]
    assert not coverage_verdict(gap, train=True, drop_last=False, batch_size=2, world=world)["ok"]
    # drop_last: 10 samples, 3 ranks of 3, batches of 2 -> 2 per rank are delivered, 6 in all
    dropped = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert coverage_verdict(dropped, train=True, drop_last=True, batch_size=2, world=world)["ok"]
    twice = torch.tensor([2, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert not coverage_verdict(twice, train=True, drop_last=True, batch_size=2, world=world)["ok"]
    assert not coverage_verdict(exact, train=False, drop_last=False, batch_size=2, world=world, wrong_targets=1)["ok"]


# ---------------------------------------------------------------- runs


def test_bench_one_rank_in_process(prepared, tmp_path, capsys):
    table = tmp_path / "t.csv"
    code = launch("bench", bench_args(prepared(), "cluster=debug", "bench.epochs=2", f"bench.table={table}"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "coverage train epoch 0" in out and "coverage train epoch 1" in out and "FAILED" not in out
    assert "decode: only each JPEG's random crop" in out or "decode: whole images (launcher.data._jpeg is not" in out
    (row,) = rows(table)
    assert row["ranks"] == "1" and row["coverage"] == "ok" and float(row["images_per_s"]) > 0
    assert "| run |" in table.with_suffix(".md").read_text()


def test_bench_two_ranks_locally_cover_train_and_val(prepared, tmp_path, capsys):
    """cluster=local tasks_per_node=2: two processes, torch.distributed over gloo, counts all-reduced."""
    root, table = prepared("uneven"), tmp_path / "t.csv"
    two = ["cluster=local", "cluster.tasks_per_node=2", "cluster.poll_s=0.2", f"bench.table={table}"]
    assert launch("bench", bench_args(root, *two, "bench.split=val", "loader.num_workers=0")) == 0
    train = ["bench.split=train", "loader.drop_last=false", "loader.num_workers=1"]
    assert launch("bench", bench_args(root, *two, *train)) == 0
    out = capsys.readouterr().out
    val, train = rows(table)
    assert val["ranks"] == train["ranks"] == "2" and val["coverage"] == train["coverage"] == "ok"
    assert f"coverage val epoch 0: {val['images']} of {val['images']} samples seen" in out
    assert "0 missing" in out and "FAILED" not in out
    for rank in ("0", "1"):
        assert any(line.split()[:1] == [rank] for line in out.splitlines())


def test_bench_refuses_an_unprepared_root(tmp_path, capsys):
    assert launch("bench", [f"storage.root={tmp_path}", "cluster=debug"]) == 1
    assert "launcher prepare" in capsys.readouterr().err


def test_sweep_writes_one_table(prepared, tmp_path):
    """bench -m: a Hydra multirun; one CSV + Markdown table in the sweep folder with a row per run."""
    root = prepared()
    sweep = tmp_path / "sweep"
    result = cli(
        "bench",
        "-m",
        "transform=standard,none",
        "loader.num_workers=0,1",
        *bench_args(root, "cluster=debug", "bench.max_batches=2", f"hydra.sweep.dir={sweep}"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(sweep / "bench.csv")
    assert len(table) == 4
    runs = {(r["transform"], r["num_workers"]) for r in table}
    assert runs == {("standard", "0"), ("standard", "1"), ("none", "0"), ("none", "1")}
    assert all(r["coverage"] == "partial ok" for r in table)
    md = (sweep / "bench.md").read_text().splitlines()
    assert len(md) == 2 + 4 and "transform=none loader.num_workers=1" in "\n".join(md)


@pytest.mark.slurm
def test_bench_two_ranks_on_slurm(slurm_cluster, prepared, tmp_path):
    table = tmp_path / "t.csv"
    slurm = ["cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1", "cluster.mem_gb=1"]
    args = bench_args(prepared(), *slurm, "cluster.timeout_min=5", "cluster.poll_s=0.5", "loader.num_workers=1")
    result = cli("bench", *args, "bench.split=val", f"bench.table={table}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = rows(table)
    assert row["ranks"] == "2" and row["executor"] == "slurm" and row["coverage"] == "ok"
    assert "samples seen" in result.stdout and "FAILED" not in result.stdout


def test_a_batch_larger_than_the_split_warns(archives, tmp_path):
    from conftest import cli, dataset_overrides, launch, storage_overrides

    result = archives("tiny")
    overrides = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    assert launch("prepare", [*overrides, "cluster=debug"]) == 0
    bench = cli("bench", *overrides, "cluster=debug", "bench.split=val", "loader.batch_size=64", "loader.num_workers=0")
    warnings = [line for line in bench.stderr.splitlines() if line.startswith("warning: loader.")]
    assert warnings == [
        "warning: loader.batch_size=64 is larger than the val split (6 images): lower loader.batch_size."
    ]


@pytest.mark.slurm
def test_bench_of_a_tar_root_two_ranks_on_slurm(slurm_cluster, archives, tmp_path):
    """storage.format=tar on SLURM: bench reads the archives through the index on 2 ranks, every val image once."""
    from conftest import dataset_overrides, storage_overrides

    result = archives("small")
    root = tmp_path / "tar-root"
    tar = ["storage.format=tar", *storage_overrides(result.archive_dir, root), *dataset_overrides(result)]
    assert launch("prepare", [*tar, "cluster=debug"]) == 0
    table = tmp_path / "t.csv"
    slurm = ["cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1", "cluster.mem_gb=1"]
    args = [*tar, *SMALL, *slurm, "cluster.timeout_min=5", "cluster.poll_s=0.5", "loader.num_workers=1"]
    bench = cli("bench", *args, "bench.split=val", f"bench.table={table}", cwd=tmp_path)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    (row,) = rows(table)
    assert row["ranks"] == "2" and row["executor"] == "slurm" and row["coverage"] == "ok"
    assert not [p for p in root.rglob("*.JPEG")]  # the images came from the archives
