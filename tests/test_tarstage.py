"""`launcher stage storage.format=tar`: a prepared tar root (archives, tar indexes, overlay, meta.bin)
copied to a node-local root once per node; the loaders on the staged config read the staged archives
and deliver what the source's loaders deliver."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from launcher import compose_config
from launcher import data as D

from archive_tools import copy_archives
from conftest import FILES, dataset_overrides, launch, storage_overrides

TAR = "storage.format=tar"
NO_MD5 = [f"dataset.archives.{k}.md5=null" for k in ("devkit", "train", "val")]


def tar_overrides(archive_dir: Path, root: Path, result, *more: str) -> list[str]:
    return [*storage_overrides(archive_dir, root), *dataset_overrides(result), TAR, "cluster=debug", *more]


def dataset_of(archive_dir: Path, root: Path, result, split: str):
    cfg = compose_config("bench", [*storage_overrides(archive_dir, root), *dataset_overrides(result), TAR])
    return D.build_dataset(cfg, split, transform=None)


@pytest.fixture
def fixed_source(archives, tmp_path):
    """(archives, archive folder, tar root) over a copy of the tiny archives, its odd images fixed
    into the overlay."""
    result = archives("tiny")
    archive_dir = copy_archives(result, tmp_path / "archives")
    source = tmp_path / "source"
    overrides = tar_overrides(archive_dir, source, result, *NO_MD5)
    assert launch("prepare", overrides) == 0
    assert launch("verify", [*overrides, "verify.level=decode", "verify.fix=true"]) == 0
    assert (source / ".launcher" / "overlay-train.json").is_file()
    return result, archive_dir, source


def test_staged_dataset_equals_the_source(fixed_source, tmp_path, capsys):
    result, archive_dir, source = fixed_source
    dest, dest_archives = tmp_path / "local" / "root", tmp_path / "local" / "archives"
    stage = [*tar_overrides(dest_archives, dest, result, *NO_MD5), f"stage.source={source}"]
    capsys.readouterr()
    assert launch("stage", stage) == 0
    assert "copied" in capsys.readouterr().out
    assert sorted(os.listdir(dest_archives)) == sorted([FILES["train"], FILES["val"]])
    assert (dest / "meta.bin").read_bytes() == (source / "meta.bin").read_bytes()
    for split in ("train", "val"):
        theirs = dataset_of(archive_dir, source, result, split)
        ours = dataset_of(dest_archives, dest, result, split)
        assert ours.archive == str(dest_archives / FILES[split])
        assert [(os.path.relpath(p, dest), t) for p, t in ours.samples] == [
            (os.path.relpath(p, source), t) for p, t in theirs.samples
        ]
        assert ours.targets == theirs.targets and ours.overlay.keys() == theirs.overlay.keys()
        for i in range(len(ours)):
            assert ours.read_sample(i)[0] == theirs.read_sample(i)[0]
            assert torch.equal(ours[i][0], theirs[i][0])
    assert set(dataset_of(dest_archives, dest, result, "train").overlay)  # the fixed images came along
    for name in (FILES["train"], FILES["val"]):  # the source's archives gone: the staged ones are read
        os.rename(archive_dir / name, tmp_path / name)
    assert len(dataset_of(dest_archives, dest, result, "val")) > 0
    for name in (FILES["train"], FILES["val"]):
        os.rename(tmp_path / name, archive_dir / name)
    capsys.readouterr()
    assert launch("stage", stage) == 0
    assert "reused a complete copy" in capsys.readouterr().out


def test_changed_source_archive_is_refused_and_leaves_no_complete_copy(fixed_source, tmp_path, capsys):
    result, archive_dir, source = fixed_source
    dest, dest_archives = tmp_path / "local" / "root", tmp_path / "local" / "archives"
    stage = [*tar_overrides(dest_archives, dest, result, *NO_MD5), f"stage.source={source}"]
    path = archive_dir / FILES["val"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # not the file indexed
    capsys.readouterr()
    assert launch("stage", stage) == 1
    err = capsys.readouterr().err
    assert f"The archive {path} is not the file the tar index" in err and "launcher prepare storage.format=tar" in err
    assert json.loads((dest / ".launcher" / "stage.json").read_text())["state"] == "copying"
    assert not (dest / ".launcher" / "tarindex-val.bin").exists()


def test_stage_of_a_folder_root_with_tar_is_refused_in_one_line(fixed_source, tmp_path, capsys):
    result, archive_dir, _ = fixed_source
    folder = tmp_path / "folder"
    assert launch("prepare", [*storage_overrides(archive_dir, folder), *dataset_overrides(result), *NO_MD5]) == 0
    capsys.readouterr()
    stage = [*tar_overrides(tmp_path / "a", tmp_path / "dest", result), f"stage.source={folder}"]
    assert launch("stage", stage) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "There is no tar index at" in err and not (tmp_path / "dest").exists()
