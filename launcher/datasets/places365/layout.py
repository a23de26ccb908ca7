"""Where Places365-Standard's files are: the archives, the folders inside them, and the prepared root
`torchvision.datasets.Places365(root, split, small=False, download=False)` reads; and the whole
preparation in one process (`prepare_root`), which the sharded pipeline splits into units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.archive.extract import Output
from launcher.datasets.places365 import facts
from launcher.datasets.places365.labels import ListFiles, Patterns, read_labels
from launcher.sources.tree import WRITE, extract_flat, extract_tree, index_flat, index_tree, write_root_files


@dataclass(frozen=True)
class Places365Layout:
    """Archive file names, their top folders, and the root's images folders (Places365.images_dir)."""

    filelist: str = facts.FILELIST_ARCHIVE[0]
    train: str = facts.TRAIN_ARCHIVE[0]
    val: str = facts.VAL_ARCHIVE[0]
    train_top: str = facts.TRAIN_TOP
    val_top: str = facts.VAL_TOP
    train_images_dir: str = facts.TRAIN_IMAGES_DIR
    val_images_dir: str = facts.VAL_IMAGES_DIR
    lists: ListFiles = ListFiles()


LAYOUT = Places365Layout()
PATTERNS = Patterns()


def prepare_root(
    archive_dir: str | Path,
    root: str | Path,
    layout: Places365Layout = LAYOUT,
    patterns: Patterns = PATTERNS,
    out: Output = WRITE,
) -> dict:
    """The three archives in `archive_dir` -> the root torchvision's Places365 reads: both image
    archives are indexed against the parsed lists before anything is written."""
    archive_dir, root = Path(archive_dir), str(root)
    files, labels = read_labels(str(archive_dir / layout.filelist), layout.lists, patterns)
    train_tar, val_tar = str(archive_dir / layout.train), str(archive_dir / layout.val)
    train_index = index_tree(train_tar, layout.train_top, labels.train.relpaths(), layout.lists.train)
    val_index = index_flat(val_tar, layout.val_top, labels.val.relpaths(), layout.lists.val)
    sizes = write_root_files(root, files, out)
    train = extract_tree(
        train_tar,
        root,
        train_index,
        (0, len(train_index["members"])),
        layout.train_images_dir,
        patterns.class_path,
        patterns.train_image,
        out,
    )
    val = extract_flat(
        val_tar, root, val_index, (0, len(val_index["members"])), layout.val_images_dir, patterns.val_image, out
    )
    return {"lists": sizes, "train": train, "val": val, "classes": len(labels.categories.names)}
