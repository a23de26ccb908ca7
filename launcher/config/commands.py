"""The schemas of each command's primary config: the groups every command composes (CommandConfig)
plus the command's own options; importable without Hydra. Comments above fields are the one-line
documentation of each option (`launcher <command> --help` shows them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from launcher.config.schema import (
    ClusterConfig,
    DatasetConfig,
    Level,
    LoaderConfig,
    Split,
    SplitConfig,
    StageMode,
    StorageConfig,
    TransformConfig,
)


@dataclass
class CommandConfig:
    """What every command composes."""

    # the command these options were composed for
    command: str = MISSING
    # wait for the jobs with a live progress display; null = wait unless cluster.executor=slurm
    wait: bool | None = None
    # where the data is
    storage: StorageConfig = MISSING
    # what the data is
    dataset: DatasetConfig = MISSING
    # which splits
    split: SplitConfig = MISSING
    # where the work runs
    cluster: ClusterConfig = MISSING
    # image transforms of the loaders
    transform: TransformConfig = MISSING
    # data loaders
    loader: LoaderConfig = MISSING


@dataclass
class PrepareOptions:
    # train shards (groups of class tars balanced by bytes); null = twice the parallel jobs
    train_shards: int | None = None
    # val shards (ranges of images); null = as many as keep shards the size of train's
    val_shards: int | None = None
    # print the plan (units, bytes, outputs) and do nothing
    dry_run: bool = False
    # accept a root that holds another dataset (different index or meta.bin) and overwrite it
    force: bool = False
    # fsync files before recording a unit complete (slower; survives power loss)
    fsync: bool = False
    # also check the archives' md5s (when dataset.archives.*.md5 are set)
    check_md5: bool = True


@dataclass
class PrepareConfig(CommandConfig):
    # options of `prepare`
    prepare: PrepareOptions = field(default_factory=PrepareOptions)


@dataclass
class VerifyOptions:
    # per-file check: exists (size), header (signature, markers, dimensions) or decode (full)
    level: Level = Level.header
    # re-encode the odd files (PNG named .JPEG, CMYK) to RGB JPEG
    fix: bool = False
    # JPEG quality of the files verify.fix re-encodes
    fix_quality: int = 95
    # verify shards; null = twice the parallel jobs
    shards: int | None = None
    # also check the archives' md5s when the archives are present
    check_md5: bool = False
    # where the JSON report goes
    report: str = "${storage.state_dir}/verify-${split.name}.json"
    # largest image file read (bytes); ImageNet's largest is about 15 MB; a larger file fails
    max_file_bytes: int = 67108864
    # most pixels an image header may declare (PIL's Image.MAX_IMAGE_PIXELS); more fails at header and decode
    max_pixels: int = 89478485
    # most scans of a JPEG (progressive ones have ~10); more fails (counted at header for progressive JPEGs)
    max_scans: int = 100


@dataclass
class VerifyConfig(CommandConfig):
    # options of `verify`
    verify: VerifyOptions = field(default_factory=VerifyOptions)


@dataclass
class SynthOptions:
    # number of classes (leaf synsets)
    classes: int = 10
    # fewest train images of a class (ImageNet; Places365 gives every class train_max)
    train_min: int = 4
    # most train images of a class (Places365: the train images of every class)
    train_max: int = 8
    # val images per class
    val_per_class: int = 3
    # non-leaf synsets added to meta.mat (ImageNet only)
    nonleaf: int = 5
    # smallest image side in pixels
    min_side: int = 32
    # largest image side in pixels
    max_side: int = 64
    # JPEG quality of the images
    quality: int = 90
    # add the odd files of the real set (CMYK, PNG named .JPEG, grayscale; ImageNet only)
    odd_files: bool = True
    # random seed; the same seed writes the same archives
    seed: int = 0
    # overwrite archives that exist
    overwrite: bool = False


@dataclass
class SynthConfig(CommandConfig):
    # options of `synth`
    synth: SynthOptions = field(default_factory=SynthOptions)


@dataclass
class StatusOptions:
    # log lines shown for each unit that did not finish
    tail: int = 20
    # also print one row per unit (state, the job that ran it, SLURM's pending reason, images, bytes)
    units: bool = False
    # print the whole status as one JSON object (for scripts) instead of text
    json: bool = False


@dataclass
class StatusConfig(CommandConfig):
    # options of `status`
    status: StatusOptions = field(default_factory=StatusOptions)


@dataclass
class BenchOptions:
    # split the loader iterates
    split: Split = Split.train
    # epochs to iterate
    epochs: int = 1
    # stop after this many batches per epoch; null = the whole epoch
    max_batches: int | None = None
    # check that the ranks together covered the split (each val image once, train once per epoch)
    check_coverage: bool = True
    # table the run's row is appended to (CSV + a .md rendering); null = bench.csv in the sweep
    # folder under -m, else ${storage.state_dir}/bench.csv
    table: str | None = None


@dataclass
class BenchConfig(CommandConfig):
    # options of `bench`
    bench: BenchOptions = field(default_factory=BenchOptions)


@dataclass
class StageOptions:
    # what to stage: a prepared root (copied to storage.root) or the folder of the three archives
    source: str = MISSING
    # what source holds: root, archives (copied to storage.archive_dir, then prepared here) or auto
    mode: StageMode = StageMode.auto
    # launcher's records of the source root (manifests); null = <source>/.launcher
    source_state_dir: str | None = None
    # reuse a complete staged copy of the same source
    reuse: bool = True
    # files copied at once
    threads: int = 8
    # seconds the other local ranks wait for local rank 0 to finish staging
    wait_s: float = 3600


@dataclass
class StageConfig(CommandConfig):
    # options of `stage`
    stage: StageOptions = field(default_factory=StageOptions)
    # options of the prepare step on the node (stage.mode=archives)
    prepare: PrepareOptions = field(default_factory=PrepareOptions)


@dataclass
class DemoConfig(CommandConfig):
    # options of the synthetic archives the demo writes
    synth: SynthOptions = field(default_factory=SynthOptions)
    # options of the prepare step
    prepare: PrepareOptions = field(default_factory=PrepareOptions)
    # options of the verify step
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    # options of the loader step
    bench: BenchOptions = field(default_factory=BenchOptions)


@dataclass
class TrainingConfig(CommandConfig):
    """What training code composes (launcher.training_config): the groups, no command options."""


COMMAND_SCHEMAS = {
    "prepare": PrepareConfig,
    "verify": VerifyConfig,
    "synth": SynthConfig,
    "status": StatusConfig,
    "bench": BenchConfig,
    "stage": StageConfig,
    "demo": DemoConfig,
    "training": TrainingConfig,
}
