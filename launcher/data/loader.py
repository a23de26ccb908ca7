"""Loaders per rank: rank and world from torch.distributed, torchrun or SLURM, the train and eval
samplers, and the DataLoader built with every `loader` option."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from launcher.core.errors import LauncherError

try:  # the C extension (launcher/data/_jpeg.c, built against libjpeg-turbo): decodes only a train crop
    from launcher.data import _jpeg
except ImportError:  # built without libjpeg's headers: every image is decoded whole
    _jpeg = None

from launcher.data.dataset import build_dataset
from launcher.data.fastpath import collate
from launcher.data.nodes import LOADER_DEFAULTS, options, say_once, section


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process, from what a launcher says, else (0, 1) -- the whole split:
    torch.distributed if initialized, else RANK/WORLD_SIZE (torchrun, submitit), else SLURM's task
    variables in a process that srun started as one of its tasks (SLURM_STEP_ID set; the world is
    SLURM_STEP_NUM_TASKS). A plain `python train.py` in an `sbatch --ntasks=N` script has
    SLURM_PROCID=0 and SLURM_NTASKS=N too, but it is one process: it gets the whole split, and
    stderr says once why it was not sharded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return checked_rank("RANK", "WORLD_SIZE")
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return checked_rank("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
    tasks = env.get("SLURM_NTASKS", "")
    if DIGITS.fullmatch(tasks) and int(tasks) > 1:
        say_once(
            f"launcher.data: SLURM_NTASKS={tasks} but this process was not started by srun as one of the "
            "tasks (no SLURM_STEP_ID), and torch.distributed is not initialized: loading the whole split "
            "on this one process. To shard, start one process per task with `srun python ...` (or torchrun), "
            "or call torch.distributed.init_process_group first."
        )
    elif "WORLD_SIZE" in env or "RANK" in env:
        say_once(
            "launcher.data: only one of RANK and WORLD_SIZE is set (torchrun sets both): loading the whole "
            "split on this one process."
        )
    return 0, 1


DIGITS = re.compile(r"[0-9]{1,9}", re.ASCII)


def checked_rank(rank_key: str, world_key: str) -> tuple[int, int]:
    """(int(env[rank_key]), int(env[world_key])) when both are whole numbers with rank < world."""
    rank, world = os.environ[rank_key], os.environ[world_key]
    if not (DIGITS.fullmatch(rank) and DIGITS.fullmatch(world) and int(rank) < int(world)):
        raise LauncherError(
            f"{rank_key}={rank!r} and {world_key}={world!r} are not a rank and a world size "
            f"(whole numbers, rank < world size): fix or unset them"
        )
    return int(rank), int(world)


def local_rank_and_size() -> tuple[int, int]:
    """(local rank, ranks on this node) from LOCAL_RANK/LOCAL_WORLD_SIZE or SLURM_LOCALID/..."""
    for rank, size in (("LOCAL_RANK", "LOCAL_WORLD_SIZE"), ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")):
        if rank in os.environ:
            return int(os.environ[rank]), int(os.environ.get(size, "1").split("(")[0])
    return 0, 1


class TrainSampler(DistributedSampler):
    """DistributedSampler (every rank draws the same permutation of seed + epoch and takes its share)
    that advances its epoch by itself until `set_epoch` is called: each new iteration (each
    `for batch in loader`) takes the next epoch, so code that never calls `set_epoch` (pytorch/examples
    outside DDP, code ported from `shuffle=True`) still gets a new order every epoch. Once
    `set_epoch(e)` is called the caller owns the epoch, as with a plain DistributedSampler: every
    iteration uses the epoch last set (resumed jobs stay deterministic; looking at the order with
    `list(sampler)` before iterating changes nothing). Every rank iterates as often as the others,
    so the ranks agree without talking."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.iterations = 0  # iterations begun while no set_epoch was called
        self.pinned = False  # set_epoch was called: the caller owns the epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.pinned = True

    def __iter__(self) -> Iterator[int]:
        if not self.pinned:
            self.epoch = self.iterations
            self.iterations += 1
        return super().__iter__()


class EvalSampler(DistributedSampler):
    """Rank r of `world` takes indices r, r + world, ...: together the ranks see every index exactly
    once (DistributedSampler pads with duplicates, which makes distributed accuracy wrong). A
    DistributedSampler by type, so Lightning under DDP keeps it instead of sharding it again."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):  # no super().__init__: no dataset
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size
        # DistributedSampler's attributes, for code that reads them (Lightning, samplers' users)
        self.dataset, self.num_replicas, self.epoch, self.seed = range(size), world_size, 0, 0
        self.shuffle, self.drop_last = False, False
        self.num_samples = len(self)
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Eval order does not change; here so that `set_epoch` works on every loader."""
        self.epoch = epoch


def default_workers() -> int:
    """The cores of this task: SLURM_CPUS_PER_TASK, else this process's cores shared by the local ranks."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_rank_and_size()[1])


def make_loader(
    dataset: Any,
    train: bool,
    options_node: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` with the `loader` options, for this rank (`loader.batch_size` is
    per rank): train with a `TrainSampler` (a new shuffle every epoch), eval with an `EvalSampler`."""
    o = options(options_node, LOADER_DEFAULTS, "loader", ignore=("dataset",))
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if train:
        sampler: Sampler = TrainSampler(dataset, world_size, rank, seed=o["seed"], drop_last=o["drop_last"])
        batch_size = o["batch_size"]
        require_a_batch(len(sampler), len(dataset), batch_size, world_size, bool(o["drop_last"]))
    else:
        sampler = EvalSampler(len(dataset), rank, world_size)
        batch_size = o["eval_batch_size"] or o["batch_size"]
    workers = default_workers() if o["num_workers"] is None else o["num_workers"]
    generator = torch.Generator().manual_seed(o["seed"] * 65_536 + rank)  # augmentation seeds differ per rank
    extra = {"persistent_workers": o["persistent_workers"], "prefetch_factor": o["prefetch_factor"]} if workers else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=bool(o["pin_memory"]) and torch.cuda.is_available(),
        drop_last=bool(o["drop_last"]) and train,
        generator=generator,
        **extra,
    )


def require_a_batch(share: int, total: int, batch_size: int, world_size: int, drop_last: bool) -> None:
    """With drop_last a rank whose share is smaller than one batch would run empty epochs: say so."""
    if drop_last and share < batch_size:
        fix = f"loader.batch_size={share} or less" if share else f"at most {total} rank(s)"
        raise LauncherError(
            f"loader.batch_size={batch_size} (per rank) is larger than this rank's share of the train split "
            f"({share} of {total} images over {world_size} rank(s)): with loader.drop_last=true every epoch "
            f"would have no batch. Use {fix}, or loader.drop_last=false."
        )


def build_loader(cfg: Any, split: str, dataset: Any = None) -> DataLoader:
    """The DataLoader of `split` for this rank: cfg as `launcher.compose_config` returns it (or any
    config with storage, transform and loader nodes; plain dicts work)."""
    if dataset is None:
        dataset = build_dataset(cfg, split)
    return make_loader(dataset, split == "train", section(cfg, "loader"))


def loader_from_options(dataset: Any, train: bool | None = None, **node: Any) -> DataLoader:
    """`hydra.utils.instantiate(cfg.loader, dataset={"split": "train", "transform": tf})`; train
    defaults to the dataset's split being train."""
    if train is None:  # torchvision's train splits: "train", "train-standard", ...
        train = str(getattr(dataset, "split", "train")).startswith("train")
    return make_loader(dataset, train, node)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the train shuffle (the same on every rank); from then on the caller owns it.
    Optional: without any call, each new pass over a train loader takes the next epoch by itself."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
