"""The ImageNet (ILSVRC2012) adapter: its labels come from the devkit (meta.mat + the validation
ground truth), its root holds meta.bin beside train/ and val/, read by torchvision.datasets.ImageNet;
its synthetic archives come from launcher.datasets.imagenet.synth. The facts (archive names, md5s,
counts, patterns, devkit members, each split's shape) are in conf/dataset/imagenet.yaml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive.index import archive_identity, same_archive
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json
from launcher.datasets.imagenet.devkit import Devkit, parse_devkit
from launcher.prepare.inputs import digest

if TYPE_CHECKING:
    from launcher.prepare.request import PrepareRequest

# the torchvision class that reads a prepared root (and the tests' oracle)
TORCHVISION_CLASS = "torchvision.datasets.ImageNet"
# the pipeline commands this adapter is wired for (launcher.cli refuses the others in one line)
PIPELINE = ("prepare", "verify", "status", "stage", "bench")


def read_labels(req: PrepareRequest) -> tuple[Devkit, str]:
    """The devkit parsed (meta.mat and the ground truth, every name checked), cached in state_dir while
    the devkit file is unchanged; and its fingerprint."""
    path = req.labels_archive()
    cached = read_json(req.layout.devkit_file)
    if same_archive(cached, path):
        return Devkit.from_json(cached["devkit"]), cached["fingerprint"]
    print(f"reading the devkit {path.name}", file=sys.stderr, flush=True)
    devkit = parse_devkit(
        path,
        req.devkit_meta,
        req.devkit_ground_truth,
        req.devkit_max_bytes,
        wnid_pattern=req.wnid_pattern,
        id_pattern=req.ilsvrc_id_pattern,
    )
    data = devkit.to_json()
    fp = digest(data)
    ident = archive_identity(path, req.archives[req.labels_key][1])
    if not req.dry_run:  # a dry run keeps what it read in memory
        write_json(req.layout.devkit_file, {"archive": ident, "fingerprint": fp, "devkit": data})
    return devkit, fp


def check_labels(req: PrepareRequest, devkit: Devkit, indexes: dict) -> None:
    """Class tars <-> devkit leaves, and the devkit's totals <-> dataset.expected."""
    leaves = set(devkit.wnid_to_classes)
    problems = []
    if req.expected.get("classes") is not None and len(leaves) != req.expected["classes"]:
        problems.append(
            f"the devkit lists {len(leaves)} classes, dataset.expected.classes is {req.expected['classes']}"
        )
    if "train" in indexes:
        tars = {m[0][: -len(".tar")] for m in indexes["train"]["members"]}
        if tars - leaves:
            problems.append(f"class tars with no devkit class: {', '.join(sorted(tars - leaves)[:5])}")
        if leaves - tars:
            problems.append(f"devkit classes with no class tar: {', '.join(sorted(leaves - tars)[:5])}")
        total = sum(devkit.num_train_images.values())
        if req.expected.get("train") is not None and total != req.expected["train"]:
            problems.append(
                f"the devkit announces {total} train images, dataset.expected.train is {req.expected['train']}"
            )
    if "val" in indexes and req.expected.get("val") is not None and len(devkit.val_wnids) != req.expected["val"]:
        problems.append(
            f"the ground truth has {len(devkit.val_wnids)} val labels, dataset.expected.val is {req.expected['val']}"
        )
    if problems:
        raise LauncherError(
            f"The archives in {req.archive_dir} do not match dataset config: "
            + "; ".join(problems)
            + ". Use the archives the dataset describes, or a dataset config that describes these "
            "(dataset=synthetic takes every count from the devkit)."
        )


def listing(devkit: Devkit, source: dict) -> int:
    """What a split's index is checked against: the number of ground-truth lines (a flat split
    labelled by image number; class tars name themselves)."""
    return len(devkit.val_wnids)


def member_count(devkit: Devkit, split: str) -> int:
    """How many index rows a split's archive should have: class tars for train, images for val."""
    return len(devkit.wnid_to_classes if split == "train" else devkit.val_wnids)


def check_covered(split: str, files: list, kit: dict) -> None:
    """Every devkit class has its train folder; val holds one file per ground-truth line."""
    if split == "train":
        classes = {f[0] for f in files}
        if classes != set(kit["wnid_to_classes"]):
            raise LauncherError(f"train is missing classes {sorted(set(kit['wnid_to_classes']) - classes)[:5]}")
    elif len(files) != len(kit["val_wnids"]):
        raise LauncherError(f"val holds {len(files)} images, the ground truth {len(kit['val_wnids'])}")


def meta_args(req: PrepareRequest, identity: dict) -> dict:
    """The meta unit's arguments: the cached devkit in, root/meta.bin out (`outputs`: what it leaves)."""
    meta_bin = str(req.layout.meta_bin)
    return {"devkit": str(req.layout.devkit_file), "meta_bin": meta_bin, "outputs": [meta_bin]}


def write_meta(devkit: str, meta_bin: str) -> dict:
    """The meta unit: root/meta.bin from the cached devkit, as torchvision writes it."""
    from launcher.archive.extract import write_meta as write_meta_bin

    return write_meta_bin(devkit, meta_bin)


def folders_of(kit: dict, split: str) -> set[str]:
    """The class folders a prepared split holds: one per devkit class (train), per labelled class (val)."""
    return set(kit["wnid_to_classes"] if split == "train" else kit["val_wnids"])


def manifest(split: str, files: list, kit: dict) -> dict:
    """The split's manifest: every file under its WNID folder, targets in sorted-WNID order."""
    from launcher.core.manifest import build_manifest

    return build_manifest(split, files, kit["wnid_to_classes"])


def synthesize(archive_dir: Path, options: dict, dataset: dict, overrides: list[str]) -> list[str]:
    """`launcher synth`: ILSVRC2012-shaped archives into archive_dir; the lines to print, the last one
    the exact `launcher prepare` for them."""
    from launcher.datasets.imagenet.synth import SynthSpec, synthesize

    spec = SynthSpec(**{k: v for k, v in options.items() if k != "overwrite"})
    files = {k: a["file"] for k, a in dataset["archives"].items()}
    members = dataset["labels"]["members"]
    result = synthesize(
        archive_dir, spec, files, members["meta"], members["ground_truth"], overwrite=options["overwrite"]
    )
    verb = "reused" if result.reused else f"wrote in {result.seconds:.1f}s"
    lines = [
        f"synth: {verb} {len(result.wnids)} classes, {sum(result.train_counts.values())} train and "
        f"{len(result.val_wnids)} val images in {result.archive_dir}"
    ]
    lines += [
        f"  {key:6} {p.name}  {p.stat().st_size:,} bytes  md5 {result.md5[key]}" for key, p in result.files.items()
    ]
    return [*lines, "prepare them (md5s checked) with:\n  " + result.prepare_command(overrides)]


# ---------------------------------------------------------------- the loaders' hooks (launcher.data)


def load_split(root, split, state_dir, use_manifest, transform, target_transform, allow_incomplete):
    """launcher.data.load_dataset: the split as launcher.data.ImageNet (a torchvision.datasets.ImageNet)."""
    from launcher.data.dataset import load_imagenet

    return load_imagenet(root, split, state_dir, use_manifest, transform, target_transform, allow_incomplete)


def load_tar_split(root, split, state_dir, archive_dir, transform, target_transform):
    """launcher.data.load_dataset with storage.format=tar: the split as a TarImageNet (a
    torchvision.datasets.ImageNet) reading each image's bytes from the original archive through
    prepare's state_dir/tarindex-<split>.bin; the archive is the index's file name in `archive_dir`
    (None: where prepare read it) and must be that file, unchanged."""
    from launcher.tarformat.dataset import TarImageNet, tar_split

    index, archive, overlay, index_label = tar_split(root, split, state_dir, archive_dir)
    return TarImageNet(index, archive, root, transform, target_transform, overlay, index_label=index_label)


def tar_verify_rules():
    """The module of this dataset's storage.format=tar verify plan (plan_tar_root)."""
    from launcher.check import tarroot

    return tarroot


def require_prepared(root, split) -> None:
    """The root holds `split` as torchvision's ImageNet reads it (meta.bin, root/<split>), or one line."""
    from launcher.data.dataset import require_prepared as require

    require(root, split)


# ---------------------------------------------------------------- verify


def verify_rules():
    """The module of this dataset's verify rules (plan_root), imported when verify runs."""
    from launcher.datasets.imagenet import checks

    return checks


def root_files(dataset: dict) -> list[str]:
    """The label files of a prepared root, beside the split folders (what stage copies with them)."""
    return ["meta.bin"]
