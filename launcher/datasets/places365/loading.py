"""Places365 for the loaders: `Places365`, a torchvision.datasets.Places365 (small=False) built from
the prepare manifest (no directory walk, no list file parsed) whose batches go through launcher.data's
fast path; `load_places365`, what `launcher.data.load_dataset` calls through the adapter's `load_split`.

Our split names are the pipeline's (`train`, `val`); the dataset's `split` is torchvision's
(`train-standard`, `val`). The manifest holds each split's files below its images folder in sorted
order with their list labels, and the class paths in index order (launcher.datasets.places365.adapter
`manifest`). torchvision's `imgs` follow the file list's line order: the published lists and synth's
are in that sorted order (class by class in index order, then by file name), so the two agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision
from torchvision.datasets.vision import VisionDataset

from launcher.core.errors import LauncherError
from launcher.data.dataset import FastBatches, refuse_unprepared, split_manifest
from launcher.data.decode import decode_file
from launcher.data.samples import Columns, SampleList
from launcher.sources.entries import path_problem

# our split -> torchvision's Places365 split (Standard, large images)
TORCHVISION_SPLITS = {"train": "train-standard", "val": "val"}


class Places365(FastBatches, torchvision.datasets.Places365):
    """torchvision.datasets.Places365(root, TORCHVISION_SPLITS[split], small=False, download=False) with
    the same `classes, class_to_idx, imgs, targets` (and `samples`, the same list), built from the
    prepare manifest when one is given, decoding with torchvision.io; never downloads or extracts."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        loader: Callable[[str], Any] = decode_file,
        manifest: Columns | dict | None = None,
        where: str = "the prepare manifest",
    ) -> None:
        require_prepared(root, split)
        tv_split = TORCHVISION_SPLITS[split]
        if manifest is None:  # torchvision reads the root's list files itself (and checks their md5s)
            try:
                super().__init__(root, tv_split, False, False, transform, target_transform, loader)
            except RuntimeError as err:
                raise LauncherError(
                    f"torchvision's Places365 refuses {root}: {err} Restore the file, or set loader.use_manifest=true "
                    "with prepare's manifest in storage.state_dir (a synthetic root's lists have other md5s)."
                ) from None
            self.samples = self.imgs
            return
        # What torchvision's Places365.__init__ sets, from the manifest instead of the list files.
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.split, self.small, self.loader = tv_split, False, loader
        names = class_paths(manifest, where)
        self.class_to_idx = {name: index for index, name in enumerate(names)}
        self.classes = sorted(self.class_to_idx)
        self.imgs, self.targets = images_of(manifest, self.images_dir, len(names), where)
        self.samples = self.imgs


def class_paths(manifest: Columns | dict, where: str) -> list[str]:
    """The class paths in index order (`/a/airfield`, ...): each manifest class one path below the root."""
    classes = manifest.classes if isinstance(manifest, Columns) else manifest.get("classes")
    names = [c[0] if isinstance(c, list) and len(c) == 1 and isinstance(c[0], str) else None for c in classes or ()]
    bad = next((n for n in names if n is None or not n.startswith("/") or path_problem(n)), "")
    if not names or bad != "":
        raise LauncherError(
            f"{where} does not hold Places365 class paths (found {bad!r}); delete it and run `launcher prepare` "
            "again (it writes the manifest anew)."
        )
    return names


def images_of(manifest: Columns | dict, images_dir: str, classes: int, where: str) -> tuple[Any, list[int]]:
    """(imgs, targets) as torchvision's load_file_list makes them: (images_dir/<path>, label) per file.
    From cached columns a lazy SampleList (nothing made per image at start), else a list."""
    if isinstance(manifest, Columns):
        targets = manifest.target_list()
        prefixes = [os.path.join(images_dir, folder.replace("/", os.sep)) + os.sep for folder in manifest.wnids]
        return SampleList(prefixes, manifest.names, manifest.offsets, targets), targets
    paths, targets = manifest.get("paths"), manifest.get("targets")
    if not isinstance(paths, list) or not isinstance(targets, list) or len(paths) != len(targets):
        raise LauncherError(f"{where} is damaged (paths and targets differ); run `launcher prepare` again.")
    if any(not isinstance(t, int) or not 0 <= t < classes for t in targets):
        raise LauncherError(f"{where} has labels outside 0..{classes - 1}; run `launcher prepare` again.")
    bad = next((p for p in paths if not isinstance(p, str) or path_problem(p)), None)
    if bad is not None:
        raise LauncherError(f"{where} names {bad!r}, not a file below the images folder; run `launcher prepare` again.")
    imgs = [(os.path.join(images_dir, p.replace("/", os.sep)), t) for p, t in zip(paths, targets)]
    return imgs, list(targets)


def require_prepared(root: str | Path, split: str) -> None:
    """The categories file, the split's list file and images folder are there (three stats), or one
    line saying to run prepare."""
    if split not in TORCHVISION_SPLITS:
        raise LauncherError(f"split {split!r} is not one of {', '.join(TORCHVISION_SPLITS)}")
    root = Path(os.path.expanduser(root))
    probe = torchvision.datasets.Places365.__new__(torchvision.datasets.Places365)  # for images_dir alone
    probe.root, probe.split, probe.small = str(root), TORCHVISION_SPLITS[split], False
    needed = [
        root / torchvision.datasets.Places365._CATEGORIES_META[0],
        root / torchvision.datasets.Places365._FILE_LIST_META[probe.split][0],
        Path(probe.images_dir),
    ]
    refuse_unprepared(root, "Places365", needed, ["dataset=places365", f"storage.root={root}", f"split={split}"])


def load_places365(
    root: str | Path,
    split: str,
    state_dir: str | Path | None = None,
    use_manifest: bool = True,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
    allow_incomplete: bool = False,
) -> Places365:
    """A Places365 split from the manifest in `state_dir` (or the root's own .launcher), else as
    torchvision reads it (its list files); a split prepare did not finish is refused unless
    `allow_incomplete` (launcher.data.split_manifest)."""
    manifest = split_manifest(root, split, state_dir, use_manifest, allow_incomplete, require_prepared)
    where = f"the prepare manifest of {split} of {root}"
    return Places365(root, split, transform, target_transform, manifest=manifest, where=where)
