"""launcher.data: the manifest dataset equals torchvision's ImageNet, transforms, samplers, loaders."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from launcher import compose_config
from launcher import data as D
from launcher.core.errors import LauncherError
from launcher.data import fastpath, nodes

from conftest import REPO, dataset_overrides, launch, storage_overrides
from hostile_files import BOMBS, NON_REGULAR, deadline, jpeg, plant

ATTRIBUTES = ("classes", "wnids", "class_to_idx", "wnid_to_idx", "samples", "targets", "imgs", "root", "split")


@pytest.fixture(scope="session")
def prepared(archives, tmp_path_factory):
    """name -> a root `launcher prepare` made of that shape's archives (built once)."""
    cache = {}

    def get(name: str = "small") -> Path:
        if name not in cache:
            result = archives(name)
            root = tmp_path_factory.mktemp(f"prepared-{name}") / "root"
            overrides = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
            assert launch("prepare", overrides) == 0
            cache[name] = root
        return cache[name]

    return get


def config(root: Path, *overrides: str):
    return compose_config("bench", [f"storage.root={root}", *overrides])


# ---------------------------------------------------------------- the dataset


@pytest.mark.parametrize("shape", ["small", "uneven"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_manifest_dataset_equals_torchvision(prepared, shape, split):
    root = prepared(shape)
    ours = D.build_dataset(config(root), split)
    theirs = torchvision.datasets.ImageNet(str(root), split)
    assert isinstance(ours, torchvision.datasets.ImageNet)
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs) and ours.extensions == theirs.extensions
    assert all(isinstance(c, tuple) for c in ours.classes)


def test_relative_root_gives_torchvisions_relative_paths(prepared, monkeypatch):
    root = prepared()
    monkeypatch.chdir(root.parent)
    ours = D.build_dataset(config(Path("root")), "val")
    assert ours.samples == torchvision.datasets.ImageNet("root", "val").samples
    assert ours.samples[0][0].startswith("root/val/")


@pytest.mark.parametrize("cached", [True, False])
def test_manifest_construction_walks_no_directory(prepared, monkeypatch, tmp_path, cached):
    """A constant number of metadata operations: no scandir/listdir/walk; stats of the complete
    record, meta.bin, the split folder and the manifest, then one read (the columns cache) when cached."""
    root = prepared("uneven")
    state = tmp_path / "state"
    shutil.copytree(root / ".launcher", state, ignore=shutil.ignore_patterns("*.columns", "logs", "units"))
    cfg = config(root, f"storage.state_dir={state}")
    if cached:
        D.build_dataset(cfg, "train", transform=None)
        assert (state / "manifest-train.columns").exists()
    counts = {"stat": 0, "open": 0}

    def refuse(*args, **kwargs):
        raise AssertionError("directory walked")

    real_stat, real_open, real_os_open = os.stat, open, os.open

    def counting_stat(*args, **kwargs):
        counts["stat"] += 1
        return real_stat(*args, **kwargs)

    def counting_open(*args, **kwargs):
        counts["open"] += 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(os, "listdir", refuse)
    monkeypatch.setattr(os, "walk", refuse)
    monkeypatch.setattr(os, "stat", counting_stat)

    def counting_os_open(*args, **kwargs):  # state is read relative to opened folders (launcher.archive.safefs)
        counts["open"] += 1
        return real_os_open(*args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    dataset = D.build_dataset(cfg, "train", transform=None)
    monkeypatch.undo()
    assert len(dataset) > 100
    # cold: two cache files looked for, the manifest read (its folder opened, then the file), the cache written
    assert counts["stat"] <= (4 if cached else 5) and counts["open"] <= (1 if cached else 6), counts
    assert list(dataset.samples) == torchvision.datasets.ImageNet(str(root), "train").samples


def test_columns_cache_follows_the_manifest(prepared, tmp_path, monkeypatch):
    """A changed manifest is read again; one in another order than ImageFolder's is used as it is;
    a read-only state folder caches in the user's cache folder."""
    root = prepared()
    state = tmp_path / "state"
    shutil.copytree(root / ".launcher", state, ignore=shutil.ignore_patterns("*.columns", "logs", "units"))
    cfg = config(root, f"storage.state_dir={state}")
    first = D.build_dataset(cfg, "val", transform=None)
    assert isinstance(first.samples, D.SampleList) and (state / "manifest-val.columns").exists()
    path = state / "manifest-val.json"
    manifest = json.loads(path.read_text())
    for column in ("paths", "targets", "sizes"):  # one image fewer: still ImageFolder's order
        del manifest[column][-1]
    path.write_text(json.dumps(manifest))
    fewer = D.build_dataset(cfg, "val", transform=None)
    assert len(fewer) == len(first) - 1 and list(fewer.samples) == list(first.samples)[:-1]
    manifest["paths"] = [manifest["paths"][-1], *manifest["paths"][:-1]]  # not ImageFolder's order
    manifest["targets"] = [manifest["targets"][-1], *manifest["targets"][:-1]]
    path.write_text(json.dumps(manifest))
    odd = D.build_dataset(cfg, "val", transform=None)
    assert isinstance(odd.samples, list) and odd.targets == manifest["targets"]
    assert odd.samples[0] == (os.path.join(str(root), "val", manifest["paths"][0]), manifest["targets"][0])
    shutil.copy(root / ".launcher" / "manifest-val.json", path)
    (state / "manifest-val.columns").unlink()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state.chmod(0o555)
    try:
        again = D.build_dataset(cfg, "val", transform=None)
    finally:
        state.chmod(0o755)
    assert again.samples == first.samples
    if os.geteuid() != 0:  # root writes into read-only folders
        assert list((tmp_path / "cache" / "launcher").glob("manifest-val-*.columns"))


def test_samples_behave_like_torchvisions_list(prepared):
    root = prepared()
    ours, theirs = (
        D.build_dataset(config(root), "train").samples,
        torchvision.datasets.ImageNet(str(root), "train").samples,
    )
    assert ours == theirs and theirs == ours
    assert not ours != theirs  # noqa: SIM202  (__ne__ as well)
    assert ours[0] == theirs[0] and ours[-1] == theirs[-1] and ours[3:9] == theirs[3:9] and len(ours) == len(theirs)
    assert ours != theirs[:-1] and ours != [*theirs[:-1], (theirs[-1][0], theirs[-1][1] + 1)]
    with pytest.raises(IndexError):
        ours[len(theirs)]
    import pickle

    assert pickle.loads(pickle.dumps(ours)) == theirs


def test_moved_state_dir_finds_the_roots_own_manifest(prepared, tmp_path, capsys):
    """storage.state_dir pointing elsewhere (e.g. moved for a read-only root): the manifest in the
    root's own .launcher is used, without a directory walk and without a word."""
    root = prepared()
    capsys.readouterr()
    ours = D.build_dataset(config(root, f"storage.state_dir={tmp_path}/empty"), "train")
    assert isinstance(ours.samples, D.SampleList)  # from the manifest, not torchvision's scan
    assert ours.samples == torchvision.datasets.ImageNet(str(root), "train").samples
    assert capsys.readouterr().err == ""


def test_without_manifest_falls_back_to_torchvisions_scan_and_says_so_once(oracle, tmp_path, capsys, monkeypatch):
    """A root prepared by torchvision (no records of ours): torchvision's scan, and one note naming
    the folders looked in and the slow path."""
    monkeypatch.setattr(nodes, "SAID", set(), raising=False)
    root = oracle()
    cfg = config(root, f"storage.state_dir={tmp_path}/empty")
    ours = D.build_dataset(cfg, "train")
    D.build_dataset(cfg, "train")
    theirs = torchvision.datasets.ImageNet(str(root), "train")
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    err = capsys.readouterr().err
    assert err.count("no prepare manifest of train") == 1 and f"{tmp_path}/empty or {root}/.launcher" in err
    assert "directory scan" in err and "storage.state_dir" in err
    off = D.build_dataset(config(root, "loader.use_manifest=false"), "val")
    assert off.samples == torchvision.datasets.ImageNet(str(root), "val").samples
    assert capsys.readouterr().err == ""


def test_root_whose_prepare_failed_is_refused_with_the_reason(archives, tmp_path, capsys, monkeypatch):
    """The val archive failed its md5 (its images are on disk all the same): the loader refuses val
    with the md5 error from the records and names loader.allow_incomplete; verify reports the same;
    train, which completed, loads."""
    monkeypatch.setattr(nodes, "SAID", set(), raising=False)
    result = archives("tiny")
    root = tmp_path / "root"
    overrides = [
        *storage_overrides(result.archive_dir, root),
        *dataset_overrides(result),
        "dataset.archives.val.md5=00000000000000000000000000000000",
        "cluster=debug",
    ]
    assert launch("prepare", overrides) != 0
    assert any((root / "val").iterdir())  # the val images are there
    with pytest.raises(LauncherError) as err:
        D.build_dataset(config(root), "val")
    message = str(err.value)
    assert f"{root}/val is not whole" in message and "md5-val: md5 mismatch for" in message
    assert "ILSVRC2012_img_val.tar" in message and "loader.allow_incomplete=true" in message
    assert len(D.build_dataset(config(root), "train")) == sum(result.train_counts.values())
    capsys.readouterr()
    anyway = D.build_dataset(config(root, "loader.allow_incomplete=true"), "val")
    assert len(anyway) == len(torchvision.datasets.ImageNet(str(root), "val"))
    assert "loader.allow_incomplete=true" in capsys.readouterr().err
    assert launch("verify", [*storage_overrides(result.archive_dir, root), "cluster=debug", "split=val"]) != 0
    report = json.loads((root / ".launcher" / "verify-val.json").read_text())
    (finding,) = [f for f in report["failures"] if f["check"] == "prepare"]
    assert finding["path"] == "val" and "md5 mismatch for" in finding["reason"]
    assert "ILSVRC2012_img_val.tar" in finding["reason"]


def test_unprepared_root_says_run_prepare_and_never_extracts(archives, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for name in archives("tiny").files.values():  # torchvision would extract these
        shutil.copy(name, root / Path(name).name)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(LauncherError, match="launcher prepare") as err:
        D.build_dataset(config(root), "train")
    assert "meta.bin" in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == before


def test_odd_files_decode_like_pil(prepared, archives, tmp_path):
    """CMYK, PNG named .JPEG, grayscale: decoded to RGB uint8 with the same pixels as PIL's loader."""
    root = prepared()
    odd = [root / rel for rel in archives().odd_files]
    assert len(odd) == 3
    bmp = tmp_path / "n00000000_1.JPEG"  # a format torchvision.io cannot read: PIL decodes it
    Image.new("RGB", (5, 4), (10, 200, 30)).save(bmp, format="BMP")
    for path in [*odd, bmp]:
        ours = D.decode_file(str(path))
        with Image.open(path) as im:
            theirs = v2.functional.pil_to_tensor(im.convert("RGB"))
        assert ours.dtype == torch.uint8 and ours.shape[0] == 3
        assert torch.equal(ours, theirs), path.name


# ---------------------------------------------------------------- transforms


OPTIONS = sorted(p.stem for p in (REPO / "conf" / "transform").glob("*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_transform_option_builds_and_runs(option):
    cfg = compose_config(
        "bench", [f"transform={option}", "transform.train_crop_size=48", "transform.eval_crop_size=40"]
    )
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    train, evaluate = D.build_transforms(cfg.transform, True), D.build_transforms(cfg.transform, False)
    assert isinstance(train, v2.Compose) and isinstance(evaluate, v2.Compose)
    out = train(image)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert evaluate(image).shape == (3, 40, 40)
    kinds = {type(t).__name__ for t in train.transforms}
    policy = {"randaugment": "RandAugment", "autoaugment": "AutoAugment", "trivialaugment": "TrivialAugmentWide"}
    assert (policy[option] in kinds) if option in policy else not kinds & set(policy.values())
    assert ("RandomResizedCrop" in kinds) == (option != "none")
    assert "RandomResizedCrop" not in {type(t).__name__ for t in evaluate.transforms}


def test_transform_values_come_from_config():
    node = {
        "train_crop_size": 64,
        "eval_crop_size": 56,
        "crop_ratio": 0.8,
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "scale": [0.5, 1.0],
        "hflip": 0.0,
    }
    train, evaluate = D.build_transforms(node, True), D.build_transforms(node, False)
    rrc = next(t for t in train.transforms if isinstance(t, v2.RandomResizedCrop))
    assert tuple(rrc.size) == (64, 64) and rrc.scale == (0.5, 1.0) and rrc.interpolation == v2.InterpolationMode.BICUBIC
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in train.transforms)
    resize = next(t for t in evaluate.transforms if isinstance(t, v2.Resize))
    assert resize.size == [70]  # floor(56 / 0.8)
    norm = next(t for t in evaluate.transforms if isinstance(t, v2.Normalize))
    assert norm.mean == [0.5, 0.5, 0.5] and norm.std == [0.25, 0.25, 0.25]
    uint8 = D.build_transforms({**node, "output": "uint8"}, False)
    assert uint8(torch.zeros(3, 80, 80, dtype=torch.uint8)).dtype == torch.uint8
    for bad in ({"interpolation": "lanczos"}, {"output": "half"}, {"policy": "mixup"}, {"crop_size": 3}):
        with pytest.raises(LauncherError):
            D.build_transforms(bad, True)


@pytest.mark.parametrize("output, hflip", [("float", 0.5), ("uint8", 0.5), ("uint8", 0.3)])
def test_in_place_batch_equals_per_sample_pipeline(prepared, output, hflip, monkeypatch):
    """__getitems__ + collate (one tensor, written in place) == the v2 pipeline per sample, stacked;
    uint8 batches get each JPEG's resized crop straight from torch's kernel, flipped or not."""
    cfg = config(prepared(), f"transform.output={output}", "transform.train_crop_size=40", f"transform.hflip={hflip}")
    dataset = D.build_dataset(cfg, "train")
    real, written = D.resize_into, []
    monkeypatch.setattr(fastpath, "resize_into", lambda *args: written.append(args) or real(*args))
    indices = list(range(len(dataset)))[::-1][:40]
    torch.manual_seed(5)
    images, targets = D.collate(dataset.__getitems__(indices))
    torch.manual_seed(5)
    expected = torch.stack([dataset[i][0] for i in indices])
    assert images.shape == (len(indices), 3, 40, 40) and images.dtype == expected.dtype
    assert torch.equal(images, expected)
    layout = torch.channels_last if output == "uint8" else torch.contiguous_format  # uint8: HWC in memory
    assert images.is_contiguous(memory_format=layout)
    assert targets.tolist() == [dataset.targets[i] for i in indices]
    assert bool(written) == (output == "uint8" and D._jpeg is not None)


@pytest.mark.parametrize("size", [(40, 40), (224, 224), (97, 61)])
@pytest.mark.parametrize("layout", ["channels-last", "planes"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_into_a_slot_equals_resize_image(size, layout, interpolation):
    """Straight into a channels-last batch slot (torch's uint8 kernel) or by the usual way: the
    pixels of v2's resize_image, upscaling, downscaling and same size."""
    mode = D.INTERPOLATIONS[interpolation]
    step = v2.RandomResizedCrop(size, interpolation=mode, antialias=True)
    generator = torch.Generator().manual_seed(sum(size))
    for height, width in [(40, 40), (300, 200), (75, 500), (23, 31)]:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).permute(2, 0, 1)
        if layout == "planes":
            image = image.contiguous()
        batch = torch.zeros(3, *size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
        D.resize_into(image, batch[1], step)
        expected = v2.functional.resize_image(image, list(size), interpolation=mode, antialias=True)
        assert torch.equal(batch[1], expected), (height, width)
        assert not batch[0].any() and not batch[2].any()


@pytest.mark.parametrize(
    "size, scale, ratio",
    [
        ((375, 500), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((10, 300), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((300, 10), (0.9, 1.0), (3 / 4, 4 / 3)),
        ((50, 60), (0.5, 1.0), (0.2, 5.0)),
        ((1, 1), (0.08, 1.0), (3 / 4, 4 / 3)),
    ],
)
def test_crop_box_draws_what_make_params_draws(size, scale, ratio):
    """Same box and same random state after it, including the central-crop fallback (narrow images)."""
    step = v2.RandomResizedCrop(224, scale=scale, ratio=ratio)
    for seed in range(200):
        torch.manual_seed(seed)
        p = step.make_params([torch.empty(3, *size)])
        expected = (p["top"], p["left"], p["height"], p["width"]), torch.rand(1)
        torch.manual_seed(seed)
        got = D.crop_box(step, *size), torch.rand(1)
        assert got[0] == expected[0] and torch.equal(got[1], expected[1]), seed


@pytest.mark.skipif(D._jpeg is None, reason="built without libjpeg's headers: no fused decode")
@pytest.mark.parametrize("output", ["float", "uint8"])
def test_crop_decoded_alone_gives_the_v2_pipelines_pixels(prepared, output, monkeypatch):
    """Every train file (odd ones too: CMYK, PNG named .JPEG, grayscale) through the fused path equals
    torchvision's v2 pipeline on the whole decode, draw for draw; JPEGs went through the fused path."""
    fused, real = [], D._jpeg

    class Spy:
        size = staticmethod(real.size)

        @staticmethod
        def decode_crop(*args):
            fused.append(args)
            return real.decode_crop(*args)

    monkeypatch.setattr(fastpath, "_jpeg", Spy)
    dataset = D.build_dataset(config(prepared(), f"transform.output={output}"), "train")
    pipeline = dataset.transform
    for k, (path, _) in enumerate(dataset.samples):
        torch.manual_seed(k)
        got = pipeline.finish(pipeline.head_of_file(path))
        torch.manual_seed(k)
        expected = v2.Compose(pipeline.transforms)(D.decode_file(path))
        assert torch.equal(got, expected), path
    assert 0 < len(fused) < len(dataset.samples)  # the odd files went the usual way


def test_uint8_output_normalized_on_device_equals_float_output(prepared):
    root = prepared()
    floats = D.build_dataset(config(root, "transform.train_crop_size=32"), "train")
    uint8 = D.build_dataset(config(root, "transform.train_crop_size=32", "transform.output=uint8"), "train")
    indices = list(range(0, 40, 3))
    torch.manual_seed(1)
    expected, _ = D.collate(floats.__getitems__(indices))
    torch.manual_seed(1)
    raw, _ = D.collate(uint8.__getitems__(indices))
    assert raw.dtype == torch.uint8
    got = D.normalize_on_device(raw, uint8.transform.mean, uint8.transform.std, device="cpu")
    assert got.dtype == torch.float32 and torch.equal(got, expected)


# ---------------------------------------------------------------- samplers, ranks, loaders


@pytest.mark.parametrize("size,world", [(10, 3), (7, 2), (5, 8), (30, 1), (0, 2)])
def test_eval_sampler_covers_every_index_exactly_once(size, world):
    seen = [i for rank in range(world) for i in D.EvalSampler(size, rank, world)]
    assert sorted(seen) == list(range(size))
    assert sum(len(D.EvalSampler(size, r, world)) for r in range(world)) == size
    padded = [i for r in range(world) for i in DistributedSampler(range(size), world, r, shuffle=False)]
    assert (len(padded) != size) == (size % world != 0)  # what EvalSampler avoids


RANK_KEYS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")


@pytest.fixture
def no_ranks(monkeypatch):
    """No launcher variables, and the once-per-process notes not yet said."""
    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(nodes, "SAID", set(), raising=False)
    return monkeypatch


def test_rank_and_world_from_env(no_ranks, capsys):
    monkeypatch = no_ranks
    assert D.rank_and_world() == (0, 1)
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # a process srun started as task 3 of 4
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert D.rank_and_world() == (3, 4)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # `srun -n1` inside a 4-task job: one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert D.rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert D.rank_and_world() == (1, 2)
    monkeypatch.setenv("RANK", "1\u0661")  # an Arabic-Indic digit: int() would take it
    with pytest.raises(LauncherError, match="RANK='1\u0661' and WORLD_SIZE='2'"):
        D.rank_and_world()
    assert capsys.readouterr().err == ""


def test_sbatch_without_srun_loads_the_whole_split_and_says_why_once(prepared, no_ranks, capsys):
    """`sbatch --ntasks=2 --wrap 'python train.py'`: one process with SLURM_PROCID=0, SLURM_NTASKS=2
    and no step variables: the whole split, and one line on stderr."""
    no_ranks.setenv("SLURM_PROCID", "0")
    no_ranks.setenv("SLURM_NTASKS", "2")
    cfg = config(prepared(), "loader.batch_size=2", "loader.num_workers=0")
    capsys.readouterr()  # what preparing the root printed
    train, val = D.build_loader(cfg, "train"), D.build_loader(cfg, "val")
    assert len(val.sampler) == len(val.dataset) and len(train.sampler) == len(train.dataset)
    assert (train.sampler.rank, train.sampler.num_replicas) == (0, 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SLURM_NTASKS=2" in err and "srun" in err and "whole split" in err


def indices(loader) -> list[int]:
    """The indices of one pass over the loader, as the DataLoader draws them."""
    return [i for batch in loader.batch_sampler for i in batch]


def test_train_sampler_reshuffles_every_pass_unless_pinned(prepared, no_ranks):
    """pytorch/examples-style code (no set_epoch outside DDP) gets a new order every epoch;
    once set_epoch(e) is called, epoch e is used until the next call; two ranks stay disjoint and
    agree without set_epoch."""
    cfg = config(prepared(), "loader.batch_size=2", "loader.num_workers=0", "loader.drop_last=false")
    train = D.build_loader(cfg, "train")
    first, second, third = indices(train), indices(train), indices(train)
    n = len(train.dataset)
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second and second != third and first != third
    D.set_epoch(train, 5)
    pinned = indices(train)
    assert indices(train) == pinned  # set_epoch called: the caller owns the epoch (a look changes nothing)
    again = D.build_loader(cfg, "train")
    D.set_epoch(again, 5)
    assert indices(again) == pinned
    D.set_epoch(again, 6)
    assert indices(again) != pinned
    fresh = D.build_loader(cfg, "train")  # never pinned: the passes are epochs 0, 1, 2, ...
    assert [indices(fresh) for _ in range(3)] == [first, second, third]
    D.set_epoch(fresh, 1)
    assert indices(fresh) == second
    # through the DataLoader itself (targets in the order it delivers them)
    plain = D.build_loader(cfg, "train", dataset=D.build_dataset(cfg, "train", transform=v2.Resize((8, 8))))
    epochs = [torch.cat([y for _, y in plain]).tolist() for _ in range(2)]
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])
    # two ranks, no set_epoch: every pass the ranks are disjoint and cover the split
    dataset = train.dataset
    options = {"batch_size": 1, "num_workers": 0, "drop_last": True}
    ranks = [D.make_loader(dataset, True, options, r, 2) for r in (0, 1)]
    passes = [[indices(loader) for _ in range(3)] for loader in ranks]
    for k in range(3):
        zero, one = passes[0][k], passes[1][k]
        assert not set(zero) & set(one) and len(set(zero) | set(one)) == 2 * (n // 2)
    assert passes[0][0] != passes[0][1]


@pytest.mark.parametrize("world", [1, 2])
def test_batch_larger_than_a_ranks_share_is_an_error(prepared, no_ranks, world):
    """drop_last=true and a per-rank batch larger than the rank's share: an error naming the
    numbers and the override, not an epoch of no batches."""
    dataset = D.build_dataset(config(prepared()), "train", transform=None)
    n = len(dataset)
    share = n // world
    options = {"batch_size": share + 1, "num_workers": 0, "drop_last": True}
    with pytest.raises(LauncherError) as err:
        D.make_loader(dataset, True, options, world - 1, world)
    message = str(err.value)
    assert f"loader.batch_size={share + 1} (per rank)" in message and f"{share} of {n} images" in message
    assert f"loader.batch_size={share} or less" in message and "loader.drop_last=false" in message
    options["drop_last"] = False
    assert len(D.make_loader(dataset, True, options, world - 1, world)) == 1
    options.update(batch_size=share, drop_last=True)
    assert len(D.make_loader(dataset, True, options, world - 1, world)) == 1


def test_loader_takes_every_option(prepared, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    overrides = [
        "loader.batch_size=6",
        "loader.eval_batch_size=5",
        "loader.num_workers=1",
        "loader.prefetch_factor=3",
        "loader.persistent_workers=false",
        "loader.seed=7",
        "loader.drop_last=true",
    ]
    cfg = config(prepared(), *overrides)
    train, val = D.build_loader(cfg, "train"), D.build_loader(cfg, "val")
    assert isinstance(train.sampler, DistributedSampler)
    s = train.sampler
    assert (s.rank, s.num_replicas, s.seed, s.shuffle, s.drop_last) == (1, 2, 7, True, True)
    assert (train.batch_size, train.num_workers, train.prefetch_factor, train.persistent_workers) == (6, 1, 3, False)
    assert train.drop_last and not train.pin_memory  # no GPU here
    assert isinstance(val.sampler, D.EvalSampler) and (val.sampler.rank, val.sampler.world_size) == (1, 2)
    assert val.batch_size == 5 and not val.drop_last
    before = list(train.sampler)
    D.set_epoch(train, 1)
    assert sorted(list(train.sampler)) != before or len(before) < 2


def test_loader_epoch_through_workers_with_plain_dicts(prepared):
    root = prepared("uneven")
    cfg = {
        "storage": {"root": str(root), "state_dir": str(root / ".launcher")},
        "transform": {"train_crop_size": 32, "eval_crop_size": 32},
        "loader": {"batch_size": 8, "num_workers": 2, "drop_last": False},
    }
    loader = D.build_loader(cfg, "val")
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == len(loader.dataset)
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and x.shape[0] == len(y)
    assert torch.cat([y for _, y in batches]).tolist() == loader.dataset.targets  # eval order, one rank
    cfg["loader"]["num_workers"] = 0  # the same pixels as computed here (workers reuse their shared memory)
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.cat([x for x, _ in D.build_loader(cfg, "val")]))
    cfg["loader"]["num_workers"] = 2
    cfg["transform"]["output"] = "uint8"  # train batches cross the worker boundary as written, channels-last
    train = D.build_loader(cfg, "train")
    batches = list(train)
    assert sum(len(y) for _, y in batches) == len(train.dataset)
    for x, y in batches:
        assert (
            x.dtype == torch.uint8
            and x.shape == (len(y), 3, 32, 32)
            and x.is_contiguous(memory_format=torch.channels_last)
        )


@pytest.mark.parametrize("output", ["float", "uint8"])
def test_workers_without_memfd_send_torchs_shared_memory(prepared, monkeypatch, output):
    """Where os.memfd_create is missing (not Linux) each batch is a fresh torch shared-memory tensor."""
    monkeypatch.setattr(D.shared_batches, "AVAILABLE", False)  # inherited by the forked workers
    root = prepared("uneven")
    cfg = {
        "storage": {"root": str(root), "state_dir": str(root / ".launcher")},
        "transform": {"eval_crop_size": 32, "output": output},
        "loader": {"batch_size": 8, "num_workers": 2, "drop_last": False},
    }
    through_workers = list(D.build_loader(cfg, "val"))
    cfg["loader"]["num_workers"] = 0
    here = list(D.build_loader(cfg, "val"))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(through_workers, here))
    assert len(through_workers) == len(here)


def test_instantiate_builds_every_object(prepared):
    root = prepared()
    cfg = config(root, "transform=randaugment", "loader.batch_size=4", "loader.num_workers=0")
    tf = instantiate(cfg.transform, train=True)
    assert isinstance(tf, D.Pipeline) and any(isinstance(t, v2.RandAugment) for t in tf.transforms)
    dataset = instantiate(cfg.loader.dataset, split="val", transform=instantiate(cfg.transform, train=False))
    assert isinstance(dataset, D.ImageNet) and dataset.samples == D.build_dataset(cfg, "val").samples
    loader = instantiate(cfg.loader, dataset={"split": "train", "transform": tf})
    assert isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.sampler, DistributedSampler)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 224, 224) and len(y) == 4


# ---------------------------------------------------------------- bounds: files, pixels, scans


def decoders(path: Path) -> dict:
    """Every way a loader decodes a file: decode_file, PIL's, the eval pipeline, the fused train crop."""
    train = D.build_transforms({"train_crop_size": 32}, train=True)
    evaluate = D.build_transforms({"eval_crop_size": 32}, train=False)
    calls = {
        "decode_file": lambda: D.decode_file(str(path)),
        "decode_with_pil": lambda: D.decode_with_pil(str(path)),
        "eval": lambda: evaluate.head_of_file(str(path)),
        "train": lambda: train.head_of_file(str(path)),
    }
    if train.writes_crop or D._jpeg is not None:
        uint8 = D.build_transforms({"train_crop_size": 32, "output": "uint8"}, train=True)
        out = torch.empty((3, 32, 32), dtype=torch.uint8)
        calls["train-uint8-slot"] = lambda: uint8.write_file(str(path), out)
    return calls


@pytest.mark.parametrize("kind", NON_REGULAR)
def test_non_regular_files_are_refused_naming_the_file(kind, tmp_path):
    """A FIFO (an open that waits forever), a link to /dev/zero (a read that never ends), a socket or a
    folder where an image belongs: every decoder refuses it at once, naming the file."""
    path = tmp_path / "n01440764_1.JPEG"
    plant(kind, path)
    for name, call in decoders(path).items():
        with deadline(10), pytest.raises(D.ImageRefused, match="not a regular file") as caught:
            call()
        assert str(path) in str(caught.value), name


@pytest.mark.parametrize("bomb", BOMBS)
def test_bomb_images_are_refused_before_decoding(bomb, tmp_path):
    """A header declaring 30000x30000 pixels (2.7 GB of RGB) and a progressive JPEG of 1000 scans (a
    second of libjpeg): refused naming the file and the option, in milliseconds, no pixels allocated."""
    import resource

    path = tmp_path / f"{bomb}.JPEG"
    path.write_bytes(BOMBS[bomb]())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, call in decoders(path).items():
        started = time.perf_counter()
        with pytest.raises(D.ImageRefused, match=f"transform.max_{bomb}") as caught:
            call()
        assert str(path) in str(caught.value), name
        assert time.perf_counter() - started < 0.5, name
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10  # KiB: under 256 MiB


def test_bounds_come_from_the_transform_node(tmp_path):
    path = tmp_path / "small.JPEG"
    path.write_bytes(jpeg((40, 30)))
    assert D.decode_file(str(path)).shape == (3, 30, 40)
    tight = D.build_transforms({"max_pixels": 1000, "max_file_bytes": 1 << 20, "max_scans": 5}, train=False)
    assert (tight.limits.max_pixels, tight.limits.max_file_bytes, tight.limits.max_scans) == (1000, 1 << 20, 5)
    with pytest.raises(D.ImageRefused, match="40x30 = 1200 pixels, more than transform.max_pixels=1000"):
        tight.head_of_file(str(path))
    small = D.build_transforms({"max_file_bytes": 100}, train=True)
    with pytest.raises(D.ImageRefused, match="more than transform.max_file_bytes=100"):
        small.head_of_file(str(path))
    progressive = tmp_path / "progressive.JPEG"
    progressive.write_bytes(jpeg((40, 30), progressive=True))
    for train in (False, True):
        few = D.build_transforms({"max_scans": 3, "train_crop_size": 16}, train=train)
        with pytest.raises(D.ImageRefused, match="transform.max_scans=3"):
            few.head_of_file(str(progressive))
        assert D.build_transforms({"train_crop_size": 16}, train=train).head_of_file(str(progressive)).shape[0] == 3
    for bad in ({"max_pixels": 0}, {"max_scans": -1}, {"max_file_bytes": True}):
        with pytest.raises(LauncherError, match=f"transform.{next(iter(bad))}="):
            D.build_transforms(bad, train=True)


@pytest.mark.parametrize("choice", ["synthetic", "imagenet", "places365", "places365_synthetic"])
def test_an_unprepared_root_names_the_configs_dataset_in_the_prepare_it_prints(tmp_path, choice):
    """The printed `launcher prepare` carries the config's dataset choice (a synthetic set's user gets
    dataset=synthetic, not the real archives' defaults) and is quoted to paste: a root with a space."""
    root = tmp_path / "no root yet"
    cfg = compose_config("bench", [f"dataset={choice}", f"storage.root={root}"])
    with pytest.raises(LauncherError) as err:
        D.build_dataset(cfg, "val")
    message = str(err.value)
    command = message.split("Run `", 1)[1].split("`", 1)[0]
    assert "\n" not in message and "is not a prepared" in message
    assert shlex.split(command) == ["launcher", "prepare", f"dataset={choice}", f"storage.root={root}", "split=val"]
