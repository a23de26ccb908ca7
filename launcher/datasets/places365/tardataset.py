"""Places365 with storage.format=tar: `TarPlaces365`, a torchvision.datasets.Places365 (small=False)
over the original image archive and prepare's listed tar index (launcher.tarformat.listed), with
no extracted file; `load_tar_places365`, what the adapter's `load_tar_split` returns.

`classes, class_to_idx, imgs, samples, targets` are torchvision's on a folder root prepared from the
same archives: the classes the categories file's class paths (sorted), the images in the file
list's order, each `(<root>/<images_dir>/<path below it>, label)`. A sample's bytes are one
positional read from an archive descriptor each process opens once (launcher.tarformat.dataset's
TarSamples: the archive checked against the identity the index recorded, the bytes decoded as
launcher.data decodes a file, the fast path for batches, the overlay of verify.fix).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torchvision
from torchvision.datasets.vision import VisionDataset

from launcher.data.samples import SampleList
from launcher.datasets.places365.loading import TORCHVISION_SPLITS
from launcher.tarformat.dataset import TarSamples, tar_split
from launcher.tarformat.indexfile import IndexFileError, TarIndex


class TarPlaces365(TarSamples, torchvision.datasets.Places365):
    """torchvision.datasets.Places365(root, TORCHVISION_SPLITS[split], small=False)'s attributes over an
    archive and its listed tar index; never downloads, extracts or reads a list file."""

    def __init__(
        self,
        index: TarIndex,
        archive: str | Path,
        root: str | Path = "",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        overlay: Mapping[int, tuple[str, int, str]] | None = None,
        index_label: str = "",
    ) -> None:
        check_listed(index, index_label)
        # What torchvision's Places365.__init__ sets, from the index instead of the list files.
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.split, self.small, self.loader = TORCHVISION_SPLITS[index.split], False, None
        self.class_to_idx = {name: i for i, name in enumerate(index.wnids)}
        self.classes = sorted(self.class_to_idx)
        self.targets = index.targets.tolist()
        prefixes = [os.path.join(self.images_dir, "")] * len(index.wnids)
        self.imgs = SampleList(prefixes, index.names, index.name_offsets, self.targets)
        self.samples = self.imgs
        self.open_archive(index, archive, overlay, index_label)


def check_listed(index: TarIndex, index_label: str) -> None:
    """The index is one of an archive a file list names (an ImageNet index is refused in one line)."""
    if index.layout != "listed":
        raise IndexFileError(
            f"{index_label or 'the tar index'} indexes class folders (ImageNet's layout), not the files of a "
            "Places365 file list: it was prepared with another dataset. Prepare this root with dataset=places365 "
            "storage.format=tar, or point storage.root (storage.state_dir) at the Places365 one."
        )


def load_tar_places365(
    root: str | Path,
    split: str,
    state_dir: str | Path | None = None,
    archive_dir: str | Path | None = None,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
) -> TarPlaces365:
    """The `split` of a Places365 tar root: prepare's tar index in `state_dir` (None: root/.launcher),
    the archive in `archive_dir` (None: where prepare read it), the overlay of the state folder."""
    if split not in TORCHVISION_SPLITS:
        raise IndexFileError(f"split {split!r} is not one of {', '.join(TORCHVISION_SPLITS)}")
    index, archive, overlay, index_label = tar_split(root, split, state_dir, archive_dir)
    return TarPlaces365(index, archive, root, transform, target_transform, overlay, index_label=index_label)
