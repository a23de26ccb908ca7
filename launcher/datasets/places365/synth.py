"""Synthetic Places365-Standard archives of the real shape, deterministic for a seed.

`filelist_places365-standard.tar` holds categories_places365.txt, places365_train_standard.txt and
places365_val.txt at its top level, in the real line formats; `train_large_places365standard.tar` is
one tar holding the class tree `data_large/<letter>/<class>[/<subclass>]/<8 digits>.jpg` (with the
folder entries GNU tar writes, classes in shuffled order: archive order is not list order);
`val_large.tar` holds `val_large/Places365_val_<8 digits>.jpg`. Class names are real Places365 ones,
two-level ones among them (`/a/apartment_building/outdoor`, `/b/bazaar/indoor` and `/outdoor`).
Bounded: at most 365 classes, 1,000 train and 100 val images per class, sides of 8..512 pixels.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from launcher.core.errors import LauncherError
from launcher.datasets.imagenet.synth import add_bytes, encode_image, md5_of, tar_info
from launcher.datasets.places365 import facts
from launcher.datasets.places365.layout import LAYOUT, Places365Layout

# real Places365 class paths (categories_places365.txt), one- and two-level
VOCABULARY = (
    "/a/airfield",
    "/a/alley",
    "/a/apartment_building/outdoor",
    "/a/arena/hockey",
    "/a/art_gallery",
    "/a/art_school",
    "/a/artists_loft",
    "/b/bazaar/indoor",
    "/b/bazaar/outdoor",
    "/b/beach",
    "/b/beach_house",
    "/c/canyon",
    "/c/church/indoor",
    "/c/church/outdoor",
    "/d/desert/sand",
    "/d/desert_road",
    "/f/field/cultivated",
    "/f/field/wild",
    "/f/field_road",
    "/i/ice_cream_parlor",
    "/i/ice_skating_rink/indoor",
    "/i/iceberg",
    "/s/shoe_shop",
    "/s/shopfront",
    "/u/underwater/ocean_deep",
    "/z/zen_garden",
)
MAX_CLASSES, MAX_TRAIN, MAX_VAL, MAX_SIDE = facts.CLASSES, 1000, 100, 512
MTIME = 1_450_000_000  # fixed: the same seed writes the same bytes


@dataclass(frozen=True)
class Places365SynthSpec:
    classes: int = 6
    train_per_class: int = 3
    val_per_class: int = 2
    min_side: int = 32
    max_side: int = 64
    quality: int = 90
    seed: int = 0


@dataclass
class Places365SynthResult:
    archive_dir: Path
    files: dict[str, Path]  # filelist, train, val -> path
    md5: dict[str, str]  # the same keys, and categories, train_list, val_list (the extracted files')
    classes: list[str]  # index -> class path
    train_counts: dict[str, int]
    val_labels: list[int]  # label of Places365_val_00000001.jpg, ...
    seconds: float = 0.0


def check_spec(spec: Places365SynthSpec) -> None:
    problems = []
    if not 1 <= spec.classes <= MAX_CLASSES:
        problems.append(f"classes must be 1..{MAX_CLASSES}")
    if not 1 <= spec.train_per_class <= MAX_TRAIN:
        problems.append(f"train_per_class must be 1..{MAX_TRAIN}")
    if not 1 <= spec.val_per_class <= MAX_VAL:
        problems.append(f"val_per_class must be 1..{MAX_VAL} (torchvision cannot read an empty val list)")
    if not 8 <= spec.min_side <= spec.max_side <= MAX_SIDE:
        problems.append(f"min_side and max_side must satisfy 8 <= min_side <= max_side <= {MAX_SIDE}")
    if not 1 <= spec.quality <= 95:
        problems.append("quality must be 1..95")
    if problems:
        raise LauncherError("invalid Places365 synth options: " + "; ".join(problems))


def class_paths(rng: np.random.Generator, count: int) -> list[str]:
    """`count` sorted class paths: real names first (a two-level one always among them), then
    made-up ones of the same shape when more are asked for than the vocabulary holds."""
    picked = [VOCABULARY[i] for i in rng.permutation(len(VOCABULARY))[:count]]
    if count >= 2 and all(p.count("/") == 2 for p in picked):
        picked[-1] = "/a/apartment_building/outdoor"
    for i in range(len(picked), count):
        letter = "abcdefghijklmnopqrstuvwxyz"[i % 26]
        picked.append(f"/{letter}/{letter}synthetic_{i:03d}" + ("/indoor" if i % 3 == 0 else ""))
    return sorted(picked)


def list_text(lines: Iterable[str]) -> bytes:
    """Lines joined by LF with no newline after the last, as in the published files (the real
    categories_places365.txt is 6,833 bytes of that shape, md5 06c963b8...; places365_val.txt's
    1,120,499 bytes fit it too)."""
    return "\n".join(lines).encode("ascii")


def dir_info(name: str) -> tarfile.TarInfo:
    info = tar_info(name, 0)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def folder_entries(paths: Iterable[str], seen: set[str]) -> list[str]:
    """The folders GNU tar writes before a file: each once, parents first."""
    out = []
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in seen:
                seen.add(folder)
                out.append(folder)
    return out


def write_image_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """An uncompressed tar of (name, bytes) files preceded by their folders, written atomically."""
    tmp = path.with_name(path.name + ".part")
    seen: set[str] = set()
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            for folder in folder_entries([name], seen):
                tar.addfile(dir_info(folder))
            add_bytes(tar, name, data)
    os.replace(tmp, path)


def write_flat_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    os.replace(tmp, path)


def image(rng: np.random.Generator, spec: Places365SynthSpec) -> bytes:
    width, height = (int(x) for x in rng.integers(spec.min_side, spec.max_side + 1, size=2))
    return encode_image(rng, (width, height), "RGB", "JPEG", spec.quality)


def refuse_foreign(paths: Iterable[Path], overwrite: bool) -> None:
    present = [p for p in paths if p.exists()]
    if present and not overwrite:
        raise LauncherError(
            f"{present[0].parent} already holds {', '.join(p.name for p in present)}; synth never overwrites "
            "archives (they may be the real Places365). Pass overwrite=True, or write into another folder."
        )


def synthesize_places365(
    archive_dir: Path,
    spec: Places365SynthSpec = Places365SynthSpec(),
    names: Places365Layout = LAYOUT,
    overwrite: bool = False,
) -> Places365SynthResult:
    """Write the three Places365-Standard archives into `archive_dir`."""
    start = time.perf_counter()
    check_spec(spec)
    archive_dir = Path(archive_dir)
    paths = {key: archive_dir / getattr(names, key) for key in ("filelist", "train", "val")}
    refuse_foreign(paths.values(), overwrite)
    archive_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    classes = class_paths(rng, spec.classes)

    train_lines = [f"{c}/{k:08d}.jpg {i}" for i, c in enumerate(classes) for k in range(1, spec.train_per_class + 1)]
    order = [classes[int(i)] for i in rng.permutation(len(classes))]  # archive order: not list order
    train = (
        (f"{names.train_top}{c}/{k:08d}.jpg", image(rng, spec))
        for c in order
        for k in range(1, spec.train_per_class + 1)
    )
    write_image_tar(paths["train"], train)

    val_labels = [int(x) for x in rng.permutation(np.repeat(np.arange(len(classes)), spec.val_per_class))]
    val_names = [f"Places365_val_{k:08d}.jpg" for k in range(1, len(val_labels) + 1)]
    write_image_tar(paths["val"], ((f"{names.val_top}/{n}", image(rng, spec)) for n in val_names))

    lists = {
        names.lists.categories: list_text(f"{c} {i}" for i, c in enumerate(classes)),
        names.lists.train: list_text(train_lines),
        names.lists.val: list_text(f"{n} {y}" for n, y in zip(val_names, val_labels)),
    }
    write_flat_tar(paths["filelist"], lists.items())
    md5 = {key: md5_of(p) for key, p in paths.items()}
    md5.update({key: md5_bytes(lists[name]) for key, name in zip(("categories", "train_list", "val_list"), lists)})
    return Places365SynthResult(
        archive_dir=archive_dir,
        files=paths,
        md5=md5,
        classes=classes,
        train_counts={c: spec.train_per_class for c in classes},
        val_labels=val_labels,
        seconds=time.perf_counter() - start,
    )


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
