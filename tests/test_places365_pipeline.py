"""Places365 as a dataset of the pipeline: its facts live in conf/dataset/places365.yaml and agree
with torchvision's own Places365 (archive names, md5s, label files, the folders images_dir names);
`launcher synth dataset=places365` writes, through the adapter, the archives synthesize_places365
writes (whose extraction torchvision reads: tests/test_places365.py), and prints the exact prepare
command for them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from launcher import compose_config
from launcher.datasets import adapter_of
from launcher.datasets.places365.labels import ListFiles, Patterns, parse_labels, read_archive_files
from launcher.datasets.places365.synth import Places365SynthSpec, synthesize_places365
from launcher.sources import shape_module

from conftest import cli


def dataset(choice: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config("synth", [f"dataset={choice}"]).dataset, resolve=True)


@pytest.mark.torch
def test_the_yaml_facts_are_torchvisions():
    from torchvision.datasets import Places365

    d = dataset("places365")
    archives = {k: (a["file"], a["md5"]) for k, a in d["archives"].items()}
    assert archives[d["labels"]["archive"]] == Places365._DEVKIT_META["standard"]
    assert archives[d["splits"]["train"]["archive"]] == Places365._IMAGES_META[("train-standard", False)]
    assert archives[d["splits"]["val"]["archive"]] == Places365._IMAGES_META[("val", False)]
    members = d["labels"]["members"]
    assert members["categories"] == Places365._CATEGORIES_META[0]
    assert (members["train"], members["val"]) == (
        Places365._FILE_LIST_META["train-standard"][0],
        Places365._FILE_LIST_META["val"][0],
    )
    # the root folders are the ones Places365.images_dir joins (no root, no download: the property alone)
    for split, tv_split in (("train", "train-standard"), ("val", "val")):
        probe = Places365.__new__(Places365)
        probe.root, probe.split, probe.small = "", tv_split, False
        assert d["splits"][split]["folder"] == Places365.images_dir.fget(probe)
    assert (d["expected"]["classes"], d["expected"]["train"], d["expected"]["val"]) == (365, 1803460, 36500)


def test_the_yaml_patterns_are_the_label_parsers_and_name_real_shapes():
    d = dataset("places365")
    assert Patterns(**d["patterns"]) == Patterns()
    assert {s["shape"] for s in d["splits"].values()} == {"tree", "flat_labels"}
    assert all(shape_module(s["shape"]).__name__.startswith("launcher.sources.") for s in d["splits"].values())
    synthetic = dataset("places365_synthetic")
    assert all(a["md5"] is None for a in synthetic["archives"].values())
    assert synthetic["splits"] == d["splits"] and synthetic["adapter"] == "places365"


def test_an_unknown_adapter_or_shape_is_one_line_naming_the_valid_ones():
    from launcher.core.errors import ConfigError

    with pytest.raises(ConfigError, match="valid adapters: imagenet, places365"):
        adapter_of("coco")
    with pytest.raises(ConfigError, match="valid shapes: class_tars, flat_labels, tree"):
        shape_module("zip")
    result = cli("synth", "dataset.adapter=coco", cwd=None)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_synth_dataset_places365_writes_what_synthesize_places365_writes(tmp_path):
    result = cli(
        "synth", "dataset=places365", "synth.classes=4", "synth.train_max=2", "synth.val_per_class=3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:3] == ["launcher", "prepare", "dataset=places365_synthetic"]
    direct = synthesize_places365(
        tmp_path / "direct", Places365SynthSpec(classes=4, train_per_class=2, val_per_class=3)
    )
    written = tmp_path / "data" / "archives"
    for key, path in direct.files.items():
        assert (written / path.name).read_bytes() == path.read_bytes(), key
    md5s = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in command[3:]}
    assert md5s == {f"dataset.archives.{k}.md5": direct.md5[k] for k in ("filelist", "train", "val")}
    # the file lists parse as the adapter's YAML says: 4 classes, 8 train and 12 val entries
    lists = read_archive_files(str(written / direct.files["filelist"].name), ListFiles().limits())
    labels = parse_labels(lists, ListFiles(), Patterns(), source="synth")
    assert (len(labels.categories.names), len(labels.train.entries), len(labels.val.entries)) == (4, 8, 12)


def test_synth_places365_never_overwrites(tmp_path):
    args = ("synth", "dataset=places365", "synth.classes=2", "synth.train_max=1", "synth.val_per_class=1")
    assert cli(*args, cwd=tmp_path).returncode == 0
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 1 and "never overwrites" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert Path(tmp_path / "data" / "archives" / "val_large.tar").stat().st_size > 0


# ---------------------------------------------------------------- the shapes' steps vs torchvision


def run_shapes(archive_dir: Path, root: Path, state: Path, shards: int) -> dict[str, list]:
    """Places365's two splits through the generic steps of their YAML shapes: index (against the file
    lists) -> shard into `shards` units -> each unit through launcher.sources.extract -> files_of;
    the label files written by write_root_files. No Places365 code picks a split's steps."""
    from launcher.archive.extract import Output
    from launcher.core.layout import Layout, write_json
    from launcher.datasets.places365.labels import read_labels
    from launcher.prepare.guards import make_root_identity
    from launcher.sources import extract
    from launcher.sources.tree import write_root_files

    d = dataset("places365_synthetic")
    adapter = adapter_of(d["adapter"])
    layout = adapter.layout_of(d)
    files, labels = read_labels(str(archive_dir / layout.filelist), layout.lists, adapter.patterns_of(d))
    write_root_files(str(root), files)
    root_id = make_root_identity(Layout.of(root, state))["id"]
    listings = {"train": labels.train.relpaths(), "val": labels.val.relpaths()}
    written = {}
    for split, source in d["splits"].items():
        shape = shape_module(source["shape"])
        archive = archive_dir / d["archives"][source["archive"]]["file"]
        index = shape.index(archive, source, d["patterns"], listings[split], None)
        write_json(state / f"index-{split}.json", index)
        paths = {"archive": str(archive), "root": str(root), "index": str(state / f"index-{split}.json")}
        paths.update(folder=source["folder"], listed_by=source["listed_by"], labels=None)
        parts = shape.shard(index["members"], shards, 1, 0)
        assert len(parts) == min(shards, len(index["members"]))
        records = []
        for part in parts:
            args = shape.unit_args(index["members"], part, paths, d["patterns"])
            records.append(extract(source["shape"], **args, out=Output(), root_id=root_id))
        written[split] = [f for r in records for f in shape.files_of(r)]
    return written


@pytest.mark.torch
@pytest.mark.parametrize("shards", [1, 4])
def test_the_yaml_shapes_write_the_root_torchvision_extracts(tmp_path, monkeypatch, shards):
    """Root A: torchvision's own download path over the archives in place (its extract_archive and its
    rename of data_large). Root B: the shapes' steps, in `shards` units per split. Same files, same
    bytes; Places365 gives equal classes, class_to_idx, imgs, targets; finalize's view (files_of)
    names every file once, in its class folder."""
    import os
    import shutil

    from test_places365 import files_under, patch_torchvision_md5s

    spec = Places365SynthSpec(classes=5, train_per_class=3, val_per_class=2, seed=5)
    result = synthesize_places365(tmp_path / "archives", spec)
    Places365 = patch_torchvision_md5s(monkeypatch, result)
    a = tmp_path / "A"
    a.mkdir()
    for path in result.files.values():
        shutil.copy(path, a / path.name)
    for split in ("train-standard", "val"):
        Places365(str(a), split=split, download=True)

    b = tmp_path / "B"
    written = run_shapes(result.archive_dir, b, tmp_path / "state", shards)
    archives = tuple(p.name for p in result.files.values())
    assert files_under(b, skip=(".launcher-root.json",)) == files_under(a, skip=archives)
    assert sorted(f"{c}/{n}".lstrip("/") for c, n, _ in written["train"]) == sorted(
        line.split(" ")[0].lstrip("/") for line in (b / "places365_train_standard.txt").read_text().splitlines()
    )
    assert {c for c, _, _ in written["val"]} == {""} and len(written["val"]) == 10
    for split in ("train-standard", "val"):
        theirs, ours = Places365(str(a), split=split), Places365(str(b), split=split)
        assert (ours.classes, ours.class_to_idx, ours.targets) == (theirs.classes, theirs.class_to_idx, theirs.targets)
        assert ours.imgs == [(p.replace(str(a), str(b), 1), t) for p, t in theirs.imgs]
        assert all(os.path.isfile(p) for p, _ in ours.imgs)


@pytest.mark.parametrize("folder", ["../escape", "a/b", ".", ""])
def test_a_split_folder_that_is_not_one_plain_name_is_refused_in_one_line(folder):
    from launcher.core.errors import ConfigError
    from launcher.sources import check_folder

    with pytest.raises(ConfigError, match=r"dataset\.splits\.val\.folder=.*not one plain folder name") as err:
        check_folder("val", folder)
    assert "\n" not in str(err.value)
    assert check_folder("val", "val_large") == "val_large"


# ---------------------------------------------------------------- launcher prepare, end to end


def synth_then_prepare(archive_dir: Path, classes: int = 5) -> list[str]:
    """`launcher synth dataset=places365 storage.archive_dir=...` as a user runs it, and the overrides
    of the prepare command it prints (dataset=places365_synthetic, the archive folder, the md5s)."""
    synth = ["dataset=places365", f"storage.archive_dir={archive_dir}", f"synth.classes={classes}"]
    result = cli("synth", *synth, "synth.train_max=3", "synth.val_per_class=2", "synth.seed=11", cwd=archive_dir.parent)
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:3] == ["launcher", "prepare", "dataset=places365_synthetic"], command
    return command[2:]


def md5s_of(archive_dir: Path) -> dict[str, str]:
    """The md5s torchvision's Places365 checks: the three archives' and the three label files'."""
    import hashlib
    import tarfile

    layout, md5 = adapter_of("places365").layout_of(dataset("places365")), {}
    for key in ("filelist", "train", "val"):
        md5[key] = hashlib.md5((archive_dir / getattr(layout, key)).read_bytes()).hexdigest()
    with tarfile.open(archive_dir / layout.filelist) as tar:
        for key, name in zip(("categories", "train_list", "val_list"), layout.lists.names()):
            md5[key] = hashlib.md5(tar.extractfile(name).read()).hexdigest()
    return md5


def torchvision_root(archive_dir: Path, dest: Path, monkeypatch):
    """torchvision's own extraction of the archives (its download path over them in place): the oracle."""
    import shutil
    from types import SimpleNamespace

    from test_places365 import patch_torchvision_md5s

    Places365 = patch_torchvision_md5s(monkeypatch, SimpleNamespace(md5=md5s_of(archive_dir)))
    dest.mkdir()
    for path in archive_dir.iterdir():
        shutil.copy(path, dest / path.name)
    for split in ("train-standard", "val"):
        Places365(str(dest), split=split, download=True)
    return Places365


def prepared(root: Path) -> dict[str, bytes]:
    """The files of a prepared root, launcher's own state left out."""
    from test_places365 import files_under

    return {rel: data for rel, data in files_under(root).items() if not rel.startswith(".launcher")}


@pytest.mark.torch
@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_launcher_prepare_writes_the_root_places365_reads(tmp_path, monkeypatch, capsys, cluster):
    """synth -> the printed prepare (cluster=debug in one unit per split; cluster=local in several
    shards) -> the root torchvision's Places365 reads exactly as it reads its own extraction of the
    same archives: same files and bytes, classes, class_to_idx, imgs, targets. A second prepare is
    already complete."""
    import os

    from test_places365 import folders_under

    from conftest import launch

    archive_dir, root = tmp_path / "archives", tmp_path / "root"
    overrides = [*synth_then_prepare(archive_dir), f"storage.root={root}", f"cluster={cluster}"]
    if cluster == "local":
        overrides += ["prepare.train_shards=4", "prepare.val_shards=3"]
    assert launch("prepare", overrides) == 0
    capsys.readouterr()
    records = {p.name for p in (root / ".launcher" / "units").iterdir() if p.suffix == ".json"}
    shards = {"debug": (1, 1), "local": (4, 3)}[cluster]
    assert (sum(r.startswith("train-") for r in records), sum(r.startswith("val-") for r in records)) == shards
    assert {"meta.json", "md5-filelist.json", "md5-train.json", "md5-val.json"} <= records

    Places365 = torchvision_root(archive_dir, tmp_path / "A", monkeypatch)
    archives = {p.name for p in archive_dir.iterdir()}
    theirs_files = {rel: data for rel, data in prepared(tmp_path / "A").items() if rel not in archives}
    assert prepared(root) == theirs_files
    assert {f for f in folders_under(root) if not f.startswith(".launcher")} == folders_under(tmp_path / "A")
    for split in ("train-standard", "val"):
        theirs, ours = Places365(str(tmp_path / "A"), split=split), Places365(str(root), split=split)
        assert (ours.classes, ours.class_to_idx, ours.targets) == (theirs.classes, theirs.class_to_idx, theirs.targets)
        assert ours.imgs == [(p.replace(str(tmp_path / "A"), str(root), 1), t) for p, t in theirs.imgs]
        assert len(ours.imgs) == {"train-standard": 15, "val": 10}[split]
        assert all(os.path.isfile(p) for p, _ in ours.imgs)

    assert launch("prepare", overrides) == 0
    again = capsys.readouterr().out
    assert again.startswith(f"already complete in {root}: nothing to do."), again


@pytest.mark.parametrize(
    "member, line",
    [
        ("places365_train_standard.txt", "/a/../../etc/passwd 0"),
        ("places365_val.txt", "../Places365_val_00000001.jpg 0"),
        ("categories_places365.txt", "/a/airfield\x1b[2J 0"),
    ],
)
def test_a_hostile_list_line_is_refused_and_nothing_is_recorded_complete(tmp_path, capsys, member, line):
    """A hostile line in a file list: prepare exits non-zero with one line naming the member and the
    line; no image or label file is written, no split recorded complete."""
    from test_places365 import replace_line, rewrite_list

    from conftest import launch

    archive_dir, root = tmp_path / "archives", tmp_path / "root"
    overrides = synth_then_prepare(archive_dir)
    rewrite_list(archive_dir, member, replace_line(1, line))
    # the file-list archive's md5 left unchecked: the line, not the md5, is what refuses it
    kept = [o for o in overrides if not o.startswith("dataset.archives.filelist.md5=")]
    assert launch("prepare", [*kept, f"storage.root={root}", "cluster=debug"]) != 0
    errors = [e for e in capsys.readouterr().err.splitlines() if e.startswith("launcher prepare: error:")]
    assert len(errors) == 1 and f"member {member}: line 1: expected" in errors[0], errors
    assert not (root / ".launcher" / "complete-train.json").exists()
    assert not (root / ".launcher" / "complete-val.json").exists()
    assert not root.exists() or {p.name for p in root.iterdir()} <= {".launcher"}


def test_status_after_prepare_shows_every_unit_complete(tmp_path, capsys):
    """`launcher status dataset=places365_synthetic` after prepare: each split whole with its image
    count, the file-list archive's md5 unit among the complete ones; a failed label-archive md5 is
    one of each split's failure notes."""
    from launcher.core.completion import unit_of_split

    from conftest import launch

    archive_dir, root = tmp_path / "archives", tmp_path / "root"
    overrides = [*synth_then_prepare(archive_dir, classes=3), f"storage.root={root}", "cluster=debug"]
    assert launch("prepare", [*overrides, "prepare.train_shards=2"]) == 0
    capsys.readouterr()
    assert launch("status", [*overrides, "status.units=true"]) == 0
    out = capsys.readouterr().out
    # train: its md5, two shards, finalize; val: its md5, one shard, finalize
    assert "train   4/4 complete; 9 images" in out and "val     3/3 complete; 6 images" in out, out
    units = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(("md5-", "meta"))}
    assert units == {"meta": "complete", "md5-filelist": "complete", "md5-train": "complete", "md5-val": "complete"}
    assert unit_of_split("md5-filelist", "val") and not unit_of_split("md5-train", "val")
