"""A LightningDataModule of a prepared root, built from the same config as every other loader
(optional: `pip install "launcher[lightning]"`).

    cfg = launcher.training_config(["storage.root=/lustre/datasets/imagenet", "loader.batch_size=128"])
    trainer = lightning.Trainer(accelerator="gpu", devices=4, strategy="ddp")
    trainer.fit(model, datamodule=ImageNetDataModule(cfg))

or, lightning-hydra-template style, `hydra.utils.instantiate(cfg.data)` with a `data` node that holds
our groups and `_target_: launcher.lightning.ImageNetDataModule`, `_recursive_: false`.

Under DDP, Lightning replaces a DataLoader's sampler with a DistributedSampler unless the sampler
already is one (`use_distributed_sampler=True`, its default). Ours are: the train loader's
`TrainSampler` gives each rank its disjoint share of one permutation (Lightning calls its
`set_epoch` every epoch), the eval loaders' `EvalSampler` gives rank r the images r, r + world, ...
so that every val image is evaluated exactly once, and Lightning keeps both as they are. Rank and
world come from torch.distributed, which Lightning initializes before it asks for the loaders.
`loader.batch_size` is per rank (per device), as Lightning's own batch sizes are.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from launcher.data import ImageNet, build_dataset, build_loader, section

GROUPS = ("storage", "dataset", "split", "cluster", "transform", "loader")


class ImageNetDataModule(pl.LightningDataModule):
    """train_dataloader / val_dataloader / test_dataloader (val: ImageNet has no labelled test split)
    of the root in cfg.storage, with cfg.transform and cfg.loader. `cfg` is any node holding those
    groups (`launcher.training_config(...)`, or a training repo's `cfg.data`); the groups may also be
    given as keyword arguments, as `hydra.utils.instantiate(cfg.data)` passes them."""

    def __init__(self, cfg: Any = None, **groups: Any) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else {k: v for k, v in groups.items() if k in GROUPS}
        if section(self.cfg, "storage") is None:
            raise ValueError("ImageNetDataModule needs a config with a storage node (storage.root at least)")
        self.datasets: dict[str, Any] = {}

    def make_dataset(self, split: str) -> ImageNet:
        """The dataset of a split, with the config's transform (build_dataset)."""
        return build_dataset(self.cfg, split)

    def setup(self, stage: str | None = None) -> None:
        splits = ("train", "val") if stage in (None, "fit") else ("val",)
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self.make_dataset(split)
        return build_loader(self.cfg, split, dataset=self.datasets[split])

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("val")
