"""The Places365-Standard adapter: its labels come from the file-list archive
(`categories_places365.txt` and the train/val file lists, launcher.datasets.places365.labels), its
root holds those three files beside `data_large_standard/` and `val_large/`, read by
torchvision.datasets.Places365; its synthetic archives come from launcher.datasets.places365.synth.
The facts (archive names, md5s, counts, patterns, label members, each split's shape, archive top
folder and root folder) are in conf/dataset/places365.yaml."""

from __future__ import annotations

import shlex
from pathlib import Path

from launcher.datasets.places365.labels import ListFiles, Patterns
from launcher.datasets.places365.layout import Places365Layout

# the torchvision class that reads a prepared root (and the tests' oracle)
TORCHVISION_CLASS = "torchvision.datasets.Places365"
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
