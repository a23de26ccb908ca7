"""Datasets, transforms, samplers and loaders for a prepared root: what a training script imports.

    cfg = launcher.training_config(["storage.root=/data/imagenet"])  # or your own Hydra config
    train = build_loader(cfg, "train")          # DataLoader: manifest dataset + transforms + sampler
    for epoch in range(epochs):
        set_epoch(train, epoch)                 # optional: without it each pass takes the next epoch
        for images, targets in train: ...

- `build_dataset(cfg, split)`: the dataset `cfg.dataset.adapter`'s `load_split` builds, a subclass of
  its torchvision class with the same attributes; for ImageNet (also a config without a dataset
  node) an `ImageNet`, a subclass of `torchvision.datasets.ImageNet` with the
  same `classes, wnids, class_to_idx, wnid_to_idx, samples, targets, imgs`. With the prepare manifest
  (`state_dir/manifest-<split>.json`) it is built from that file alone (no directory walk); without
  it torchvision's own scan runs. It never extracts archives. Images are decoded by
  `torchvision.io` (through launcher.data.imageio) into uint8 RGB tensors (PIL for what it cannot decode, e.g. CMYK).
- `build_transforms(cfg.transform, train)`: a `torchvision.transforms.v2.Compose` for uint8 image
  tensors (or PIL images): `standard` (RandomResizedCrop + flip for train, Resize + CenterCrop for
  eval), an optional policy (`randaugment`, `autoaugment`, `trivialaugment`), then float32 +
  Normalize. `transform.output=uint8` stops at uint8: normalize on the GPU with
  `normalize_on_device(images, mean, std, device)`, which gives the same values as float output.
  A uint8 batch is channels-last (HWC in memory, as DALI and FFCV hand it over; the float batch on
  the GPU stays so, the layout convnets train fastest in under AMP).
- `build_loader(cfg, split)`: a DataLoader with every `loader` option, per rank (batch_size is per
  rank). Train uses a `TrainSampler` (a DistributedSampler, world size 1 when alone) that takes the
  next epoch's shuffle on each new pass until `set_epoch(loader, epoch)` is called; from then on the
  caller sets the epoch. Eval uses
  `EvalSampler`: rank r takes indices r, r+world, ..., so the ranks together see every image
  exactly once (no padding with duplicates; sum correct counts with all_reduce). Rank and world
  come from torch.distributed when initialized, else RANK/WORLD_SIZE (torchrun), else SLURM's task
  variables in an srun step; otherwise the whole split (stderr says why, once).
- `hydra.utils.instantiate`: `instantiate(cfg.transform, train=True)`,
  `instantiate(cfg.loader.dataset, split="val", transform=tf)` and
  `instantiate(cfg.loader, dataset={"split": "train", "transform": tf})`.

Config nodes may be DictConfig, dataclasses or plain dicts; this module imports no Hydra.

The modules, each one concern: nodes (config nodes -> values), decode (one file, bounded),
fastpath (crop-only decode, resize into the batch, copy-free collate), transforms, samples (the
manifest as cached columns), dataset (`FastBatches`, `ImageNet`, the manifest lookup every adapter's
`load_split` uses, `load_dataset`), loader (ranks, samplers, DataLoader). Every name
below is importable from launcher.data, as it was when this was one module.
"""

from launcher.data.dataset import (
    FastBatches,
    ImageNet,
    build_dataset,
    load_dataset,
    load_imagenet,
    require_prepared,
    split_manifest,
)
from launcher.data.decode import LOADER_LIMITS, ImageRefused, decode_file, decode_with_pil, read_image, refused
from launcher.data.fastpath import (
    NATIVE_UINT8_BILINEAR,
    SCRATCH,
    Pipeline,
    Scratch,
    _jpeg,  # noqa: F401  (the C extension, or None when it was not built)
    apply_step,
    collate,
    copy_uint8,
    crop_box,
    draw_uniform,
    empty_batch,
    float32,
    log_ratios,
    new_batch,
    resize_into,
)
from launcher.data.loader import (
    DIGITS,
    EvalSampler,
    TrainSampler,
    build_loader,
    checked_rank,
    default_workers,
    loader_from_options,
    local_rank_and_size,
    make_loader,
    rank_and_world,
    require_a_batch,
    set_epoch,
)
from launcher.data.nodes import (
    HYDRA_KEYS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    LOADER_DEFAULTS,
    OUTPUTS,
    POLICIES,
    SAID,
    SPLITS,
    TRANSFORM_DEFAULTS,
    as_dict,
    options,
    say_once,
    section,
)
from launcher.data.samples import Columns, SampleList, cache_paths, manifest_for
from launcher.data.transforms import build_transforms, normalize_on_device, policy_steps, transforms_from_options

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "POLICIES",
    "OUTPUTS",
    "INTERPOLATIONS",
    "TRANSFORM_DEFAULTS",
    "LOADER_DEFAULTS",
    "HYDRA_KEYS",
    "as_dict",
    "options",
    "section",
    "ImageRefused",
    "LOADER_LIMITS",
    "read_image",
    "refused",
    "decode_file",
    "decode_with_pil",
    "Pipeline",
    "copy_uint8",
    "crop_box",
    "Scratch",
    "SCRATCH",
    "draw_uniform",
    "float32",
    "NATIVE_UINT8_BILINEAR",
    "resize_into",
    "log_ratios",
    "apply_step",
    "build_transforms",
    "policy_steps",
    "transforms_from_options",
    "normalize_on_device",
    "ImageNet",
    "new_batch",
    "empty_batch",
    "collate",
    "require_prepared",
    "manifest_for",
    "cache_paths",
    "Columns",
    "SampleList",
    "load_imagenet",
    "load_dataset",
    "split_manifest",
    "FastBatches",
    "build_dataset",
    "rank_and_world",
    "DIGITS",
    "SAID",
    "checked_rank",
    "say_once",
    "local_rank_and_size",
    "TrainSampler",
    "EvalSampler",
    "default_workers",
    "make_loader",
    "require_a_batch",
    "build_loader",
    "loader_from_options",
    "set_epoch",
]
