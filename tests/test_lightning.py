"""launcher.lightning: the DataModule under Lightning's own DDP (2 CPU processes, gloo) keeps our
samplers: train ranks disjoint every epoch with a new order each epoch, val evaluated exactly once
across the ranks (Lightning does not shard it a second time)."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning  # noqa: F401  (the test extra installs it: this suite must not skip the Lightning test)
import pytest
import test_data

from launcher.data import EvalSampler, TrainSampler
from launcher.lightning import ImageNetDataModule

prepared = test_data.prepared  # the session fixture of prepared roots, shared

APP = """\
import json, sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

import launcher
from launcher.lightning import ImageNetDataModule

root, out = sys.argv[1], Path(sys.argv[2])


class Indexed(Dataset):
    \"\"\"The real dataset's images, with each sample's index as its label.\"\"\"

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], i


class DataModule(ImageNetDataModule):
    def make_dataset(self, split):
        return Indexed(super().make_dataset(split))


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen = {"train": {}, "val": {}}

    def training_step(self, batch, i):
        x, index = batch
        self.seen["train"].setdefault(self.current_epoch, []).extend(index.tolist())
        return self.layer(x.mean((2, 3))).sum()

    def validation_step(self, batch, i):
        self.seen["val"].setdefault(self.current_epoch, []).extend(batch[1].tolist())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_fit_end(self):
        trainer = self.trainer
        samplers = [type(trainer.train_dataloader.sampler).__name__, type(trainer.val_dataloaders.sampler).__name__]
        record = {"rank": self.global_rank, "world": trainer.world_size, "samplers": samplers, "seen": self.seen}
        (out / f"rank{self.global_rank}.json").write_text(json.dumps(record))


overrides = [
    f"storage.root={root}",
    "transform=none",
    "transform.train_crop_size=32",
    "transform.eval_crop_size=32",
    "loader.batch_size=4",
    "loader.num_workers=0",
]
trainer = pl.Trainer(
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    max_epochs=2,
    num_sanity_val_steps=0,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    default_root_dir=str(out),
)
trainer.fit(Model(), datamodule=DataModule(launcher.training_config(overrides)))
"""


@pytest.mark.slow
def test_ddp_keeps_our_samplers(prepared, tmp_path):
    root = prepared()
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "app.py").write_text(APP)
    result = subprocess.run(
        [sys.executable, "app.py", str(root), str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(r["samplers"] == ["TrainSampler", "EvalSampler"] for r in ranks)  # not wrapped by Lightning
    dm = ImageNetDataModule(test_data.config(root))
    n_train, n_val = len(dm.make_dataset("train")), len(dm.make_dataset("val"))
    for epoch in ("0", "1"):
        zero, one = (r["seen"]["train"][epoch] for r in ranks)
        assert not set(zero) & set(one) and len(zero) == len(set(zero)) and len(zero) >= n_train // 2 - 4
        val = ranks[0]["seen"]["val"][epoch] + ranks[1]["seen"]["val"][epoch]
        assert sorted(val) == list(range(n_val))  # every val image exactly once across the ranks
    assert ranks[0]["seen"]["train"]["0"] != ranks[0]["seen"]["train"]["1"]  # a new order each epoch


def test_datamodule_from_instantiate_kwargs(prepared):
    """hydra.utils.instantiate(cfg.data) with `_recursive_: false` passes the groups as keywords."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = test_data.config(prepared(), "loader.batch_size=2", "loader.num_workers=0")
    data = OmegaConf.create(
        {"_target_": "launcher.lightning.ImageNetDataModule", "_recursive_": False, **OmegaConf.to_container(cfg)}
    )
    dm = instantiate(data)
    assert isinstance(dm, ImageNetDataModule)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, TrainSampler) and isinstance(val.sampler, EvalSampler)
    assert len(next(iter(train))[1]) == 2 and len(val.sampler) == len(dm.datasets["val"])


def test_datamodule_needs_storage():
    with pytest.raises(ValueError, match="storage"):
        ImageNetDataModule({"loader": {}})
