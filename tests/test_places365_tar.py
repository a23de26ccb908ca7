"""Places365 with `storage.format=tar`: synthetic Places365-Standard archives indexed in place (the
train tree and the list-labelled val tar; no image file under the root, the root's label files as
the folder format writes them), read back by build_dataset as torchvision's Places365 reads a folder
root prepared from the same archives (sample for sample, byte for byte, pixel for pixel); changed or
truncated archives refused at prepare and at load; verify, stage, status and bench on the tar root."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from launcher import compose_config
from launcher import data as D
from launcher.core.errors import LauncherError
from launcher.data.imageio import ImageReadMode, decode_image
from launcher.datasets.places365.labels import ListFiles
from launcher.datasets.places365.layout import LAYOUT
from launcher.datasets.places365.loading import load_places365
from launcher.datasets.places365.synth import Places365SynthSpec, synthesize_places365
from launcher.datasets.places365.tardataset import TarPlaces365
from launcher.tarformat.dataset import ArchiveChanged
from launcher.tarformat.indexfile import read_index

from conftest import launch

pytestmark = pytest.mark.torch

TAR = "storage.format=tar"
LISTS = ListFiles().names()
SPLITS = {"train": "train-standard", "val": "val"}
COUNTS = {"train": 15, "val": 10}  # 5 classes: 3 train and 2 val images each
NO_MD5 = [f"dataset.archives.{k}.md5=null" for k in ("filelist", "train", "val")]


def synth(archive_dir: Path):
    spec = Places365SynthSpec(classes=5, train_per_class=3, val_per_class=2, seed=11, max_side=64)
    return synthesize_places365(archive_dir, spec)


def overrides(result, root: Path, *more: str, archive_dir: Path | None = None) -> list[str]:
    """dataset=places365_synthetic over the archives, their md5s checked, storage.format=tar."""
    md5 = [f"dataset.archives.{k}.md5={result.md5[k]}" for k in ("filelist", "train", "val")]
    where = [f"storage.archive_dir={archive_dir or result.archive_dir}", f"storage.root={root}"]
    return ["dataset=places365_synthetic", *where, *md5, TAR, *more]


def folder_overrides(result, root: Path, *more: str) -> list[str]:
    return [o for o in overrides(result, root, *more) if o != TAR]


def copy_of(result, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in result.files.values():
        shutil.copy(path, dest / path.name)
    return dest


def dataset(result, root: Path, split: str, *more: str, archive_dir: Path | None = None):
    cfg = compose_config("bench", overrides(result, root, *more, archive_dir=archive_dir))
    return D.build_dataset(cfg, split, transform=None)


def files_under(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """(synth result, folder root, tar root in one md5 unit per split, tar root in byte ranges)."""
    base = tmp_path_factory.mktemp("places365tar")
    result = synth(base / "archives")
    folder, whole, ranged = base / "folder", base / "whole", base / "ranged"
    assert launch("prepare", folder_overrides(result, folder, "cluster=debug")) == 0
    assert launch("prepare", overrides(result, whole, "cluster=debug")) == 0
    more = ["cluster=local", "prepare.check_md5=false", "prepare.train_shards=4", "prepare.val_shards=3"]
    assert launch("prepare", overrides(result, ranged, *more)) == 0
    return result, folder, whole, ranged


@pytest.fixture
def oracle(roots, monkeypatch):
    """torchvision's Places365 with the synthetic lists' md5s (it checks them even with download=False)."""
    from test_places365 import patch_torchvision_md5s
    from test_places365_pipeline import md5s_of

    return patch_torchvision_md5s(monkeypatch, SimpleNamespace(md5=md5s_of(roots[0].archive_dir)))


# ---------------------------------------------------------------- prepare


def test_prepare_tar_writes_the_label_files_and_its_state_only(roots, capsys):
    result, folder, whole, ranged = roots
    for root in (whole, ranged):
        assert sorted(os.listdir(root)) == sorted([".launcher", *LISTS])
        for name in LISTS:
            assert (root / name).read_bytes() == (folder / name).read_bytes()
        state = root / ".launcher"
        assert not any(p.suffix == ".jpg" for p in state.rglob("*"))  # no image file anywhere
        for split in ("train", "val"):
            index = read_index(state / f"tarindex-{split}.bin", split)
            assert index.layout == "listed" and len(index) == COUNTS[split]
        assert not (state / "tarparts").exists() or not os.listdir(state / "tarparts")
    units = {p.stem for p in (whole / ".launcher" / "units").iterdir()}
    assert {"train-index-0000-of-0001", "val-index-0000-of-0001", "md5-filelist"} <= units
    md5 = json.loads((whole / ".launcher" / "units" / "train-index-0000-of-0001.json").read_text())["md5"]
    assert md5 == result.md5["train"]  # computed in the indexing read itself
    ranged_units = {p.stem for p in (ranged / ".launcher" / "units").iterdir() if "-index-" in p.stem}
    assert ranged_units == {f"train-index-{i:04d}-of-0004" for i in range(4)} | {
        f"val-index-{i:04d}-of-0003" for i in range(3)
    }
    capsys.readouterr()
    assert launch("prepare", overrides(result, whole, "cluster=debug")) == 0
    assert capsys.readouterr().out.startswith(f"already complete in {whole}: nothing to do.")


def test_a_folder_root_is_refused_with_storage_format_tar(roots, capsys):
    result, folder, _, _ = roots
    capsys.readouterr()
    assert launch("prepare", overrides(result, folder, "cluster=debug")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepared with storage.format=folder" in err


def test_an_adapter_without_load_tar_split_is_still_refused_in_one_line(roots, tmp_path, capsys, monkeypatch):
    from launcher.datasets.places365 import adapter

    monkeypatch.delattr(adapter, "load_tar_split")
    capsys.readouterr()
    assert launch("prepare", overrides(roots[0], tmp_path / "root", "cluster=debug")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "storage.format=tar supports dataset.adapter=imagenet, not places365" in err


def rewrite(path: Path, change) -> None:
    """The tar at `path` written again with `change(name, data)` applied to each file (folders kept)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
                continue
            new = change(info.name, data)
            if new is not None:
                info.size = len(new)
                tar.addfile(info, io.BytesIO(new))
    path.write_bytes(buf.getvalue())


def refused_prepare(result, tmp_path, capsys, change, *more: str, split: str = "train") -> str:
    archive_dir = copy_of(result, tmp_path / "archives")
    change(archive_dir)
    root = tmp_path / "root"
    capsys.readouterr()
    code = launch("prepare", overrides(result, root, "cluster=debug", *more, archive_dir=archive_dir))
    out = capsys.readouterr()
    assert code != 0 and "error" in out.err, out.err
    assert not (root / ".launcher" / f"complete-{split}.json").exists()
    assert not root.exists() or not any(p.suffix == ".jpg" for p in root.rglob("*"))
    return out.out + out.err


def test_a_truncated_archive_is_refused_at_prepare(roots, tmp_path, capsys):
    def truncate(archive_dir: Path) -> None:
        path = archive_dir / LAYOUT.train
        os.truncate(path, path.stat().st_size // 2)

    err = refused_prepare(roots[0], tmp_path, capsys, truncate, *NO_MD5)
    assert "is truncated or corrupt" in err and LAYOUT.train in err


def test_a_changed_archive_fails_its_md5_in_the_indexing_read(roots, tmp_path, capsys):
    def change(archive_dir: Path) -> None:  # same names and sizes, other pixels
        rewrite(archive_dir / LAYOUT.val, lambda name, data: data[:-3] + bytes(3))

    err = refused_prepare(roots[0], tmp_path, capsys, change, split="val")
    assert f"md5 mismatch for {tmp_path / 'archives' / LAYOUT.val}" in err and "dataset.archives.val.md5" in err


@pytest.mark.parametrize("hostile", ["unlisted", "link", "outside"])
def test_a_member_the_list_does_not_name_is_refused_at_prepare(roots, tmp_path, capsys, hostile):
    def change(archive_dir: Path) -> None:
        path = archive_dir / LAYOUT.val
        with tarfile.open(path, "a") as tar:
            if hostile == "link":
                info = tarfile.TarInfo("val_large/Places365_val_00000999.jpg")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                name = "val_large/Places365_val_00000999.jpg" if hostile == "unlisted" else "val_large/../x.jpg"
                info = tarfile.TarInfo(name)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))

    err = refused_prepare(roots[0], tmp_path, capsys, change, *NO_MD5, split="val")
    assert LAYOUT.val in err and "member" in err


# ---------------------------------------------------------------- the loaders


@pytest.mark.parametrize("split", ["train", "val"])
def test_build_dataset_equals_torchvision_on_the_folder_root(roots, oracle, split):
    """classes, class_to_idx, imgs/samples (paths below the root), targets as torchvision's Places365
    reads the folder root; every sample's bytes the folder file's, its pixels the folder loader's."""
    result, folder, whole, ranged = roots
    theirs = oracle(str(folder), split=SPLITS[split], small=False, download=False)
    folder_set = load_places365(folder, split)
    for root in (whole, ranged):
        ours = dataset(result, root, split)
        assert isinstance(ours, TarPlaces365) and isinstance(ours, oracle)
        assert len(ours) == len(theirs) == COUNTS[split]
        assert (ours.classes, ours.class_to_idx, ours.targets) == (theirs.classes, theirs.class_to_idx, theirs.targets)
        assert ours.split == theirs.split and ours.images_dir.replace(str(root), str(folder)) == theirs.images_dir
        relative = [(os.path.relpath(p, root), t) for p, t in ours.imgs]
        assert relative == [(os.path.relpath(p, folder), t) for p, t in theirs.imgs]
        assert list(ours.samples) == list(ours.imgs)
        for i, (path, _) in enumerate(theirs.imgs):
            data = Path(path).read_bytes()
            assert bytes(ours.read_sample(i)[0]) == data, path
            pixels = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            assert torch.equal(ours[i][0], pixels) and torch.equal(ours[i][0], folder_set[i][0]), path
            assert ours[i][1] == theirs.targets[i]


def test_build_loader_reads_every_image_once_in_workers(roots, monkeypatch):
    """Two DataLoader workers, each opening the archive once: every val image once, its pixels."""
    from launcher.data import nodes

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(nodes, "SAID", set(), raising=False)
    result, folder, whole, _ = roots
    more = ["loader.num_workers=2", "loader.batch_size=3", "loader.drop_last=false"]
    more += ["transform.eval_crop_size=32"]
    cfg = compose_config("bench", overrides(result, whole, *more))
    val = D.build_loader(cfg, "val")
    folder_cfg = compose_config("bench", folder_overrides(result, folder, *more))
    expected = torch.stack([x for x, _ in D.build_dataset(folder_cfg, "val")])
    images, targets = zip(*list(val))
    assert torch.equal(torch.cat(images), expected) and torch.cat(targets).tolist() == val.dataset.targets


def test_an_archive_changed_after_prepare_is_refused_at_load(roots, tmp_path):
    result = roots[0]
    archive_dir = copy_of(result, tmp_path / "archives")
    root = tmp_path / "root"
    assert launch("prepare", overrides(result, root, "cluster=debug", archive_dir=archive_dir)) == 0
    assert len(dataset(result, root, "train", archive_dir=archive_dir)) == COUNTS["train"]
    path = archive_dir / LAYOUT.train
    shutil.copy2(path, tmp_path / "copy.tar")
    os.replace(tmp_path / "copy.tar", path)  # the same bytes, another file
    with pytest.raises(ArchiveChanged, match=rf"The archive {path} is not the file the tar index"):
        dataset(result, root, "train", archive_dir=archive_dir)
    val = dataset(result, root, "val", archive_dir=archive_dir)
    os.truncate(archive_dir / LAYOUT.val, 1024)
    with pytest.raises(ArchiveChanged, match="truncated"):
        val[len(val) - 1]
    with pytest.raises(ArchiveChanged, match="size"):
        dataset(result, root, "val", archive_dir=archive_dir)


def test_an_imagenet_tar_index_is_refused_in_one_line(roots, tmp_path):
    from launcher.tarformat.indexfile import IndexFileError, TarIndex, write_index

    result, _, whole, _ = roots
    state = tmp_path / "state"
    index = read_index(whole / ".launcher" / "tarindex-val.bin", "val")
    write_index(state / "tarindex-val.bin", TarIndex("val", index.archive, ["n01"], [["a"]]))
    with pytest.raises(IndexFileError, match="indexes class folders"):
        dataset(result, whole, "val", f"storage.state_dir={state}")


# ---------------------------------------------------------------- verify, stage, status, bench


def verify(over: list[str], *more: str) -> tuple[int, dict | None]:
    code = launch("verify", [*over, *more])
    report = Path(compose_config("verify", [*over, *more]).verify.report)
    return code, json.loads(report.read_text()) if report.is_file() else None


@pytest.mark.parametrize("cluster, level", [("debug", "exists"), ("debug", "header"), ("local", "decode")])
def test_verify_passes_a_clean_tar_root(roots, cluster, level):
    result, _, whole, _ = roots
    code, report = verify(overrides(result, whole, f"cluster={cluster}"), f"verify.level={level}")
    assert code == 0 and report["ok"] and report["failures"] == [], report["failures"]
    assert report["format"] == "tar"
    assert {s: c["checked"] for s, c in report["counts"].items()} == COUNTS


def png_named_jpg(archive_dir: Path) -> str:
    """The first train image replaced by PNG data (a fixable odd file); returns its path below data_large/."""
    first = []

    def change(name: str, data: bytes) -> bytes:
        if first:
            return data
        first.append(name)
        out = io.BytesIO()
        Image.fromarray(np.full((9, 7, 3), 200, dtype=np.uint8)).save(out, "PNG")
        return out.getvalue()

    rewrite(archive_dir / LAYOUT.train, change)
    return first[0].split("/", 1)[1]


def test_verify_finds_a_changed_archive_and_fixes_an_odd_image_into_the_overlay(roots, tmp_path):
    result = roots[0]
    archive_dir = copy_of(result, tmp_path / "archives")
    odd = png_named_jpg(archive_dir)
    root = tmp_path / "root"
    over = overrides(result, root, "cluster=local", *NO_MD5, archive_dir=archive_dir)
    assert launch("prepare", over) == 0
    code, report = verify(over, "verify.level=decode", "verify.fix=true")
    assert code == 0, report["failures"]
    assert [n["path"] for n in report["notes"] if n["kind"] == "png"] == [f"data_large_standard/{odd}"]
    overlay = root / ".launcher" / "overlay-train"
    assert (overlay / odd).is_file() and not any(p.suffix == ".jpg" for p in root.glob("data_*"))
    train = dataset(result, root, "train", *NO_MD5, archive_dir=archive_dir)
    (fixed,) = train.overlay
    assert train.imgs[fixed][0].endswith(odd) and train[fixed][0].shape == (3, 9, 7)
    os.truncate(archive_dir / LAYOUT.val, 2048)
    code, report = verify(over, "verify.level=header")
    assert code == 1 and any(f["check"] == "archive" for f in report["failures"])


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_stage_copies_the_tar_root_and_status_shows_it_complete(roots, tmp_path, capsys, cluster):
    result, _, whole, _ = roots
    dest, dest_archives = tmp_path / "local" / "root", tmp_path / "local" / "archives"
    stage = [*overrides(result, dest, f"cluster={cluster}", archive_dir=dest_archives), f"stage.source={whole}"]
    capsys.readouterr()
    assert launch("stage", stage) == 0
    assert "copied" in capsys.readouterr().out
    assert sorted(os.listdir(dest_archives)) == sorted([LAYOUT.train, LAYOUT.val])
    assert {n: (dest / n).read_bytes() for n in LISTS} == {n: (whole / n).read_bytes() for n in LISTS}
    for split in ("train", "val"):
        source = dataset(result, whole, split)
        staged = dataset(result, dest, split, archive_dir=dest_archives)
        assert staged.archive == str(dest_archives / getattr(LAYOUT, split))
        assert [os.path.relpath(p, dest) for p, _ in staged.imgs] == [os.path.relpath(p, whole) for p, _ in source.imgs]
        assert staged.targets == source.targets
        assert all(torch.equal(staged[i][0], source[i][0]) for i in range(len(staged)))
    capsys.readouterr()
    assert launch("status", overrides(result, whole, f"cluster={cluster}", "status.units=true")) == 0
    out = capsys.readouterr().out
    assert "train   2/2 complete; 15 images" in out and "val     2/2 complete; 10 images" in out, out
    assert "train-index-0000-of-0001  complete" in out


def test_bench_reads_a_tar_root_and_refuses_an_unprepared_one(roots, tmp_path, capsys):
    result, _, whole, _ = roots
    table = tmp_path / "t.csv"
    small = ["transform.train_crop_size=32", "transform.eval_crop_size=32", "loader.batch_size=4"]
    more = ["cluster=debug", "loader.drop_last=false", *small, f"bench.table={table}"]
    capsys.readouterr()
    assert launch("bench", overrides(result, whole, *more)) == 0
    out = capsys.readouterr().out
    (row,) = list(csv.DictReader(table.open(newline="")))
    assert "FAILED" not in out and row["coverage"] == "ok" and int(row["images"]) == COUNTS["train"]
    assert launch("bench", overrides(result, tmp_path / "none", "cluster=debug")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a prepared tar root" in err and "categories_places365.txt" in err


def test_a_listed_tar_index_refuses_an_altered_name_as_an_overlay_path(roots, tmp_path):
    from launcher.tarformat.overlay import OverlayError, replacement_path

    index = read_index(roots[2] / ".launcher" / "tarindex-train.bin", "train")
    assert replacement_path(tmp_path, index, 0) == tmp_path / "overlay-train" / index.name(0)
    index.names = bytearray(b"../" + bytes(index.names))
    index.name_offsets = type(index.name_offsets)("I", [0, *(o + 3 for o in index.name_offsets[1:])])
    with pytest.raises(OverlayError, match="not a path below its folder"):
        replacement_path(tmp_path, index, 0)
    with pytest.raises(LauncherError):
        replacement_path(tmp_path, index, 0)


# ---------------------------------------------------------------- the listed index (launcher.tarformat.listed)


def listing_of_root(result, root: Path, split: str):
    from omegaconf import OmegaConf

    from launcher.prepare.tarlisted import split_listing

    d = OmegaConf.to_container(compose_config("prepare", overrides(result, root)).dataset, resolve=True)
    return split_listing("places365", split, str(root / ".launcher" / "devkit.json"), d["splits"][split], d["patterns"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_parts_by_byte_ranges_merge_into_the_whole_archives_index(roots, split):
    from launcher.tarformat.index import plan_ranges
    from launcher.tarformat.indexfile import encode_index
    from launcher.tarformat.listed import index_listed_part, merge_listed_parts

    result, _, whole, ranged = roots
    listing = listing_of_root(result, ranged, split)
    archive = result.archive_dir / getattr(LAYOUT, split)
    members = json.loads((ranged / ".launcher" / f"index-{split}.json").read_text())["members"]
    ranges = plan_ranges(members, 4)
    parts = [index_listed_part(archive, listing, first, stop) for first, stop in reversed(ranges)]
    merged = merge_listed_parts(parts, listing)
    assert encode_index(merged) == encode_index(read_index(ranged / ".launcher" / f"tarindex-{split}.bin", split))
    assert [merged.name(i) for i in range(len(merged))] == list(listing.listed)
    with pytest.raises(LauncherError, match="do not cover the archive"):
        merge_listed_parts(parts[:1] + parts[2:], listing)
    with pytest.raises(LauncherError, match="do not cover the archive"):  # a range twice
        merge_listed_parts([*parts, parts[0]], listing)


def test_the_range_walk_itself_refuses_what_the_list_does_not_name(roots, tmp_path):
    from launcher.tarformat.listed import index_listed_part

    result, _, _, ranged = roots
    listing = listing_of_root(result, ranged, "val")
    path = copy_of(result, tmp_path / "archives") / LAYOUT.val
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("val_large/Places365_val_00000999.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(LauncherError, match=r"Places365_val_00000999\.jpg.* is not a file listed in val"):
        index_listed_part(path, listing)
    fewer = dict(list(listing.listed.items())[1:])
    with pytest.raises(LauncherError, match="is not a file listed"):
        index_listed_part(result.archive_dir / LAYOUT.val, dataclasses.replace(listing, listed=fewer))
