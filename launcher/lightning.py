"""`launcher.lightning.ImageNetDataModule`, the public `_target_` of training configs, kept importable
here; the module is launcher.data.lightning."""

from launcher.data.lightning import ImageNetDataModule

__all__ = ["ImageNetDataModule"]
