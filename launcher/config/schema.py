"""Dataclass schemas of every config group, and the Enums of fixed choices; importable without Hydra
(launcher.config.commands holds the commands' schemas, launcher.config.store registers both in
Hydra's ConfigStore).

Each YAML option under conf/<group>/ starts from its group's schema
(`defaults: [/schema/<group>@_here_: base]`), so a misspelt key or a wrong type fails when the
config is composed, before any work starts. Each primary config (one per command) starts from
its command's schema (launcher.config.commands). Comments above fields are the one-line documentation of each option.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour for what we use (members are their str value)

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


class Executor(StrEnum):
    """cluster.executor: where jobs run."""

    debug = "debug"
    local = "local"
    slurm = "slurm"


class Split(StrEnum):
    """A split of ILSVRC2012 (split.splits, bench.split)."""

    train = "train"
    val = "val"


class Shape(StrEnum):
    """dataset.splits.<split>.shape: how an archive holds a split (launcher.sources)."""

    class_tars = "class_tars"
    flat_labels = "flat_labels"
    tree = "tree"


class Level(StrEnum):
    """verify.level: how much of every file verify reads."""

    exists = "exists"
    header = "header"
    decode = "decode"


class Output(StrEnum):
    """transform.output: what the loaders deliver."""

    float = "float"
    uint8 = "uint8"


class Interpolation(StrEnum):
    """transform.interpolation of every resize."""

    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"


class Policy(StrEnum):
    """transform.policy: the automatic augmentation added to train."""

    randaugment = "randaugment"
    autoaugment = "autoaugment"
    trivialaugment = "trivialaugment"


class StageMode(StrEnum):
    """stage.mode: what stage.source holds."""

    auto = "auto"
    root = "root"
    archives = "archives"


class StorageFormat(StrEnum):
    """storage.format: how the prepared images are kept."""

    folder = "folder"
    tar = "tar"


@dataclass
class StorageConfig:
    # which storage this describes: local, lustre, nfs, scratch
    name: str = MISSING
    # folder the other paths of this storage start from (null where they are given whole)
    base: str | None = None
    # folder holding the three ILSVRC2012 archives (devkit, train, val)
    archive_dir: str = MISSING
    # the torchvision ImageNet root that receives meta.bin, train/ and val/
    root: str = MISSING
    # launcher's records for this root: indexes, unit records, manifests, ledger, reports, lock
    state_dir: str = "${.root}/.launcher"
    # submitit job folders and their logs
    log_dir: str = "${.state_dir}/logs"
    # unix group given to every folder written (new files inherit it); null = the user's default
    group: str | None = None
    # permission bits of every file written (octal); "0664" shares with the group
    file_mode: str = "0644"
    # permission bits of every folder written (octal); "2775" shares with the group (setgid)
    dir_mode: str = "0755"
    # Lustre stripe count for the output folders (`lfs setstripe -c N`); null = leave as is
    stripe_count: int | None = None
    # folder: extract into the torchvision root; tar: index the original archives and train from them
    format: StorageFormat = StorageFormat.folder


@dataclass
class ArchiveConfig:
    # file name of the archive inside storage.archive_dir
    file: str = MISSING
    # expected md5 of the whole archive; null = do not check (a warning says so)
    md5: str | None = None


@dataclass
class ExpectedConfig:
    # total train images; null = take the counts from the label files alone
    train: int | None = None
    # total val images; null = take the counts from the label files alone
    val: int | None = None
    # number of classes; null = take the count from the label files alone
    classes: int | None = None


@dataclass
class LabelsConfig:
    # key of dataset.archives holding the label files (ImageNet's devkit, Places365's file lists)
    archive: str = MISSING
    # the label files' member names inside that archive, by the adapter's role names
    members: dict[str, str] = field(default_factory=dict)
    # most bytes read while decompressing or reading the label archive (guards against gzip bombs)
    max_bytes: int = 268435456


@dataclass
class SplitSourceConfig:
    # shape of the archive the split is read from: class_tars, flat_labels or tree (launcher.sources)
    shape: Shape = MISSING
    # key of dataset.archives holding the split's images
    archive: str = MISSING
    # folder of the prepared root that receives the split (the one the torchvision class reads)
    folder: str = MISSING
    # top folder inside the archive that holds the split's images; null = the archive's top level
    top: str | None = None
    # label file (a labels.members role) that names every file of the split; null = by image number
    listed_by: str | None = None


@dataclass
class DatasetConfig:
    # dataset name (folders and reports use it)
    name: str = MISSING
    # the adapter (launcher.datasets.<adapter>) that reads the labels and writes the label files
    adapter: str = MISSING
    # the archives by key: file names and md5s
    archives: dict[str, ArchiveConfig] = field(default_factory=dict)
    # where the labels come from: the label archive and its members
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    # each split: the shape and archive it is read from and the root folder it fills
    splits: dict[str, SplitSourceConfig] = field(default_factory=dict)
    # expected totals, checked after preparation and by verify
    expected: ExpectedConfig = field(default_factory=ExpectedConfig)
    # member-name patterns by the adapter's role names, matched in ASCII; anything else is refused
    patterns: dict[str, str] = field(default_factory=dict)


@dataclass
class SplitConfig:
    # name of this choice: train, val or all
    name: str = MISSING
    # the splits a command works on
    splits: list[Split] = field(default_factory=list)


@dataclass
class ClusterConfig:
    """What every backend takes (hydra-submitit-launcher's BaseQueueConf); one subclass per backend."""

    # job name (submitit's and hydra-submitit-launcher's `name`); null = launcher's per-step names
    # (prepare-train, prepare-val-finalize, verify, verify-report, ...)
    name: str | None = None
    # submitit executor: debug (in-process), local (processes here) or slurm
    executor: Executor = MISSING
    # seconds between two looks at the jobs while waiting
    poll_s: float = 1.0
    # most jobs in one array (SLURM's MaxArraySize); null = read it from `scontrol show config` on SLURM
    max_array_size: int | None = None
    # job time limit in minutes
    timeout_min: int = 60
    # CPUs per task
    cpus_per_task: int = 1
    # memory per node in GB; null = the cluster default
    mem_gb: float | None = None
    # nodes per job
    nodes: int = 1
    # tasks (ranks) per node
    tasks_per_node: int = 1
    # GPUs per node
    gpus_per_node: int = 0


@dataclass
class DebugClusterConfig(ClusterConfig):
    """cluster=debug: submitit's DebugExecutor, one job at a time in this process."""

    # submitit executor: debug (in-process), local (processes here) or slurm
    executor: Executor = Executor.debug


@dataclass
class LocalClusterConfig(ClusterConfig):
    """cluster=local: submitit's LocalExecutor, processes on this machine."""

    # submitit executor: debug (in-process), local (processes here) or slurm
    executor: Executor = Executor.local
    # parallel jobs; null = the number of cores
    workers: int | None = None
    # shell lines run before each job (venv activation, environment variables, ...)
    setup: list[str] = field(default_factory=list)
    # how many times a job that hit its time limit is requeued
    max_num_timeout: int = 3


@dataclass
class SlurmClusterConfig(ClusterConfig):
    """cluster=slurm: submitit's SlurmExecutor, job arrays (hydra-submitit-launcher's SlurmQueueConf)."""

    # submitit executor: debug (in-process), local (processes here) or slurm
    executor: Executor = Executor.slurm
    # SLURM partition; null = the cluster default
    partition: str | None = None
    # SLURM account to charge; null = the user's default
    account: str | None = None
    # SLURM quality of service; null = default
    qos: str | None = None
    # SLURM node feature constraint; null = none
    constraint: str | None = None
    # SLURM nodes not to run on (sbatch --exclude); null = none
    exclude: str | None = None
    # SLURM generic resources (sbatch --gres), e.g. gpu:2; null = none
    gres: str | None = None
    # memory per CPU (sbatch --mem-per-cpu), e.g. 4G; null = mem_gb or the cluster default
    mem_per_cpu: str | None = None
    # CPUs per GPU (sbatch --cpus-per-gpu); null = cpus_per_task
    cpus_per_gpu: int | None = None
    # GPUs per task (sbatch --gpus-per-task); null = gpus_per_node
    gpus_per_task: int | None = None
    # memory per GPU (sbatch --mem-per-gpu), e.g. 16G; null = mem_gb or the cluster default
    mem_per_gpu: str | None = None
    # comment attached to the SLURM jobs (sbatch --comment); null = none
    comment: str | None = None
    # write each job's stderr into its stdout log (one log file per job)
    stderr_to_stdout: bool = False
    # most array tasks running at once
    array_parallelism: int = 64
    # shell lines run before each job (module load, venv activation, ...)
    setup: list[str] = field(default_factory=list)
    # extra sbatch options passed as they are, e.g. {mail-type: END}
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    # how many times a job that hit its time limit is requeued
    max_num_timeout: int = 3
    # seconds before the time limit at which the job is signalled to checkpoint
    signal_delay_s: int = 90


# cluster=<choice> -> its schema (conf/cluster/<choice>.yaml starts from /schema/cluster/<choice>)
CLUSTER_SCHEMAS = {"debug": DebugClusterConfig, "local": LocalClusterConfig, "slurm": SlurmClusterConfig}


def group_options(group: str) -> list[str]:
    """The options a group's YAML may set: its schema's fields (cluster: those of any backend)."""
    from dataclasses import fields

    schemas = CLUSTER_SCHEMAS.values() if group == "cluster" else [GROUP_SCHEMAS[group]]
    return list(dict.fromkeys(f.name for schema in schemas for f in fields(schema)))


@dataclass
class TransformConfig:
    # hydra.utils.instantiate(cfg.transform, train=True) builds the v2 pipeline
    _target_: str = "launcher.data.transforms_from_options"
    # name of this choice: standard, randaugment, autoaugment, trivialaugment, none
    name: str = MISSING
    # automatic augmentation policy added to train: null, randaugment, autoaugment, trivialaugment
    policy: Policy | None = None
    # train crop size (RandomResizedCrop)
    train_crop_size: int = 224
    # scale range of RandomResizedCrop
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # aspect-ratio range of RandomResizedCrop
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333333333333])
    # probability of a horizontal flip in train
    hflip: float = 0.5
    # eval center-crop size
    eval_crop_size: int = 224
    # eval crop ratio: images are resized to floor(eval_crop_size / crop_ratio) before the crop
    crop_ratio: float = 0.875
    # interpolation of every resize (antialiased): bilinear, bicubic, nearest
    interpolation: Interpolation = Interpolation.bilinear
    # RandAugment: number of operations per image
    num_ops: int = 2
    # RandAugment: magnitude of the operations
    magnitude: int = 9
    # normalization mean (RGB, 0..1 scale)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    # normalization std (RGB, 0..1 scale)
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # output of the pipeline: float (normalized) or uint8 (launcher.data.normalize_on_device on the GPU)
    output: Output = Output.float
    # largest image file the loader reads (bytes; ImageNet's largest is ~15 MB); a larger one is an error
    max_file_bytes: int = 67108864
    # most pixels an image header may declare (PIL's Image.MAX_IMAGE_PIXELS), checked before decoding
    max_pixels: int = 89478485
    # most scans of a JPEG (libjpeg-turbo has no bound; a scan bomb costs seconds), checked while decoding
    max_scans: int = 100


def _loader_dataset() -> dict[str, Any]:
    return {
        "_target_": "launcher.data.load_dataset",
        # relative (loader.dataset -> loader -> the node holding storage): works at the root and
        # nested, e.g. under a training repo's `data:`
        "root": "${...storage.root}",
        "state_dir": "${...storage.state_dir}",
        "use_manifest": "${..use_manifest}",
        "allow_incomplete": "${..allow_incomplete}",
        # the dataset adapter that reads the root (its torchvision class); none: ImageNet
        "adapter": "${oc.select:...dataset.adapter,null}",
        # folder: read the prepared root; tar: read the original archives through prepare's tar index
        "storage_format": "${oc.select:...storage.format,folder}",
        # where the archives are (storage.format=tar reads its images from them)
        "archive_dir": "${oc.select:...storage.archive_dir,null}",
    }


@dataclass
class LoaderConfig:
    # hydra.utils.instantiate(cfg.loader, dataset={"split": "train", "transform": tf}) builds the DataLoader
    _target_: str = "launcher.data.loader_from_options"
    # name of this choice
    name: str = MISSING
    # batch size per rank
    batch_size: int = 256
    # eval batch size per rank; null = batch_size
    eval_batch_size: int | None = None
    # loader worker processes per rank; null = the cores of this task (SLURM_CPUS_PER_TASK)
    num_workers: int | None = None
    # pin host memory for faster copies to the GPU (only when a GPU is there)
    pin_memory: bool = True
    # keep workers alive between epochs
    persistent_workers: bool = True
    # batches prefetched per worker
    prefetch_factor: int = 2
    # drop the last incomplete train batch (and DistributedSampler's padding); eval never drops
    drop_last: bool = True
    # base seed of shuffling (the same on every rank) and augmentation (offset by rank)
    seed: int = 0
    # read the prepare manifest when present (no directory walk)
    use_manifest: bool = True
    # load a split whose prepare records say it is not whole (a failed md5 or unit); refused by default
    allow_incomplete: bool = False
    # instantiate(cfg.loader.dataset, split="val", transform=tf) builds the dataset of storage.root
    dataset: dict[str, Any] = field(default_factory=_loader_dataset)


GROUP_SCHEMAS = {
    "storage": StorageConfig,
    "dataset": DatasetConfig,
    "split": SplitConfig,
    "cluster": ClusterConfig,
    "transform": TransformConfig,
    "loader": LoaderConfig,
}
