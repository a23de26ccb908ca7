"""`launcher prepare storage.format=tar` and the loaders over it: the archives indexed in place (no
image file, no split folder under the root), read back by build_dataset/build_loader as
torchvision's ImageNet reads a folder root prepared from the same archives; the refusals in one line."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision

from launcher import compose_config
from launcher import data as D
from launcher.core.errors import LauncherError
from launcher.data import nodes
from launcher.tarformat.dataset import ArchiveChanged, TarImageNet

from archive_tools import copy_archives
from conftest import FILES, dataset_overrides, launch, storage_overrides

TAR = "storage.format=tar"
RANK_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID")
RANK_KEYS += ("SLURM_STEP_NUM_TASKS",)


def tar_overrides(archive_dir: Path, root: Path, result, *more: str) -> list[str]:
    return [*storage_overrides(archive_dir, root), *dataset_overrides(result), TAR, *more]


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
    """(archives, folder root, tar root) of the small shape: prepared once each, format=folder and tar."""
    result = archives("small")
    base = tmp_path_factory.mktemp("tarprepare")
    folder, tar = base / "folder", base / "tar"
    assert launch("prepare", [*storage_overrides(result.archive_dir, folder), *dataset_overrides(result)]) == 0
    assert launch("prepare", [*tar_overrides(result.archive_dir, tar, result), "cluster=debug"]) == 0
    return result, folder, tar


@pytest.fixture
def no_ranks(monkeypatch):
    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(nodes, "SAID", set(), raising=False)
    return monkeypatch


def loader_config(result, root: Path, *more: str):
    return compose_config("bench", [*tar_overrides(result.archive_dir, root, result), *more])


# ---------------------------------------------------------------- prepare


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_prepare_tar_writes_meta_bin_and_state_only(archives, tmp_path, capsys, cluster):
    result = archives("tiny")
    root = tmp_path / "root"
    overrides = [*tar_overrides(result.archive_dir, root, result), f"cluster={cluster}"]
    assert launch("prepare", overrides) == 0
    assert sorted(os.listdir(root)) == [".launcher", "meta.bin"]
    state = root / ".launcher"
    for split in ("train", "val"):
        assert (state / f"tarindex-{split}.bin").is_file() and (state / f"complete-{split}.json").is_file()
    assert not (state / "tarparts").exists() or os.listdir(state / "tarparts") == []
    capsys.readouterr()
    assert launch("prepare", overrides) == 0
    assert "already complete" in capsys.readouterr().out
    assert launch("status", overrides) == 0
    out = capsys.readouterr().out
    assert "train   2/2 complete" in out and "val     2/2 complete" in out and "FAILED" not in out


def test_ranges_without_md5_give_the_same_index(archives, tmp_path):
    """No md5 set: several range units per split (prepare.train_shards), merged into the same index
    file as one whole-archive unit with its md5 makes."""
    result = archives("uneven")
    whole, ranged = tmp_path / "whole", tmp_path / "ranged"
    assert launch("prepare", [*tar_overrides(result.archive_dir, whole, result), "cluster=debug"]) == 0
    nulls = [f"dataset.archives.{k}.md5=null" for k in ("devkit", "train", "val")]
    more = ["cluster=debug", "prepare.train_shards=4", "prepare.val_shards=3", *nulls]
    assert launch("prepare", [*tar_overrides(result.archive_dir, ranged, result), *more]) == 0
    units = sorted(p.name for p in (ranged / ".launcher" / "units").glob("*-index-*.json"))
    assert len([u for u in units if u.startswith("train-")]) == 4 and len(units) == 7
    for split in ("train", "val"):
        mine, theirs = [D.build_dataset(loader_config(result, r), split) for r in (ranged, whole)]
        assert list(mine.index.offsets) == list(theirs.index.offsets) and mine.targets == theirs.targets


def test_wrong_md5_fails_the_split_and_names_the_option(archives, tmp_path, capsys):
    result = archives("tiny")
    root = tmp_path / "root"
    bad = "dataset.archives.val.md5=" + "0" * 32
    assert launch("prepare", [*tar_overrides(result.archive_dir, root, result), "cluster=debug", bad]) == 1
    out = capsys.readouterr()
    assert "md5 mismatch" in out.out + out.err and "dataset.archives.val.md5" in out.out + out.err
    assert not (root / ".launcher" / "complete-val.json").exists()
    assert (root / ".launcher" / "complete-train.json").exists()


def test_deleted_index_is_rebuilt_by_the_next_prepare(archives, tmp_path, capsys):
    result = archives("tiny")
    root = tmp_path / "root"
    overrides = [*tar_overrides(result.archive_dir, root, result), "cluster=debug"]
    assert launch("prepare", overrides) == 0
    index = root / ".launcher" / "tarindex-val.bin"
    before = index.read_bytes()
    index.unlink()
    capsys.readouterr()
    assert launch("prepare", overrides) == 0
    assert "already complete" not in capsys.readouterr().out and index.read_bytes() == before


def test_dry_run_writes_nothing(archives, tmp_path):
    result = archives("tiny")
    root = tmp_path / "root"
    assert launch("prepare", [*tar_overrides(result.archive_dir, root, result), "prepare.dry_run=true"]) == 0
    assert not root.exists()


def test_on_slurm_a_range_is_worth_a_job(archives, tmp_path, capsys):
    """Without md5s and prepare.<split>_shards, SLURM gets one range per array task only where each
    spans at least the folder plan's floor (an array task costs a job's start-up): small archives
    are one range per split, not one per image; shards asked for are what is planned."""
    result = archives("small")
    nulls = [f"dataset.archives.{k}.md5=null" for k in ("devkit", "train", "val")]
    overrides = [*tar_overrides(result.archive_dir, tmp_path / "root", result), *nulls, "prepare.dry_run=true"]
    assert launch("prepare", [*overrides, "cluster=slurm"]) == 0
    out = capsys.readouterr().out
    assert "train-index-0000-of-0001" in out and "val-index-0000-of-0001" in out, out
    assert launch("prepare", [*overrides, "cluster=slurm", "prepare.train_shards=3"]) == 0
    assert "train-index-0002-of-0003" in capsys.readouterr().out
    assert launch("prepare", [*overrides, "cluster=local", "cluster.workers=3"]) == 0
    assert "val-index-0002-of-0003" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ILSVRC2012_img_train.tar.gz", "ILSVRC2012_img_train.tgz"])
def test_compressed_archive_refused_in_one_line(archives, tmp_path, capsys, name):
    result = archives("tiny")
    root = tmp_path / "root"
    code = launch("prepare", [*tar_overrides(result.archive_dir, root, result), f"dataset.archives.train.file={name}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and name in err and "storage.format=folder" in err
    assert not root.exists()


def test_root_of_the_other_format_refused(prepared, capsys):
    result, folder, tar = prepared
    capsys.readouterr()
    assert launch("prepare", tar_overrides(result.archive_dir, folder, result)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepared with storage.format=folder" in err
    folder_again = [*storage_overrides(result.archive_dir, tar), *dataset_overrides(result)]
    assert launch("prepare", folder_again) == 2
    assert "prepared with storage.format=tar" in capsys.readouterr().err
    assert sorted(os.listdir(tar)) == [".launcher", "meta.bin"]


def test_bench_reads_a_tar_root_and_refuses_an_unprepared_one(prepared, tmp_path, capsys):
    result, _, tar = prepared
    table = tmp_path / "t.csv"
    small = ["transform.train_crop_size=32", "transform.eval_crop_size=32", "loader.batch_size=8"]
    more = ["cluster=debug", "loader.drop_last=false", *small, f"bench.table={table}"]
    capsys.readouterr()
    assert launch("bench", [*tar_overrides(result.archive_dir, tar, result), *more]) == 0
    out = capsys.readouterr().out
    (row,) = list(csv.DictReader(table.open(newline="")))
    assert "coverage train epoch 0" in out and "FAILED" not in out and row["coverage"] == "ok"
    assert int(row["images"]) == len(D.build_dataset(loader_config(result, tar), "train"))
    assert launch("bench", tar_overrides(result.archive_dir, tmp_path / "none", result)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a prepared tar root" in err and "storage.format=tar" in err


# ---------------------------------------------------------------- loaders


def assert_same_as_torchvision(ours: TarImageNet, tar: Path, folder: Path, split: str) -> None:
    """A tar root's dataset (transform: to tensors) is torchvision.datasets.ImageNet on a folder root
    of the same archives: classes, samples (paths relative to each root), targets and every image."""
    theirs = torchvision.datasets.ImageNet(str(folder), split)
    assert isinstance(ours, TarImageNet) and len(ours) == len(theirs) > 0
    for name in ("classes", "wnids", "class_to_idx", "wnid_to_idx", "targets", "split"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert [(os.path.relpath(p, tar), t) for p, t in ours.samples] == [
        (os.path.relpath(p, folder), t) for p, t in theirs.samples
    ]
    folder_set = D.load_imagenet(folder, split, transform=D.build_transforms({}, False))
    for i in range(len(ours)):
        assert torch.equal(ours[i][0], folder_set[i][0]), ours.samples[i][0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_build_dataset_equals_torchvision_on_the_folder_root(prepared, split):
    result, folder, tar = prepared
    ours = D.build_dataset(loader_config(result, tar), split, transform=D.build_transforms({}, False))
    assert_same_as_torchvision(ours, tar, folder, split)


@pytest.mark.parametrize("workers", [0, 2])
def test_build_loader_delivers_every_image_once(prepared, no_ranks, workers):
    result, folder, tar = prepared
    more = [f"loader.num_workers={workers}", "loader.batch_size=7", "loader.drop_last=false"]
    cfg = loader_config(result, tar, *more)
    val = D.build_loader(cfg, "val")
    expected = torch.stack([img for img, _ in D.load_imagenet(folder, "val", transform=D.build_transforms({}, False))])
    images, targets = zip(*[(x, y) for x, y in val])
    assert torch.equal(torch.cat(images), expected) and torch.cat(targets).tolist() == val.dataset.targets
    train = D.build_loader(cfg, "train")
    seen = Counter(t for _, y in train for t in y.tolist())
    assert seen == Counter(train.dataset.targets) and sum(seen.values()) == len(train.dataset)


def test_archive_rewritten_after_prepare_refused_at_load(archives, tmp_path):
    result = archives("tiny")
    archive_dir = copy_archives(result, tmp_path / "archives")
    root = tmp_path / "root"
    assert launch("prepare", [*tar_overrides(archive_dir, root, result), "cluster=debug"]) == 0
    cfg = loader_config(result, root, f"storage.archive_dir={archive_dir}")
    assert len(D.build_dataset(cfg, "train")) > 0
    path = archive_dir / FILES["train"]
    shutil.copy2(path, tmp_path / "copy.tar")
    os.replace(tmp_path / "copy.tar", path)  # the same bytes, another file
    with pytest.raises(ArchiveChanged, match=rf"The archive {path} is not the file the tar index"):
        D.build_dataset(cfg, "train")


def test_loader_opens_the_archive_in_storage_archive_dir_and_names_a_missing_index(archives, tmp_path):
    result = archives("tiny")
    root = tmp_path / "root"
    assert launch("prepare", [*tar_overrides(result.archive_dir, root, result), "cluster=debug"]) == 0
    moved = copy_archives(result, tmp_path / "moved")
    cfg = loader_config(result, root, f"storage.archive_dir={moved}")
    with pytest.raises(ArchiveChanged, match=rf"The archive {moved / FILES['val']} is not the file"):  # a copy
        D.build_dataset(cfg, "val")
    (root / ".launcher" / "tarindex-val.bin").unlink()
    with pytest.raises(LauncherError, match=r"There is no tar index at .*tarindex-val\.bin.*launcher prepare"):
        D.build_dataset(loader_config(result, root), "val")


def fake_lfs(folder: Path, single: str) -> Path:
    """An `lfs` on PATH: `getstripe -c` says 1 for a file whose name contains `single`, 4 otherwise;
    `setstripe` does nothing (the folder is made by mkdir in the advice)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "lfs"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = getstripe ]; then case "$3" in *' + single + "*) echo 1;; *) echo 4;; esac; fi\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return folder


def test_a_single_striped_archive_is_named_with_commands_that_copy_it_striped(archives, tmp_path, capsys, monkeypatch):
    """Where lfs exists, a large split archive on one stripe (format=tar reads it every epoch) gets one
    warning naming it, with commands that copy the archives into a striped folder; pasted, they work
    and prepare from there warns no more. format=folder, a small archive or no lfs: no warning."""
    import shlex
    import subprocess

    from launcher.prepare import checks

    result = archives("tiny")
    archive_dir = copy_archives(result, tmp_path / "archives")
    root = tmp_path / "root"
    monkeypatch.setenv("PATH", f"{fake_lfs(tmp_path / 'bin', 'img_train')}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(checks, "STRIPED_FROM_BYTES", 0)
    overrides = [*tar_overrides(archive_dir, root, result), "cluster=debug", "prepare.dry_run=true"]
    assert launch("prepare", overrides) == 0
    warnings = [w for w in capsys.readouterr().err.splitlines() if "Lustre stripe" in w]
    assert len(warnings) == 1 and f"{archive_dir / FILES['train']} is on one Lustre stripe" in warnings[0], warnings
    assert FILES["val"] not in warnings[0].split(" is on one")[0]
    commands, target = warnings[0].split("prepare from it: ", 1)[1].split(", then ")
    subprocess.run(commands, shell=True, check=True, env=os.environ)
    striped = target.removeprefix("storage.archive_dir=")
    assert sorted(os.listdir(striped)) == sorted(FILES.values())
    again = [*overrides, f"storage.archive_dir={striped}", f"storage.root={tmp_path / 'r2'}"]
    assert shlex.split(target) == [f"storage.archive_dir={striped}"] and launch("prepare", again) == 0
    assert "Lustre stripe" in capsys.readouterr().err  # the fake lfs says 1 stripe for the copy too
    for quiet in (["storage.format=folder"], []):
        if not quiet:
            monkeypatch.setattr(checks, "STRIPED_FROM_BYTES", 1 << 40)
        assert launch("prepare", [*overrides, *quiet]) == 0
        assert "Lustre stripe" not in capsys.readouterr().err


def test_bench_refuses_a_changed_archive_in_one_line_with_the_prepare_that_made_the_root(archives, tmp_path, capsys):
    """Before any job: the changed archive named, and the recorded prepare, pasted, makes the root usable again."""
    import shlex
    import subprocess

    from conftest import cli

    result = archives("tiny")
    archive_dir = copy_archives(result, tmp_path / "archives")
    overrides = tar_overrides(archive_dir, tmp_path / "root", result)
    assert cli("prepare", *overrides, "cluster=debug").returncode == 0  # as users run it: the ledger keeps its argv
    os.chmod(archive_dir / FILES["val"], 0o600)  # its ctime changes, its bytes do not
    bench = [*overrides, "bench.split=val", "loader.batch_size=8", f"bench.table={tmp_path / 't.csv'}"]
    capsys.readouterr()
    assert launch("bench", bench) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only its ctime differs" in err and "bench job" not in err
    command = shlex.split(err.split("The prepare that made this root: `", 1)[1].split("`", 1)[0])
    assert command[:2] == ["launcher", "prepare"]
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert launch("bench", bench) == 0
