"""What a prepare run is asked to do (PrepareRequest: archives, root, splits, options) and the Plan it makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive.extract import Output
from launcher.core.layout import Layout
from launcher.core.units import Unit
from launcher.datasets.imagenet.devkit import Devkit

if TYPE_CHECKING:
    pass


@dataclass
class PrepareRequest:
    layout: Layout
    archive_dir: Path
    # key -> (file name, md5 or None)
    archives: dict[str, tuple[str, str | None]]
    # train/val/classes -> expected count or None
    expected: dict[str, int | None]
    # dataset.labels.members.meta and .ground_truth (ImageNet's devkit; None for other datasets)
    devkit_meta: str | None
    devkit_ground_truth: str | None
    devkit_max_bytes: int
    train_class_pattern: str | None
    train_image_pattern: str
    val_image_pattern: str
    # dataset.patterns.wnid and .ilsvrc_id: what a WNID and an ILSVRC2012_ID must match (ASCII; ImageNet's)
    wnid_pattern: str | None
    ilsvrc_id_pattern: str | None
    splits: list[str]
    train_shards: int | None = None
    val_shards: int | None = None
    dry_run: bool = False
    force: bool = False
    check_md5: bool = True
    output: Output = field(default_factory=Output)
    stripe_count: int | None = None
    log_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    # dataset.adapter: the module under launcher.datasets that reads the labels
    adapter: str = "imagenet"
    # dataset.splits: split -> {shape, archive, folder} (launcher.sources names the shapes)
    sources: dict[str, dict] = field(default_factory=dict)
    # dataset.patterns: role -> regex, matched in full in ASCII
    patterns: dict[str, str] = field(default_factory=dict)
    # the storage option chosen (local, lustre, nfs, scratch or a variant): shared storage warns on a login node
    storage: str = "local"
    # the resolved config of the run (for the ledger); the dataset choice and values (for the identity)
    config: dict = field(default_factory=dict)
    # dataset.labels.archive: the key of the archive the labels are read from
    labels_key: str = "devkit"
    # dataset.labels: the label archive, its members and bounds (the adapter reads what it needs)
    labels: dict = field(default_factory=dict)
    # storage.format: folder (extract into the root) or tar (index the archives in place)
    storage_format: str = "folder"

    def archive(self, key: str) -> Path:
        return self.archive_dir / self.archives[key][0]

    def labels_archive(self) -> Path:
        """The archive the adapter reads the labels from (ImageNet's devkit, Places365's file lists)."""
        return self.archive(self.labels_key)

    def source(self, split: str) -> dict:
        """dataset.splits.<split>: the shape, archive key and root folder of a split."""
        return self.sources[split]

    def split_archive(self, split: str) -> Path:
        return self.archive(self.source(split)["archive"])

    def archive_keys(self) -> list[str]:
        """The label archive, then the archives of the splits asked for, in dataset.archives' order."""
        wanted = {self.labels_key, *(self.source(s)["archive"] for s in self.splits)}
        return [k for k in self.archives if k in wanted]


@dataclass
class Plan:
    units: list[Unit]
    finalize: dict[str, Unit]
    devkit: Devkit
    identity: dict
    # the key of the label archive (its md5 unit runs with the common units)
    labels_key: str = "devkit"
