"""launcher.data on a Places365 root launcher prepared: build_dataset equals torchvision's Places365
(classes, class_to_idx, imgs, targets) from the manifest alone, decodes the same pixels as its PIL
loader, goes through the fused crop decode in train, loads through workers and ranks, and
`launcher bench dataset=places365_synthetic` covers each split."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torchvision.transforms import v2

from launcher import compose_config
from launcher import data as D
from launcher.core.errors import LauncherError
from launcher.data import fastpath

from conftest import cli, launch

pytestmark = pytest.mark.torch

SPLITS = {"train": "train-standard", "val": "val"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """synth (5 classes: 15 train, 10 val images) -> the prepare it prints, in one process."""
    from test_places365_pipeline import synth_then_prepare

    base = tmp_path_factory.mktemp("places365-loading")
    archive_dir = base / "archives"
    archive_dir.mkdir()
    overrides = synth_then_prepare(archive_dir)
    assert launch("prepare", [*overrides, f"storage.root={base / 'root'}", "cluster=debug"]) == 0
    return base / "root"


@pytest.fixture
def oracle(root, monkeypatch):
    """torchvision.datasets.Places365, told the synthetic lists' md5s (it checks them even with download=False)."""
    from types import SimpleNamespace

    from test_places365 import patch_torchvision_md5s
    from test_places365_pipeline import md5s_of

    return patch_torchvision_md5s(monkeypatch, SimpleNamespace(md5=md5s_of(root.parent / "archives")))


def config(root: Path, *overrides: str):
    return compose_config("bench", [f"storage.root={root}", "dataset=places365_synthetic", *overrides])


# ---------------------------------------------------------------- the dataset


@pytest.mark.parametrize("split", ["train", "val"])
def test_manifest_dataset_equals_torchvision_and_walks_no_directory(root, oracle, monkeypatch, split):
    def refuse(*args, **kwargs):
        raise AssertionError("directory walked")

    cfg = config(root)
    with monkeypatch.context() as m:
        for name in ("scandir", "listdir", "walk"):
            m.setattr(os, name, refuse)
        ours = D.build_dataset(cfg, split)
        again = D.build_dataset(cfg, split)  # train: from the columns cache the first one wrote
    theirs = oracle(str(root), split=SPLITS[split])
    assert isinstance(ours, torchvision.datasets.Places365) and ours.split == SPLITS[split] and not ours.small
    assert (ours.classes, ours.class_to_idx, ours.targets) == (theirs.classes, theirs.class_to_idx, theirs.targets)
    assert ours.imgs == theirs.imgs and ours.samples == theirs.imgs and again.imgs == theirs.imgs
    assert len(ours) == {"train": 15, "val": 10}[split] and ours.root == theirs.root
    assert ours.classes[0].startswith("/") and len(ours.classes) == 5
    assert isinstance(ours.samples, D.SampleList) == (split == "train")  # train's class folders make columns
    assert (root / ".launcher" / "manifest-train.columns").exists()


def test_the_lists_line_order_is_the_sample_order(tmp_path, monkeypatch):
    """torchvision keeps the file lists' line order: lists written in reverse give samples in reverse,
    ours as theirs (the manifest follows the list, not the sorted files)."""
    from types import SimpleNamespace

    from test_places365 import patch_torchvision_md5s, rewrite_list
    from test_places365_pipeline import md5s_of, synth_then_prepare

    archive_dir, root = tmp_path / "archives", tmp_path / "root"
    archive_dir.mkdir()
    overrides = synth_then_prepare(archive_dir)

    def reverse(data: bytes) -> bytes:
        return ("\n".join(reversed(data.decode().splitlines())) + "\n").encode()

    for member in ("places365_train_standard.txt", "places365_val.txt"):
        rewrite_list(archive_dir, member, reverse)
    kept = [o for o in overrides if not o.startswith("dataset.archives.filelist.md5=")]
    assert launch("prepare", [*kept, f"storage.root={root}", "cluster=debug"]) == 0
    oracle = patch_torchvision_md5s(monkeypatch, SimpleNamespace(md5=md5s_of(archive_dir)))
    for split in ("train", "val"):
        theirs = oracle(str(root), split=SPLITS[split])
        ours = D.build_dataset(config(root), split)
        assert ours.imgs == theirs.imgs and ours.targets == theirs.targets
        assert [p for p, _ in theirs.imgs] != sorted(p for p, _ in theirs.imgs)  # the reverse of sorted


def test_without_manifest_torchvision_reads_the_lists(root, oracle):
    ours = D.build_dataset(config(root, "loader.use_manifest=false"), "val")
    assert ours.imgs == oracle(str(root), split="val").imgs


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("classes", [["/a/../../etc"]], "does not hold Places365 class paths"),
        ("paths", ["../../escape.jpg"], "not a file below the images folder"),
        ("targets", [99], "labels outside 0..4"),
    ],
)
def test_a_damaged_manifest_is_refused_in_one_line(root, tmp_path, key, value, says):
    """A manifest naming a class or file outside the root, or a label with no class: one line, no dataset."""
    import json
    import shutil

    state = tmp_path / "state"
    shutil.copytree(root / ".launcher", state, ignore=shutil.ignore_patterns("*.columns", "logs", "units"))
    manifest = json.loads((state / "manifest-val.json").read_text())
    manifest[key] = value + manifest[key][len(value) :]
    (state / "manifest-val.json").write_text(json.dumps(manifest))
    with pytest.raises(LauncherError, match=says) as err:
        D.build_dataset(config(root, f"storage.state_dir={state}"), "val")
    assert "\n" not in str(err.value) and "launcher prepare" in str(err.value)


def test_eval_pixels_equal_torchvisions_pil_loader(root, oracle):
    """Eval transform: each image, one by one and as one batch (the fast path), equals torchvision's
    Places365 with its PIL loader through the same transform."""
    cfg = config(root, "transform.eval_crop_size=32")
    ours = D.build_dataset(cfg, "val")
    theirs = oracle(str(root), split="val", transform=v2.Compose([v2.PILToTensor(), ours.transform]))
    expected = [theirs[i] for i in range(len(theirs))]
    for i, (image, target) in enumerate(expected):
        got, label = ours[i]
        assert image.shape == (3, 32, 32) and torch.equal(got, image) and label == target
    batch, targets = D.collate(ours.__getitems__(list(range(len(ours)))))
    assert torch.equal(batch, torch.stack([x for x, _ in expected]))
    assert targets.tolist() == [t for _, t in expected]


@pytest.mark.parametrize("output", ["float", "uint8"])
def test_train_batches_take_the_crop_only_decode(root, monkeypatch, output):
    """Train: batches of the crop size and dtype; with launcher.data._jpeg each JPEG is decoded crop
    only, giving the v2 pipeline's pixels on the whole decode, draw for draw."""
    fused = []
    if D._jpeg is not None:
        real = D._jpeg

        class Spy:
            size = staticmethod(real.size)

            @staticmethod
            def decode_crop(*args):
                fused.append(args)
                return real.decode_crop(*args)

        monkeypatch.setattr(fastpath, "_jpeg", Spy)
    dataset = D.build_dataset(config(root, "transform.train_crop_size=24", f"transform.output={output}"), "train")
    batch, targets = D.collate(dataset.__getitems__([0, 3, 7, 14]))
    assert batch.shape == (4, 3, 24, 24) and batch.dtype == {"float": torch.float32, "uint8": torch.uint8}[output]
    assert targets.tolist() == [dataset.targets[i] for i in (0, 3, 7, 14)]
    pipeline = dataset.transform
    for k, (path, _) in enumerate(dataset.samples):
        torch.manual_seed(k)
        got = pipeline.finish(pipeline.head_of_file(path))
        torch.manual_seed(k)
        assert torch.equal(got, v2.Compose(pipeline.transforms)(D.decode_file(path))), path
    assert len(fused) == (4 + len(dataset) if D._jpeg is not None else 0)


# ---------------------------------------------------------------- loaders, ranks, instantiate


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_deliver_every_image(root, workers):
    cfg = config(root, "transform.train_crop_size=16", "transform.eval_crop_size=16", f"loader.num_workers={workers}")
    cfg.loader.batch_size, cfg.loader.drop_last = 4, False
    val = D.build_loader(cfg, "val")
    batches = list(val)
    assert torch.cat([y for _, y in batches]).tolist() == val.dataset.targets  # eval order, one rank
    assert all(x.shape[1:] == (3, 16, 16) for x, _ in batches)
    train = D.build_loader(cfg, "train")
    D.set_epoch(train, 0)
    seen = torch.cat([y for _, y in train]).tolist()
    assert sorted(seen) == sorted(train.dataset.targets) and len(seen) == 15


def test_two_ranks_split_eval_exactly_and_train_disjointly(root):
    dataset = D.build_dataset(config(root), "val", transform=None)
    options = {"batch_size": 3, "num_workers": 0, "drop_last": True}
    evals = [list(D.make_loader(dataset, False, options, r, 2).sampler) for r in (0, 1)]
    assert sorted(evals[0] + evals[1]) == list(range(len(dataset))) and not set(evals[0]) & set(evals[1])
    train = D.build_dataset(config(root), "train", transform=None)
    ranks = [D.make_loader(train, True, options, r, 2) for r in (0, 1)]
    for loader in ranks:
        loader.sampler.set_epoch(3)
    zero, one = (list(loader.sampler) for loader in ranks)
    assert not set(zero) & set(one) and len(set(zero) | set(one)) == 2 * (len(train) // 2)


def test_instantiate_builds_the_places365_dataset_and_loader(root):
    cfg = config(root, "loader.batch_size=2", "loader.num_workers=0", "transform.train_crop_size=16")
    dataset = instantiate(cfg.loader.dataset, split="val", transform=None)
    assert isinstance(dataset, torchvision.datasets.Places365) and dataset.imgs == D.build_dataset(cfg, "val").imgs
    loader = instantiate(cfg.loader, dataset={"split": "train", "transform": instantiate(cfg.transform, train=True)})
    assert isinstance(loader.sampler, D.TrainSampler)  # Places365's "train-standard" is a train split
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 16, 16) and len(y) == 2


def test_an_unprepared_root_says_run_prepare_in_one_line(tmp_path):
    with pytest.raises(LauncherError, match="not a prepared Places365 root.*launcher prepare dataset=places365") as err:
        D.build_dataset(config(tmp_path / "empty"), "val")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- launcher bench


def test_bench_covers_train_and_val(root, tmp_path, capsys):
    """bench with dataset=places365_synthetic, and from the command line without dataset= (the root's
    own dataset config: its adapter reads it)."""
    table = tmp_path / "t.csv"
    small = ["loader.batch_size=4", "loader.num_workers=0", "transform.train_crop_size=16", "cluster=debug"]
    args = [f"storage.root={root}", *small, f"bench.table={table}"]
    assert launch("bench", [*args, "dataset=places365_synthetic", "bench.epochs=2"]) == 0
    out = capsys.readouterr().out
    as_run = cli("bench", *args, "bench.split=val", "transform.eval_crop_size=16", cwd=tmp_path)
    assert as_run.returncode == 0, as_run.stderr
    out += as_run.stdout
    assert "coverage train epoch 1" in out and "coverage val epoch 0: 10 of 10 samples seen" in out
    assert "FAILED" not in out
    with open(table, newline="") as f:
        train, val = list(csv.DictReader(f))
    assert (train["coverage"], val["coverage"]) == ("ok", "ok") and (train["images"], val["images"]) == ("24", "10")
