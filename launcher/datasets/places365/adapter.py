"""The Places365-Standard adapter: its labels come from the file-list archive
(`categories_places365.txt` and the train/val file lists, launcher.datasets.places365.labels), its
root holds those three files beside `data_large_standard/` and `val_large/`, read by
torchvision.datasets.Places365; its synthetic archives come from launcher.datasets.places365.synth.
The facts (archive names, md5s, counts, patterns, label members, each split's shape, archive top
folder and root folder) are in conf/dataset/places365.yaml."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive.extract import Output
from launcher.archive.index import archive_identity, same_archive
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json
from launcher.core.manifest import VERSION as MANIFEST_VERSION
from launcher.datasets.places365.labels import FileList, Labels, ListFiles, Patterns, parse_labels
from launcher.datasets.places365.labels import read_labels as read_list_files
from launcher.datasets.places365.layout import Places365Layout
from launcher.prepare.inputs import digest

if TYPE_CHECKING:
    from launcher.prepare.request import PrepareRequest

# the torchvision class that reads a prepared root (and the tests' oracle)
TORCHVISION_CLASS = "torchvision.datasets.Places365"
# the pipeline commands this adapter is wired for (launcher.cli refuses the others in one line)
PIPELINE = ("prepare", "verify", "status", "stage", "bench")
# the dataset choice synth's archives are prepared with (md5s and counts from the archives)
SYNTHETIC_CHOICE = "places365_synthetic"


def layout_of(dataset: dict) -> Places365Layout:
    """Archive names, their top folders, the root's image folders and the label files, from the YAML."""
    archives, splits, members = dataset["archives"], dataset["splits"], dataset["labels"]["members"]
    return Places365Layout(
        filelist=archives[dataset["labels"]["archive"]]["file"],
        train=archives[splits["train"]["archive"]]["file"],
        val=archives[splits["val"]["archive"]]["file"],
        train_top=splits["train"]["top"],
        val_top=splits["val"]["top"],
        train_images_dir=splits["train"]["folder"],
        val_images_dir=splits["val"]["folder"],
        lists=ListFiles(members["categories"], members["train"], members["val"]),
    )


def patterns_of(dataset: dict) -> Patterns:
    """dataset.patterns as the label parser takes them."""
    p = dataset["patterns"]
    return Patterns(p["class_path"], p["train_image"], p["val_image"], p["label"])


def synthesize(archive_dir: Path, options: dict, dataset: dict, overrides: list[str]) -> list[str]:
    """`launcher synth dataset=places365`: Places365-Standard-shaped archives into archive_dir (every
    class gets synth.train_max train and synth.val_per_class val images); the lines to print, the last
    one the exact `launcher prepare` for them."""
    from launcher.datasets.places365.synth import Places365SynthSpec, synthesize_places365

    spec = Places365SynthSpec(
        classes=options["classes"],
        train_per_class=options["train_max"],
        val_per_class=options["val_per_class"],
        min_side=options["min_side"],
        max_side=options["max_side"],
        quality=options["quality"],
        seed=options["seed"],
    )
    result = synthesize_places365(archive_dir, spec, layout_of(dataset), overwrite=options["overwrite"])
    lines = [
        f"synth: wrote in {result.seconds:.1f}s {len(result.classes)} classes, "
        f"{sum(result.train_counts.values())} train and {len(result.val_labels)} val images in {archive_dir}"
    ]
    for key, path in result.files.items():
        lines.append(f"  {key:8} {path.name}  {path.stat().st_size:,} bytes  md5 {result.md5[key]}")
    return [*lines, "prepare them (md5s checked) with:\n  " + prepare_command(result.md5, dataset, overrides)]


def prepare_command(md5: dict[str, str], dataset: dict, overrides: list[str]) -> str:
    """`launcher prepare dataset=places365_synthetic`, the storage overrides synth ran with (so it finds
    the archives) and the archives' md5s, shell-quoted."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    kept = [o for o, k in zip(overrides, keys) if k.startswith("storage")]
    which = {"filelist": dataset["labels"]["archive"], "train": "train", "val": "val"}
    sums = [f"dataset.archives.{which[k]}.md5={md5[k]}" for k in ("filelist", "train", "val")]
    return shlex.join(["launcher", "prepare", f"dataset={SYNTHETIC_CHOICE}", *kept, *sums])


# ---------------------------------------------------------------- the generic prepare's steps
# (launcher.prepare calls these by name, as it calls ImageNet's; the split names are the list roles)


def lists_of(req: PrepareRequest) -> ListFiles:
    """dataset.labels.members: the three label files' names (in the archive and in the root)."""
    members = req.labels["members"]
    return ListFiles(members["categories"], members["train"], members["val"])


def patterns_of_request(req: PrepareRequest) -> Patterns:
    p = req.patterns
    return Patterns(p["class_path"], p["train_image"], p["val_image"], p["label"])


def labels_of_kit(kit: dict, where: str = "the cached labels") -> Labels:
    """The Labels of a cached kit, parsed again with every strict check (the cache is not trusted more
    than the archive it came from)."""
    try:
        names, patterns = ListFiles(**kit["members"]), Patterns(**kit["patterns"])
        files = {name: kit["files"][name].encode("ascii") for name in names.names()}
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError) as err:
        raise LauncherError(
            f"{where} is damaged ({type(err).__name__}); delete it and run `launcher prepare` again."
        ) from None
    return parse_labels(files, names, patterns, source=where)


def by_role(labels: Labels) -> dict[str, FileList]:
    """The file lists by their role in dataset.labels.members (the split they list)."""
    return {"train": labels.train, "val": labels.val}


def read_labels(req: PrepareRequest) -> tuple[Labels, str]:
    """The three label files of the file-list archive, parsed with every check, cached in state_dir
    (as their text, with the names and patterns they were parsed with) while the archive is
    unchanged; and their fingerprint."""
    path = req.labels_archive()
    cached = read_json(req.layout.devkit_file)
    if same_archive(cached, path) and isinstance(cached.get("devkit"), dict):
        return labels_of_kit(cached["devkit"], str(req.layout.devkit_file)), cached["fingerprint"]
    print(f"reading the file lists of {path.name}", file=sys.stderr, flush=True)
    names, patterns = lists_of(req), patterns_of_request(req)
    files, labels = read_list_files(str(path), names, patterns)
    kit = {
        "members": {"categories": names.categories, "train": names.train, "val": names.val},
        "patterns": dataclasses.asdict(patterns),
        "files": {name: data.decode("ascii") for name, data in files.items()},
    }
    fp = digest(kit)
    if not req.dry_run:  # a dry run keeps what it read in memory
        ident = archive_identity(path, req.archives[req.labels_key][1])
        write_json(req.layout.devkit_file, {"archive": ident, "fingerprint": fp, "devkit": kit})
    return labels, fp


def check_labels(req: PrepareRequest, labels: Labels, indexes: dict) -> None:
    """The lists' totals <-> dataset.expected, and each split's index <-> its list (an index cached
    before the file lists changed names other files or labels)."""
    counts = {"classes": len(labels.categories.names), **{r: len(f.entries) for r, f in by_role(labels).items()}}
    problems = [
        f"the file lists give {counts[key]} {key}, dataset.expected.{key} is {req.expected[key]}"
        for key in ("classes", "train", "val")
        if req.expected.get(key) is not None and counts[key] != req.expected[key]
    ]
    for split, index in indexes.items():
        listed = listing(labels, req.source(split))
        if {m[0]: m[3] for m in index["members"]} != listed:
            problems.append(
                f"{req.layout.index_file(split)} does not name the files and labels of "
                f"{req.source(split)['listed_by']}'s list (delete it: the next prepare indexes the archive again)"
            )
    if problems:
        raise LauncherError(
            f"The archives in {req.archive_dir} do not match dataset config: " + "; ".join(problems) + ". Use "
            "the archives the dataset describes, or dataset=places365_synthetic (every count from the lists)."
        )


def listing(labels: Labels, source: dict) -> dict[str, int]:
    """What a split's index is checked against: its list's files (path below the images folder) -> label."""
    return by_role(labels)[source["listed_by"]].relpaths()


def member_count(labels: Labels, split: str) -> int:
    """How many index rows a split's archive should have: one per file its list names."""
    return len(by_role(labels)[split].entries)


def check_covered(split: str, files: list, kit: dict) -> None:
    """The split holds every file its list names, and nothing else."""
    listed = set(by_role(labels_of_kit(kit))[split].relpaths())
    written = {f"{folder}/{name}" if folder else name for folder, name, _ in files}
    if written != listed:
        lacking, extra = sorted(listed - written), sorted(written - listed)
        raise LauncherError(
            f"{split} holds {len(written)} images, its list {len(listed)} (missing {lacking[:3]}, not listed "
            f"{extra[:3]}). Run `launcher prepare` again."
        )


def folders_of(kit: dict, split: str) -> set[str]:
    """The class folders (class paths without the leading /) a prepared split holds; none for flat val."""
    relpaths = by_role(labels_of_kit(kit))[split].relpaths()
    return {rel.rpartition("/")[0] for rel in relpaths} - {""}


def manifest(split: str, files: list, kit: dict) -> dict:
    """The split's manifest: paths below its images folder in the list's line order (torchvision's
    Places365 keeps that order), targets the list's labels (the class index, torchvision's
    class_to_idx), the classes the categories file's, in index order."""
    labels = labels_of_kit(kit)
    listed = by_role(labels)[split].relpaths()
    sizes = {f"{folder}/{name}" if folder else name: size for folder, name, size in files}
    paths = [rel for rel in listed if rel in sizes]  # check_covered: every listed file is there
    return {
        "version": MANIFEST_VERSION,
        "split": split,
        "wnids": [name.lstrip("/") for name in labels.categories.names],
        "classes": [[name] for name in labels.categories.names],
        "paths": paths,
        "targets": [listed[rel] for rel in paths],
        "sizes": [sizes[rel] for rel in paths],
    }


def meta_args(req: PrepareRequest, identity: dict) -> dict:
    """The meta unit's arguments: the cached lists in, the three label files into the root (`outputs`)."""
    root = req.layout.root
    return {
        "labels": str(req.layout.devkit_file),
        "root": str(root),
        "root_id": (identity.get("root") or {}).get("id"),
        "out": req.output,
        "outputs": [str(root / name) for name in lists_of(req).names()],
    }


def write_meta(labels: str, root: str, root_id: str, out: Output) -> dict:
    """The meta unit: the three label files, as the archive holds them (parsed again first), into the
    root the plan was made for: each an O_EXCL temporary renamed over its name, relative to the
    opened root, never through a link."""
    from launcher.archive.extract import check_root
    from launcher.sources.tree import write_root_files

    t0 = time.perf_counter()
    check_root(root, root_id)
    cached = read_json(Path(labels))
    if cached is None or not isinstance(cached.get("devkit"), dict):
        raise LauncherError(f"{labels} is missing or damaged; run `launcher prepare` again (it reads the lists anew).")
    kit = cached["devkit"]
    labels_of_kit(kit, labels)
    sizes = write_root_files(root, {name: kit["files"][name].encode("ascii") for name in kit["files"]}, out)
    return {"bytes": sum(sizes.values()), "files": sizes, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- the loaders' hooks (launcher.data)


def load_split(root, split, state_dir, use_manifest, transform, target_transform, allow_incomplete):
    """launcher.data.load_dataset: the split as a torchvision.datasets.Places365 built from the manifest."""
    from launcher.datasets.places365.loading import load_places365

    return load_places365(root, split, state_dir, use_manifest, transform, target_transform, allow_incomplete)


def require_prepared(root, split) -> None:
    """The root holds `split` as torchvision's Places365 reads it (label files, images folder), or one line."""
    from launcher.datasets.places365.loading import require_prepared as require

    require(root, split)


def load_tar_split(root, split, state_dir, archive_dir, transform, target_transform):
    """launcher.data.load_dataset with storage.format=tar: the split as a TarPlaces365 (a
    torchvision.datasets.Places365) reading each image's bytes from the original archive through
    prepare's state_dir/tarindex-<split>.bin; the archive is the index's file name in `archive_dir`
    (None: where prepare read it) and must be that file, unchanged."""
    from launcher.datasets.places365.tardataset import load_tar_places365

    return load_tar_places365(root, split, state_dir, archive_dir, transform, target_transform)


def tar_listing(devkit: str, source: dict) -> tuple[dict[str, int], list[str]]:
    """storage.format=tar (launcher.prepare.tarlisted): the split's files (path below its images folder
    -> label, in the list's order) and the class paths in index order, from prepare's cache of the
    file lists (devkit.json), parsed again with every check."""
    cached = read_json(Path(devkit))
    if cached is None or not isinstance(cached.get("devkit"), dict):
        raise LauncherError(f"{devkit} is missing or damaged; run `launcher prepare` again (it reads the lists anew).")
    labels = labels_of_kit(cached["devkit"], devkit)
    return listing(labels, source), list(labels.categories.names)


def tar_verify_rules():
    """The module of this dataset's storage.format=tar verify plan (plan_tar_root)."""
    from launcher.datasets.places365 import tarchecks

    return tarchecks


# ---------------------------------------------------------------- verify


def verify_rules():
    """The module of this dataset's verify rules (plan_root, check_class), imported when verify runs."""
    from launcher.datasets.places365 import checks

    return checks


def root_files(dataset: dict) -> list[str]:
    """The label files of a prepared root, beside the split folders (what stage copies with them)."""
    members = dataset["labels"]["members"]
    return [members["categories"], members["train"], members["val"]]
