"""What a verify run is asked to do (VerifyRequest: paths, level, limits, fix) and its check before planning."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from launcher.archive import safedir
from launcher.check.imagebounds import Limits
from launcher.check.images import DEFAULT_LIMITS
from launcher.core.errors import ConfigError, LauncherError
from launcher.core.layout import SPLITS, Layout

LEVELS = ("exists", "header", "decode")


@dataclass
class VerifyRequest:
    layout: Layout
    archive_dir: Path
    # key -> (file name, md5 or None)
    archives: dict[str, tuple[str, str | None]]
    # train/val/classes -> expected count or None
    expected: dict[str, int | None]
    # dataset.labels.members.meta and .ground_truth (a devkit's; None for a dataset without one)
    devkit_meta: str | None
    devkit_ground_truth: str | None
    devkit_max_bytes: int
    train_image_pattern: str
    val_image_pattern: str
    # dataset.patterns.wnid and .ilsvrc_id: what a WNID and an ILSVRC2012_ID must match (ASCII; None
    # for a dataset without them)
    wnid_pattern: str | None
    ilsvrc_id_pattern: str | None
    splits: list[str]
    # dataset.adapter (its verify_rules() plan the dataset's checks), dataset.labels.archive (the
    # archive key of its labels), dataset.labels and dataset.patterns as plain values
    adapter: str
    labels_key: str
    labels: dict
    patterns: dict
    level: str = "header"
    fix: bool = False
    fix_quality: int = 95
    shards: int | None = None
    check_md5: bool = False
    report: Path | None = None
    log_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    # what one image file may cost (verify.max_file_bytes, verify.max_pixels, verify.max_scans)
    limits: Limits = DEFAULT_LIMITS
    # the resolved config of the run, kept in the ledger
    config: dict = field(default_factory=dict)
    # storage.format: folder (image files under the root) or tar (prepare's tar index of the archives)
    storage_format: str = "folder"

    def archive_candidates(self, key: str) -> list[Path]:
        """Where an archive may be: storage.archive_dir, or the root itself (torchvision keeps them there)."""
        name = self.archives[key][0]
        return [self.archive_dir / name, self.layout.root / name]

    def find_archive(self, key: str) -> Path | None:
        return next((p for p in self.archive_candidates(key) if p.is_file()), None)


def check_request(req: VerifyRequest) -> None:
    req.limits.check()
    if req.level not in LEVELS:
        raise LauncherError(f"verify.level={req.level!r} is not one of {', '.join(LEVELS)}.")
    if req.fix and req.level == "exists":
        raise LauncherError(
            "verify.fix=true needs verify.level=header or decode: level exists does not look inside the "
            "files, so it cannot find the odd ones to re-encode."
        )
    if req.storage_format not in ("folder", "tar"):
        raise ConfigError(f"storage.format={req.storage_format!r} is not one of folder, tar.")
    if req.storage_format == "tar":
        from launcher.datasets import adapter_of

        if not hasattr(adapter_of(req.adapter), "load_tar_split"):
            raise ConfigError(
                f"storage.format=tar: the {req.adapter} adapter is not read from its archives; "
                "use storage.format=folder"
            )
    bad = [s for s in req.splits if s not in SPLITS]
    if bad:
        raise LauncherError(f"split.splits has {', '.join(bad)}; valid splits: {', '.join(SPLITS)}.")
    if not req.layout.root.is_dir():
        from launcher.datasets import adapter_of

        reader = adapter_of(req.adapter).TORCHVISION_CLASS
        raise LauncherError(
            f"The root {req.layout.root} is not a folder. Point storage.root at a root {reader} reads, "
            "or prepare one with `launcher prepare`."
        )
    try:
        with safedir.Dir.of(req.layout.state_dir, create=True) as state:
            probe_file = f".write-test-{os.getpid()}"
            os.close(state.create(probe_file, replace_temp=True))
            state.unlink_entry(probe_file)
    except OSError as err:
        raise LauncherError(
            f"cannot write verify's records and report into {req.layout.state_dir}: {err.strerror or err}. "
            "Point storage.state_dir at a writable folder (the root itself may stay read-only)."
        ) from err
