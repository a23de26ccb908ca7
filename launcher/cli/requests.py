"""The composed config -> the typed requests and plain values the stage functions take (no Hydra
beyond OmegaConf's containers past this point)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def task_overrides() -> list[str]:
    """The overrides this run was started with (for the ledger and the commands printed)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed through compose_config, not run by Hydra
        return []


def hydra_overrides() -> list[str] | None:
    """The command line's overrides when run by Hydra; None when composed through compose_config."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return None


def plain(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def layout_of(cfg: DictConfig):
    """The root's layout, each split's images in the folder dataset.splits.<split>.folder names."""
    from launcher.core.layout import Layout
    from launcher.sources import check_folder

    splits = (cfg.get("dataset") or {}).get("splits") or {}
    folders = {split: check_folder(split, source.folder) for split, source in splits.items()}
    return Layout.of(cfg.storage.root, cfg.storage.state_dir, folders)


def output_of(cfg: DictConfig, fsync: bool = False):
    from launcher.archive.extract import Output

    s = cfg.storage
    return Output.of(s.file_mode, s.dir_mode, s.group, fsync)


def cluster_of(cfg: DictConfig):
    """The backend of the composed cluster: its typed schema object (OmegaConf.to_object) and `wait`."""
    from omegaconf import OmegaConf

    from launcher.core.backends import backend_of

    return backend_of(OmegaConf.to_object(cfg.cluster), wait=cfg.wait)


def prepare_request(cfg: DictConfig):
    from launcher.prepare.request import PrepareRequest

    d, o = cfg.dataset, cfg.prepare
    return PrepareRequest(
        layout=layout_of(cfg),
        archive_dir=Path(cfg.storage.archive_dir).absolute(),
        archives={k: (a.file, a.md5) for k, a in d.archives.items()},
        expected=plain(d.expected),
        devkit_meta=d.labels.members.get("meta"),
        devkit_ground_truth=d.labels.members.get("ground_truth"),
        devkit_max_bytes=d.labels.max_bytes,
        train_class_pattern=d.patterns.get("train_class"),
        train_image_pattern=d.patterns.train_image,
        val_image_pattern=d.patterns.val_image,
        wnid_pattern=d.patterns.get("wnid"),
        ilsvrc_id_pattern=d.patterns.get("ilsvrc_id"),
        splits=list(cfg.split.splits),
        adapter=d.adapter,
        labels_key=d.labels.archive,
        labels=plain(d.labels),
        sources={k: {**plain(v), "shape": str(v.shape)} for k, v in d.splits.items()},
        patterns=dict(d.patterns),
        train_shards=o.train_shards,
        val_shards=o.val_shards,
        dry_run=o.dry_run,
        force=o.force,
        check_md5=o.check_md5,
        output=output_of(cfg, o.fsync),
        stripe_count=cfg.storage.stripe_count,
        log_dir=Path(cfg.storage.log_dir).absolute(),
        argv=task_overrides(),
        storage=cfg.storage.name,
        config=run_config(cfg),
        storage_format=str(cfg.storage.format),
    )


def run_config(cfg: DictConfig) -> dict:
    """The config of this run, interpolations and ${oc.env:...} resolved, paths made absolute (the
    ledger keeps it so that a resubmission runs the same thing wherever it is typed)."""
    config = plain(cfg)
    for key in ("archive_dir", "root", "state_dir", "log_dir"):
        if config["storage"].get(key) is not None:
            config["storage"][key] = str(Path(config["storage"][key]).absolute())
    return config


def synth_spec(options):
    from launcher.datasets.imagenet.synth import SynthSpec

    return SynthSpec(**{k: v for k, v in plain(options).items() if k != "overwrite"})


def not_built(name: str, why: str) -> int:
    print(f"launcher {name}: not built yet ({why}); nothing was done.", file=sys.stderr)
    return 4


def verify_request(cfg: DictConfig):
    from launcher.check.imagebounds import Limits
    from launcher.check.request import VerifyRequest

    d, o = cfg.dataset, cfg.verify
    return VerifyRequest(
        layout=layout_of(cfg),
        archive_dir=Path(cfg.storage.archive_dir).absolute(),
        archives={k: (a.file, a.md5) for k, a in d.archives.items()},
        expected=plain(d.expected),
        devkit_meta=d.labels.members.get("meta"),
        devkit_ground_truth=d.labels.members.get("ground_truth"),
        devkit_max_bytes=d.labels.max_bytes,
        train_image_pattern=d.patterns.train_image,
        val_image_pattern=d.patterns.val_image,
        wnid_pattern=d.patterns.get("wnid"),
        ilsvrc_id_pattern=d.patterns.get("ilsvrc_id"),
        splits=list(cfg.split.splits),
        adapter=d.adapter,
        labels_key=d.labels.archive,
        labels=plain(d.labels),
        patterns=plain(d.patterns),
        level=o.level,
        fix=o.fix,
        fix_quality=o.fix_quality,
        shards=o.shards,
        check_md5=o.check_md5,
        report=Path(o.report).absolute(),
        log_dir=Path(cfg.storage.log_dir).absolute(),
        argv=task_overrides(),
        limits=Limits(o.max_file_bytes, o.max_pixels, o.max_scans, "verify"),
        config=run_config(cfg),
        storage_format=str(cfg.storage.get("format") or "folder"),
    )


def loader_config(cfg: DictConfig) -> dict:
    """storage (absolute paths), transform, loader and the dataset's adapter as plain values, for
    launcher.data in a job."""
    storage = plain(cfg.storage)
    for key in ("root", "state_dir"):
        storage[key] = str(Path(storage[key]).absolute())
    dataset = {"adapter": cfg.dataset.adapter}
    return {"storage": storage, "transform": plain(cfg.transform), "loader": plain(cfg.loader), "dataset": dataset}


def bench_table(cfg: DictConfig) -> Path:
    """bench.table, else bench.csv in the sweep folder (under -m) or in the state folder."""
    if cfg.bench.table:
        return Path(cfg.bench.table).absolute()
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).absolute() / "bench.csv"
    return Path(cfg.storage.state_dir).absolute() / "bench.csv"


def bench_request(cfg: DictConfig):
    from launcher.data.bench import BenchRequest

    o = cfg.bench
    return BenchRequest(
        config=loader_config(cfg),
        split=o.split,
        epochs=o.epochs,
        max_batches=o.max_batches,
        check_coverage=o.check_coverage,
        table=bench_table(cfg),
        overrides=task_overrides(),
        log_dir=Path(cfg.storage.log_dir).absolute(),
    )
