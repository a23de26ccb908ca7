"""A training job's data side, reusing launcher's configs: what each rank of `srun` runs.

    srun python slurm/train_example.py storage=lustre storage.root=/lustre/datasets/imagenet \
        transform=randaugment loader.batch_size=128

1. compose the same configs prepare used: launcher.training_config (any Hydra override works here too);
2. stage the prepared root to node-local disk once per node (local rank 0 copies, the others wait): a
   folder root's files, or with storage.format=tar its archives and their indexes (a few large files);
3. join torch.distributed from SLURM's variables of the srun step (gloo on CPU, nccl on GPU);
4. build the loaders (loader.batch_size is per rank); set_epoch sets each epoch's shuffle (without
   any call each pass takes the next epoch by itself); evaluate every val image exactly once.
The model is left out: this shows how ranks find their data.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist

from launcher import training_config
from launcher.data import build_loader, normalize_on_device, set_epoch
from launcher.stage import stage_root
from launcher.tarformat.staging import stage_tar


def init_distributed() -> tuple[int, int]:
    """torch.distributed from srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS (the tasks of this srun step; a
    plain `python` in the batch script is one process); the first node hosts the rendezvous."""
    in_step = "SLURM_STEP_ID" in os.environ
    rank = int(os.environ.get("SLURM_PROCID", 0)) if in_step else 0
    world = int(os.environ.get("SLURM_STEP_NUM_TASKS", 1)) if in_step else 1
    if world > 1:
        nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
        first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split()
        os.environ.setdefault("MASTER_ADDR", first[0] if first else "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world)
    return rank, world


def stage(cfg, local: str) -> list[str]:
    """Copy the prepared root to `local` (a folder root: its files; storage.format=tar: meta.bin, the
    two archives and their indexes, a few large files); the overrides that point the config there."""
    if cfg.storage.format == "tar":
        archives = os.path.join(local, "archives")
        stage_tar(cfg.storage.root, local, archives, source_state_dir=cfg.storage.state_dir)
        return [f"storage.root={local}", f"storage.archive_dir={archives}", f"storage.state_dir={local}/.launcher"]
    stage_root(cfg.storage.root, local, source_state_dir=cfg.storage.state_dir)
    return [f"storage.root={local}", f"storage.state_dir={local}/.launcher"]


def main(overrides: list[str]) -> None:
    rank, world = init_distributed()
    cfg = training_config(overrides)
    if os.environ.get("SLURM_TMPDIR") or os.environ.get("STAGE_TO"):  # node-local copy, once per node
        local = os.environ.get("STAGE_TO") or os.path.join(os.environ["SLURM_TMPDIR"], "imagenet")
        cfg = training_config([*overrides, *stage(cfg, local)])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train, val = build_loader(cfg, "train"), build_loader(cfg, "val")
    seen = torch.zeros(2, dtype=torch.long)
    for epoch in range(int(os.environ.get("EPOCHS", 1))):
        set_epoch(train, epoch)  # resumable; every rank shuffles the same way: each sample once per epoch
        for images, labels in train:
            if cfg.transform.output == "uint8":
                images = normalize_on_device(images, cfg.transform.mean, cfg.transform.std, device)
            seen[0] += len(labels)  # forward/backward go here
    for _images, labels in val:  # no padding: every val image on exactly one rank
        seen[1] += len(labels)
    if world > 1:
        dist.all_reduce(seen)
    if rank == 0:
        print(f"ranks={world} train images/epoch={seen[0].item()} val images={seen[1].item()}", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
