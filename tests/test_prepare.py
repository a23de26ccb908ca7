"""prepare: the root equals torchvision's own preparation; reruns, resumption, refusals, bad input."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat

import pytest

from launcher.core.layout import Layout, Lock, read_json

from archive_tools import copy_archives, members, rewrite_class, rewrite_devkit, tar_bytes, truncate, write_tar
from conftest import FILES, GROUND_TRUTH, META, cli, dataset_overrides, launch, storage_overrides, tree_bytes


def prepare(result, root, *extra, archive_dir=None, cluster="debug"):
    overrides = [*storage_overrides(archive_dir or result.archive_dir, root), *dataset_overrides(result)]
    return launch("prepare", [*overrides, f"cluster={cluster}", *extra])


def imagenet_view(root, split):
    import torchvision

    ds = torchvision.datasets.ImageNet(str(root), split)
    rel = [(os.path.relpath(p, root), t) for p, t in ds.samples]
    return ds.classes, ds.wnids, ds.class_to_idx, ds.wnid_to_idx, rel, ds.targets


def assert_same_as_oracle(root, oracle_root):
    import torch

    assert tree_bytes(root) == tree_bytes(oracle_root)
    ours = torch.load(root / "meta.bin", weights_only=True)
    theirs = torch.load(oracle_root / "meta.bin", weights_only=True)
    assert ours == theirs
    for split in ("train", "val"):
        assert imagenet_view(root, split) == imagenet_view(oracle_root, split)


@pytest.mark.parametrize("shape", ["small", "tiny", "uneven"])
def test_root_equals_torchvisions(shape, archives, oracle, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives(shape), root) == 0
    assert_same_as_oracle(root, oracle(shape))


def test_local_processes_and_odd_files(archives, oracle, tmp_path):
    """cluster=local: units run in worker processes; the odd files come through byte for byte."""
    result = archives()
    root = tmp_path / "root"
    assert prepare(result, root, "prepare.train_shards=3", cluster="local") == 0
    assert_same_as_oracle(root, oracle())
    for rel in result.odd_files:
        assert (root / rel).read_bytes() == (oracle() / rel).read_bytes()


@pytest.mark.torch
def test_manifest_lists_imagenets_samples(archives, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives("uneven"), root) == 0
    for split in ("train", "val"):
        manifest = read_json(root / ".launcher" / f"manifest-{split}.json")
        _, wnids, _, _, samples, targets = imagenet_view(root, split)
        assert manifest["wnids"] == wnids
        assert [f"{split}/{p}" for p in manifest["paths"]] == [p for p, _ in samples]
        assert manifest["targets"] == targets
        assert manifest["sizes"] == [os.path.getsize(root / p) for p, _ in samples]


def test_rerun_on_complete_root_does_nothing(archives, tmp_path, capsys):
    root = tmp_path / "root"
    assert prepare(archives(), root) == 0
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    capsys.readouterr()
    assert prepare(archives(), root) == 0
    assert "already complete" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert before == after


def test_resumes_what_a_crash_left(archives, oracle, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives(), root) == 0
    units = root / ".launcher" / "units"
    train_record = sorted(units.glob("train-*.json"))[0]
    lost = list(read_json(train_record)["classes"])
    for path in (
        train_record,
        *units.glob("val-*.json"),
        *units.glob("finalize-*.json"),
        root / ".launcher" / "complete-train.json",
        root / ".launcher" / "complete-val.json",
    ):
        path.unlink()
    shutil.rmtree(root / "train" / lost[0])  # never renamed into place
    half = root / ".partial" / "train" / lost[0]
    half.mkdir(parents=True)
    (half / "junk.JPEG").write_bytes(b"half written")
    val_file = next((root / "val").rglob("*.JPEG"))
    val_file.write_bytes(val_file.read_bytes()[:10])  # a val image cut short
    (val_file.parent / f".{val_file.name}.part").write_bytes(b"x")
    assert prepare(archives(), root) == 0
    assert_same_as_oracle(root, oracle())
    assert not list((root / ".partial").rglob("*.JPEG")) and not list(root.rglob("*.part"))


def tree_listing(base) -> list[str]:
    """Every path under base (folders, files, links), relative, sorted."""
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


def test_dry_run_prints_the_plan_and_writes_nothing(archives, tmp_path, capsys):
    root, state = tmp_path / "root", tmp_path / "state"
    before = tree_listing(tmp_path)
    extra = ["prepare.dry_run=true", "prepare.train_shards=4", f"storage.state_dir={state}"]
    assert prepare(archives(), root, *extra) == 0
    out = capsys.readouterr().out
    assert "train-0003-of-0004" in out and "val-0000-of-0001" in out and "md5-train" in out and "meta.bin" in out
    assert tree_listing(tmp_path) == before, "a dry run created files or folders"
    assert "1 debug job pulling 9 units" in out


def test_dry_run_on_slurm_lists_the_arrays_and_writes_nothing(archives, tmp_path, capsys):
    root = tmp_path / "root"
    before = tree_listing(tmp_path)
    extra = ["prepare.dry_run=true", "prepare.train_shards=5", "cluster.max_array_size=3", "wait=false"]
    extra += ["cluster.array_parallelism=4", "cluster.partition=cpu", "cluster.mem_gb=2", "cluster.timeout_min=30"]
    assert prepare(archives(), root, *extra, cluster="slurm") == 0
    out = capsys.readouterr().out
    assert tree_listing(tmp_path) == before
    assert "prepare-train: 2 job arrays of 6 tasks, %4" in out  # 5 shards + md5-train, MaxArraySize 3
    assert "prepare-common: 1 job array of 2 tasks, %4" in out
    assert "prepare-val-finalize: 1 job array of 1 task, %4 (afterok: prepare-common, prepare-val)" in out
    assert "partition cpu, time limit 30 min, memory 2.0 GB" in out


def test_complete_root_keeps_no_empty_partial_folder(archives, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives(), root) == 0
    assert not os.path.lexists(root / ".partial")


def test_empty_partial_removal_does_not_follow_a_link(tmp_path):
    from launcher.prepare.finalize import remove_empty_partial

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (elsewhere / "train").mkdir(parents=True)
    root.mkdir()
    (root / ".partial").symlink_to(elsewhere)
    remove_empty_partial(root, [".partial/train", ".partial"])
    assert (elsewhere / "train").is_dir() and (root / ".partial").is_symlink()
    (root / ".partial").unlink()
    (root / ".partial" / "train" / "n01").mkdir(parents=True)  # not empty: stays
    remove_empty_partial(root, [".partial/train", ".partial"])
    assert (root / ".partial" / "train" / "n01").is_dir()


def test_shard_count_change_reuses_finished_classes(archives, oracle, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives(), root, "prepare.train_shards=2") == 0
    (root / ".launcher" / "complete-train.json").unlink()
    assert prepare(archives(), root, "prepare.train_shards=5") == 0
    assert_same_as_oracle(root, oracle())


def test_foreign_root_is_refused_unless_forced(archives, oracle, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(oracle("tiny"), root)
    assert prepare(archives(), root) == 1
    assert "launcher did not prepare" in capsys.readouterr().err
    assert prepare(archives(), root, "prepare.force=true") == 0
    assert_same_as_oracle(root, oracle())


def test_root_of_other_archives_is_refused_unless_forced(archives, oracle, tmp_path, capsys):
    root = tmp_path / "root"
    assert prepare(archives("tiny"), root) == 0
    capsys.readouterr()
    assert prepare(archives(), root) == 1
    assert "prepared from other archives" in capsys.readouterr().err
    assert prepare(archives(), root, "prepare.force=true") == 0
    assert_same_as_oracle(root, oracle())


WRONG_SPLIT_MD5S = [f"dataset.archives.{split}.md5={'0' * 32}" for split in ("train", "val")]


@pytest.mark.parametrize("started, other", [("tar", "folder"), ("folder", "tar")])
def test_an_unfinished_root_is_refused_in_the_other_format(started, other, archives, tmp_path, capsys):
    """A prepare that did not finish (here both split archives fail their md5, so no split is complete)
    left a root that a prepare in the other storage.format refuses in one line, writing nothing: it
    names the root, the format the root was started in and the command that finishes it, which,
    pasted, does. status says the format."""
    result = archives("tiny")
    root = tmp_path / "root"
    base = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
    assert launch("prepare", [*base, f"storage.format={started}", *WRONG_SPLIT_MD5S]) == 1
    state = root / ".launcher"
    assert not list(state.glob("complete-*.json"))
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if "logs" not in p.parts)
    refused = cli("prepare", *base, f"storage.format={other}")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"storage.root={root} was started with storage.format={started}" in refused.stderr
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if "logs" not in p.parts) == before
    assert launch("prepare", [*base, f"storage.format={other}", "prepare.dry_run=true"]) == 2
    capsys.readouterr()
    launch("status", base)
    assert f"(dataset=synthetic, storage.format={started})" in capsys.readouterr().out
    command = shlex.split(re.search(r"finish it with `([^`]+)`", refused.stderr).group(1))
    assert command[:2] == ["launcher", "prepare"] and f"storage.format={started}" in command
    finished = cli(*command[1:])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    checked = [*base, f"storage.format={started}", "verify.level=exists"]
    assert all((state / f"complete-{split}.json").exists() for split in ("train", "val"))
    assert launch("verify", checked) == 0
    if started == "tar":
        assert sorted(os.listdir(root)) == [".launcher", "meta.bin"]


def test_second_prepare_on_a_locked_root_refuses(archives, tmp_path, capsys):
    root = tmp_path / "root"
    layout = Layout.of(root, root / ".launcher")
    with Lock(layout.lock_file, "test"):
        assert prepare(archives(), root) == 3
    assert "is busy" in capsys.readouterr().err
    assert not (root / "train").exists()


def test_shared_modes(archives, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives("tiny"), root, "storage.file_mode=0664", "storage.dir_mode=2775", "storage.group=root") == 0
    image = next((root / "train").rglob("*.JPEG"))
    assert stat.S_IMODE(image.stat().st_mode) == 0o664
    assert stat.S_IMODE(image.parent.stat().st_mode) == 0o2775
    assert image.parent.stat().st_gid == 0


def test_split_val_only(archives, oracle, tmp_path):
    root = tmp_path / "root"
    assert prepare(archives(), root, "split=val") == 0
    assert not (root / "train").exists()
    assert tree_bytes(root, ["val"]) == tree_bytes(oracle(), ["val"])


# ---------------------------------------------------------------- bad input


def broken(result, tmp_path):
    return copy_archives(result, tmp_path / "archives")


def failing(result, tmp_path, capsys, archive_dir, *extra, broken_splits=("train", "val")):
    """Run prepare on broken input: non-zero exit, and the broken splits are not recorded complete."""
    root = tmp_path / "root"
    code = prepare(result, root, *extra, archive_dir=archive_dir)
    err = capsys.readouterr().err
    assert code != 0
    for split in broken_splits:
        assert not (root / ".launcher" / f"complete-{split}.json").exists()
        assert not (root / ".launcher" / f"manifest-{split}.json").exists()
    return err


def test_missing_archive_names_file_place_and_override(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    (d / FILES["val"]).unlink()
    err = failing(archives(), tmp_path, capsys, d)
    assert f"{FILES['val']} is not in {d}" in err and "storage.archive_dir=" in err


def test_md5_mismatch_says_expected_and_actual(archives, tmp_path, capsys):
    result = archives()
    err = failing(
        result, tmp_path, capsys, result.archive_dir, "dataset.archives.val.md5=" + "0" * 32, broken_splits=["val"]
    )
    assert "md5 mismatch" in err and "0" * 32 in err and result.md5["val"] in err


def test_truncated_outer_tar(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    truncate(d / FILES["train"], 0.6)
    err = failing(archives(), tmp_path, capsys, d)
    assert FILES["train"] in err and "truncated" in err


def test_truncated_inner_tar(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    name = rewrite_class(d, 2, lambda images: write_bytes_cut(images))
    err = failing(archives(), tmp_path, capsys, d, broken_splits=["train"])
    assert f"member {name}" in err and "truncated" in err
    assert not (tmp_path / "root" / "train" / name[:-4]).exists()


def write_bytes_cut(images):
    data = tar_bytes(images)
    return data[: len(data) // 2]


def test_class_count_disagreeing_with_devkit(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    name = rewrite_class(d, 1, lambda images: tar_bytes(images[:-1]))
    err = failing(archives(), tmp_path, capsys, d, broken_splits=["train"])
    assert f"class {name[:-4]} has" in err and "num_train_images" in err


def test_devkit_without_meta_mat(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    rewrite_devkit(d, lambda ms: [m for m in ms if m[0] != META])
    err = failing(archives(), tmp_path, capsys, d)
    assert "has no member ILSVRC2012_devkit_t12/data/meta.mat" in err


def test_ground_truth_length_disagrees(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    rewrite_devkit(
        d, lambda ms: [(n, b"\n".join(data.split(b"\n")[:-3]) + b"\n" if n == GROUND_TRUTH else data) for n, data in ms]
    )
    err = failing(archives(), tmp_path, capsys, d)
    assert FILES["val"] in err and ("ground truth" in err or "no label" in err)


def test_val_image_without_label(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    images = members(d / FILES["val"])
    images[-1] = ("ILSVRC2012_val_00099999.JPEG", images[-1][1])
    write_tar(d / FILES["val"], images)
    err = failing(archives(), tmp_path, capsys, d)
    assert "ILSVRC2012_val_00099999.JPEG" in err and "has no label" in err


def test_devkit_is_not_gzip(archives, tmp_path, capsys):
    d = broken(archives(), tmp_path)
    (d / FILES["devkit"]).write_bytes(b"\x00" * 1000)
    err = failing(archives(), tmp_path, capsys, d)
    assert FILES["devkit"] in err and "gzip" in err


def test_rerun_after_fixing_the_archive_completes_what_is_missing(archives, oracle, tmp_path, capsys):
    result = archives()
    d = broken(result, tmp_path)
    good = (d / FILES["train"]).read_bytes()
    rewrite_class(d, 2, write_bytes_cut)
    root = tmp_path / "root"
    no_md5 = "dataset.archives.train.md5=null"
    assert prepare(result, root, no_md5, "prepare.train_shards=4", archive_dir=d) == 1
    done = {p.name for p in (root / ".launcher" / "units").glob("train-*.json")}
    assert len(done) == 3
    (d / FILES["train"]).write_bytes(good)  # downloaded again
    assert prepare(result, root, no_md5, "prepare.train_shards=4", archive_dir=d) == 0
    assert_same_as_oracle(root, oracle())


def fake_sbatch(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_local_work_on_shared_storage_from_a_login_node_warns(archives, tmp_path, monkeypatch, capsys):
    fake_sbatch(tmp_path, monkeypatch)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    result = archives("tiny")
    lustre = tmp_path / "lustre"
    shutil.copytree(result.archive_dir, lustre)  # lustre and nfs keep the archives in the root
    overrides = ["storage=lustre", f"storage.root={lustre}", *dataset_overrides(result), "prepare.dry_run=true"]
    assert launch("prepare", [*overrides, "cluster=local"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: cluster=")]
    assert len(warnings) == 1 and "login node" in warnings[0] and "cluster=slurm" in warnings[0]
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # inside a job: fine
    assert launch("prepare", [*overrides, "cluster=local"]) == 0
    assert "login node" not in capsys.readouterr().err
    monkeypatch.delenv("SLURM_JOB_ID")
    assert launch("prepare", [*overrides, "cluster=slurm", "cluster.max_array_size=10"]) == 0
    assert "login node" not in capsys.readouterr().err


def test_preparing_into_a_folder_of_other_things_warns(archives, tmp_path, capsys):
    root = tmp_path / "home"
    root.mkdir()
    (root / "thesis.tex").write_text("x")
    (root / "photos").mkdir()
    assert prepare(archives("tiny"), root, "prepare.dry_run=true") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: storage.root")]
    assert len(warnings) == 1 and "photos, thesis.tex" in warnings[0], warnings
    assert "not a root of torchvision.datasets.ImageNet: prepare adds meta.bin, train/, val/" in warnings[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare(archives("tiny"), empty, "prepare.dry_run=true") == 0
    assert "warning: storage.root" not in capsys.readouterr().err
