"""Datasets, transforms, samplers and loaders for a prepared root: what a training script imports.

    cfg = launcher.training_config(["storage.root=/data/imagenet"])  # or your own Hydra config
    train = build_loader(cfg, "train")          # DataLoader: manifest dataset + transforms + sampler
    for epoch in range(epochs):
        set_epoch(train, epoch)                 # optional: without it each pass takes the next epoch
        for images, targets in train: ...

- `build_dataset(cfg, split)`: an `ImageNet`, a subclass of `torchvision.datasets.ImageNet` with the
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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import threading
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy
import torch
import torchvision
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from launcher.check.imagebounds import (
    BadImage,
    Limits,
    Refused,
    check_image,
    check_pixels,
    read_regular,
    too_many_scans,
)
from launcher.core import completion
from launcher.core.errors import LauncherError
from launcher.core.manifest import read_manifest
from launcher.data import shared_batches
from launcher.data.imageio import ImageReadMode, decode_image

try:  # the C extension (launcher/data/_jpeg.c, built against libjpeg-turbo): decodes only a train crop
    from launcher.data import _jpeg
except ImportError:  # built without libjpeg's headers: every image is decoded whole
    _jpeg = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
POLICIES = ("randaugment", "autoaugment", "trivialaugment")
OUTPUTS = ("float", "uint8")
INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}
# What a transform or loader node holds when a key is left out (same as launcher.config's schemas;
# tests/test_data.py checks that they agree).
TRANSFORM_DEFAULTS: dict[str, Any] = {
    "name": "standard",
    "policy": None,
    "train_crop_size": 224,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 4 / 3],
    "hflip": 0.5,
    "eval_crop_size": 224,
    "crop_ratio": 0.875,
    "interpolation": "bilinear",
    "num_ops": 2,
    "magnitude": 9,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "output": "float",
    "max_file_bytes": 64 << 20,
    "max_pixels": 89_478_485,
    "max_scans": 100,
}
LOADER_DEFAULTS: dict[str, Any] = {
    "name": "default",
    "batch_size": 256,
    "eval_batch_size": None,
    "num_workers": None,
    "pin_memory": True,
    "persistent_workers": True,
    "prefetch_factor": 2,
    "drop_last": True,
    "seed": 0,
    "use_manifest": True,
    "allow_incomplete": False,
}
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


# ---------------------------------------------------------------- config nodes -> plain values


def as_dict(node: Any) -> dict:
    """A config node (DictConfig, dataclass, mapping, namespace) as a plain, resolved dict."""
    if node is None:
        return {}
    if type(node).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.asdict(node)
    if isinstance(node, Mapping):
        return dict(node)
    return dict(vars(node))


def options(node: Any, defaults: dict[str, Any], what: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """`node` over `defaults`; a key that is in neither (nor in `ignore`) fails, listing the valid ones."""
    given = {k: v for k, v in as_dict(node).items() if k not in HYDRA_KEYS and k not in ignore}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise LauncherError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(defaults)}")
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}


def section(cfg: Any, name: str) -> Any:
    """cfg.<name> or cfg[name], or None."""
    if isinstance(cfg, Mapping) or type(cfg).__module__.startswith("omegaconf"):
        return cfg.get(name)
    return getattr(cfg, name, None)


# ---------------------------------------------------------------- decoding


class ImageRefused(LauncherError):
    """An image file a loader does not decode: not a regular file, too large, more pixels or JPEG
    scans than its bounds, or a header verify would fail; the message names the file."""


# what one image file may cost when no transform node says (transform.max_file_bytes, max_pixels, max_scans)
LOADER_LIMITS = Limits(TRANSFORM_DEFAULTS["max_file_bytes"], TRANSFORM_DEFAULTS["max_pixels"], option="transform")


def read_image(path: str, limits: Limits = LOADER_LIMITS) -> bytearray:
    """The bytes of the image file at `path`, checked before any decoder allocates: a regular file
    (opened without following links or waiting on a FIFO) of at most limits.max_file_bytes, a header
    declaring at most limits.max_pixels pixels, a JPEG of at most limits.max_scans scans."""
    try:
        data = read_regular(path, limits)
        if not data:
            raise BadImage("empty file (0 bytes)")
        check_image(data, limits)
    except (Refused, BadImage) as err:
        raise refused(path, err) from None
    return data


def refused(path: str, err: Exception) -> ImageRefused:
    fix = "; `launcher verify` lists every such file" if isinstance(err, BadImage) else ""
    return ImageRefused(f"{path}: {err}{fix}")


def decode_file(path: str, limits: Limits = LOADER_LIMITS) -> torch.Tensor:
    """The image at `path` as a uint8 RGB tensor (3, H, W): torchvision.io (JPEG, PNG, ... by
    content, so a PNG named .JPEG works), PIL for what it cannot decode (e.g. CMYK JPEGs); the file
    is read and checked against `limits` first (read_image)."""
    data = read_image(path, limits)
    try:
        return decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return decode_with_pil(path, data, limits)


def decode_with_pil(path: str, data: bytes | bytearray | None = None, limits: Limits = LOADER_LIMITS) -> torch.Tensor:
    """PIL's decode of the image at `path` (its bytes `data` when already read and checked)."""
    from PIL import Image

    if data is None:
        data = read_image(path, limits)
    with Image.open(io.BytesIO(data)) as im:
        return v2.functional.pil_to_tensor(im.convert("RGB"))


# ---------------------------------------------------------------- transforms


class Pipeline(v2.Compose):
    """A v2.Compose whose float tail (ToDtype + Normalize) is known, so a batch can be written in place."""

    def __init__(
        self,
        uint8_steps: list,
        mean: Sequence[float],
        std: Sequence[float],
        output: str,
        limits: Limits = LOADER_LIMITS,
    ):
        # what one image file may cost (transform.max_file_bytes, max_pixels, max_scans)
        self.limits = limits
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))] if output == "float" else []
        super().__init__([*uint8_steps, *tail])
        self.head_steps = len(uint8_steps)
        # ToImage then RandomResizedCrop (the train pipelines): decode only the crop of a JPEG
        self.fuses_crop = _jpeg is not None and [type(step) for step in uint8_steps[:2]] == [
            v2.ToImage,
            v2.RandomResizedCrop,
        ]
        # ... and at most a flip after it, uint8 out (standard train): resize straight into the batch
        self.writes_crop = (
            self.fuses_crop
            and output == "uint8"
            and all(type(step) is v2.RandomHorizontalFlip for step in uint8_steps[2:])
        )
        self.mean, self.std, self.output = list(mean), list(std), output
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def head(self, image: Any) -> torch.Tensor:
        """The uint8 steps: decoded image -> augmented uint8 tensor (the same pixels and random draws
        as the v2 steps; crop and flip go straight to their kernels, without v2's dispatch)."""
        for step in self.transforms[: self.head_steps]:
            image = apply_step(step, image)
        return image

    def head_of_file(self, path: str) -> torch.Tensor:
        """head(decode_file(path)), the same pixels; a JPEG under a leading RandomResizedCrop has only
        its crop decoded (launcher.data._jpeg: rows below it are never read, pixels beside it never
        converted), which saves a fifth to a half of the decode."""
        crop = self.decode_crop(path) if self.fuses_crop else None
        if crop is None:
            return self.head(decode_file(path, self.limits))
        step = self.transforms[1]
        image = v2.functional.resize_image(
            crop, list(step.size), interpolation=step.interpolation, antialias=step.antialias
        )
        for step in self.transforms[2 : self.head_steps]:
            image = apply_step(step, image)
        return image

    def decode_crop(self, path: str) -> torch.Tensor | None:
        """The RandomResizedCrop box of the JPEG at `path`, drawn as the step draws it and decoded
        alone (channels-last uint8), or None, before any draw, for what is not such a JPEG. The
        pixel bound is checked on the header before the draw, the scan bound by libjpeg as it reads."""
        try:
            data = read_regular(path, self.limits)
        except Refused as err:
            raise refused(path, err) from None
        try:
            if not data.endswith(b"\xff\xd9"):  # cut short (or trailing bytes): let torchvision.io decide
                raise ValueError(path)
            height, width = _jpeg.size(data)
        except ValueError:  # not a JPEG libjpeg turns into RGB (PNG, CMYK, ...): the usual way
            return None
        try:
            check_pixels(width, height, self.limits)
        except Refused as err:
            raise refused(path, err) from None
        box = crop_box(self.transforms[1], height, width)
        try:
            pixels = _jpeg.decode_crop(data, *box, self.limits.max_scans)
        except _jpeg.LimitError:
            raise refused(path, too_many_scans(self.limits, "libjpeg reached the next one")) from None
        except ValueError:  # broken past the header: let torchvision.io (or PIL) decide, same crop
            return v2.functional.crop_image(decode_file(path, self.limits), *box)
        return torch.frombuffer(pixels, dtype=torch.uint8).view(box[2], box[3], 3).permute(2, 0, 1)

    def write_file(self, path: str, out: torch.Tensor) -> None:
        """out[...] = self.finish(self.head_of_file(path)), the same pixels and draws; with
        `writes_crop` the resized crop goes straight into `out` (and is flipped there)."""
        if not self.writes_crop:
            return self.write(self.head_of_file(path), out)
        crop = self.decode_crop(path)
        if crop is None:
            return self.write(self.head(decode_file(path, self.limits)), out)
        resize_into(crop, out, self.transforms[1])
        for step in self.transforms[2 : self.head_steps]:  # RandomHorizontalFlip
            if draw_uniform() < float32(step.p):  # v2: torch.rand(1) >= p keeps the image
                out.copy_(out.flip(-1))

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """The rest: self(x) == self.finish(self.head(x)) for the same random draws."""
        for step in self.transforms[self.head_steps :]:
            image = step(image)
        return image

    def write(self, image: torch.Tensor, out: torch.Tensor) -> None:
        """out[...] = self.finish(image), with no new tensor but a uint8 scratch for float output."""
        if self.output == "uint8":
            if image.stride() == out.stride():
                out.copy_(image)  # channels-last to channels-last: one straight copy
            else:
                copy_uint8(image, out)
            return
        if image.dtype == torch.uint8 and not image.is_contiguous():
            image = copy_uint8(image, torch.empty(image.shape, dtype=torch.uint8))
        out.copy_(image)  # ToDtype(scale=True) and Normalize's exact operations, in place
        out.mul_(1.0 / 255).sub_(self._mean).div_(self._std)


def copy_uint8(image: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[...] = image; numpy's strided copy turns a channels-last (3, H, W) uint8 image (what
    decoding and resizing give) into planes ~4x faster than torch's."""
    if image.dtype == torch.uint8 and out.dtype == torch.uint8 and image.device.type == "cpu":
        numpy.copyto(out.numpy(), image.numpy())
    else:
        out.copy_(image)
    return out


def crop_box(step: v2.RandomResizedCrop, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) as `step.make_params` draws it for a height x width image: the same
    torch random numbers in the same order (tests compare), without its per-call tensors."""
    scale, ratio = step.scale, step.ratio
    low, high = log_ratios(tuple(ratio))
    area = height * width
    real, integer = SCRATCH.real, SCRATCH.integer
    for _ in range(10):
        target_area = area * real.uniform_(scale[0], scale[1]).item()
        aspect_ratio = real.uniform_(low, high).exp_().item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = integer.random_(0, height - h + 1).item()  # what torch.randint(0, n, (1,)) runs
            left = integer.random_(0, width - w + 1).item()
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop, clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Scratch(threading.local):
    """One-element tensors (per thread) that the per-image random draws fill: `real.uniform_(a, b)`
    is what torch.rand and torch.empty(1).uniform_ run, `integer.random_(a, b)` what torch.randint
    runs, without a new tensor for each draw."""

    def __init__(self):
        self.real = torch.empty(1)
        self.integer = torch.empty(1, dtype=torch.int64)


SCRATCH = Scratch()


def draw_uniform() -> float:
    """torch.rand(1).item(), drawn into the scratch tensor."""
    return SCRATCH.real.uniform_().item()


@functools.lru_cache(maxsize=16)
def float32(value: float) -> float:
    """`value` rounded to float32, as torch rounds a Python number it compares with a float32 tensor."""
    return float(numpy.float32(value))


# torchvision's resize_image runs torch's own uint8 kernel for antialiased bilinear on these CPUs
NATIVE_UINT8_BILINEAR = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resize_into(image: torch.Tensor, out: torch.Tensor, step: v2.RandomResizedCrop) -> None:
    """out[...] = resize_image(image) to step.size, the same pixels. For a channels-last uint8 image
    and slot under antialiased bilinear, torch's kernel writes the slot itself (no image between)."""
    image, slot = image.unsqueeze(0), out.unsqueeze(0)
    if (
        NATIVE_UINT8_BILINEAR
        and step.interpolation == v2.InterpolationMode.BILINEAR
        and step.antialias
        and image.dtype == slot.dtype == torch.uint8
        and image.shape[-2:] != slot.shape[-2:]
        and image.is_contiguous(memory_format=torch.channels_last)
        and slot.is_contiguous(memory_format=torch.channels_last)
    ):
        torch.ops.aten._upsample_bilinear2d_aa.out(image, list(slot.shape[-2:]), False, None, None, out=slot)
    else:
        out.copy_(v2.functional.resize_image(image[0], list(step.size), step.interpolation, antialias=step.antialias))


@functools.lru_cache(maxsize=16)
def log_ratios(ratio: tuple[float, float]) -> tuple[float, float]:
    """make_params' float32 log aspect ratios, as Python floats."""
    return tuple(float(r) for r in torch.log(torch.tensor(ratio)))


def apply_step(step: Any, image: Any) -> Any:
    """step(image) for a tensor image; RandomResizedCrop and RandomHorizontalFlip without v2's
    per-call machinery (a tenth of a millisecond per image), drawing the same random numbers."""
    if not isinstance(image, torch.Tensor):
        return step(image)
    kind = type(step)
    if kind is v2.ToImage:
        return image
    if kind is v2.RandomResizedCrop:
        return v2.functional.resized_crop_image(
            image,
            *crop_box(step, *image.shape[-2:]),
            size=list(step.size),
            interpolation=step.interpolation,
            antialias=step.antialias,
        )
    if kind is v2.RandomHorizontalFlip:
        return image if draw_uniform() >= float32(step.p) else v2.functional.horizontal_flip_image(image)
    return step(image)


def build_transforms(cfg: Any, train: bool) -> Pipeline:
    """The v2 pipeline of a `transform` node for train (augmenting) or eval images."""
    o = options(cfg, TRANSFORM_DEFAULTS, "transform")
    if o["interpolation"] not in INTERPOLATIONS:
        raise LauncherError(f"transform.interpolation={o['interpolation']!r} is not one of {', '.join(INTERPOLATIONS)}")
    if o["output"] not in OUTPUTS:
        raise LauncherError(f"transform.output={o['output']!r} is not one of {', '.join(OUTPUTS)}")
    if o["policy"] is not None and o["policy"] not in POLICIES:
        raise LauncherError(f"transform.policy={o['policy']!r} is not null or one of {', '.join(POLICIES)}")
    interpolation = INTERPOLATIONS[o["interpolation"]]
    steps: list = [v2.ToImage()]
    if train and o["name"] != "none":
        steps.append(
            v2.RandomResizedCrop(
                o["train_crop_size"],
                scale=tuple(o["scale"]),
                ratio=tuple(o["ratio"]),
                interpolation=interpolation,
                antialias=True,
            )
        )
        if o["hflip"] > 0:
            steps.append(v2.RandomHorizontalFlip(o["hflip"]))
        steps += policy_steps(o, interpolation)
    else:
        crop = o["train_crop_size"] if train else o["eval_crop_size"]
        steps.append(v2.Resize(math.floor(crop / o["crop_ratio"]), interpolation=interpolation, antialias=True))
        steps.append(v2.CenterCrop(crop))
    limits = Limits(o["max_file_bytes"], o["max_pixels"], o["max_scans"], "transform")
    limits.check()
    return Pipeline(steps, o["mean"], o["std"], o["output"], limits)


def policy_steps(o: dict, interpolation) -> list:
    if o["policy"] == "randaugment":
        return [v2.RandAugment(o["num_ops"], o["magnitude"], interpolation=interpolation)]
    if o["policy"] == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)]
    if o["policy"] == "trivialaugment":
        return [v2.TrivialAugmentWide(interpolation=interpolation)]
    return []


def transforms_from_options(train: bool, **node: Any) -> Pipeline:
    """`hydra.utils.instantiate(cfg.transform, train=True)`."""
    return build_transforms(node, train)


def normalize_on_device(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    non_blocking: bool = True,
) -> torch.Tensor:
    """A uint8 batch (B, 3, H, W) from a `transform.output=uint8` loader -> normalized `dtype` on
    `device` (the GPU: copy 4x fewer bytes, normalize there, as DALI and FFCV do). The values equal
    those of `transform.output=float` for the same images; the memory format (channels-last for our
    uint8 batches) is kept: `.contiguous()` it if a model needs NCHW memory."""
    x = images.to(device, non_blocking=non_blocking) if device is not None else images
    x = x.to(torch.float32).mul_(1.0 / 255)
    x = x.sub_(torch.as_tensor(mean, device=x.device).view(-1, 1, 1))
    x = x.div_(torch.as_tensor(std, device=x.device).view(-1, 1, 1))
    return x.to(dtype)


# ---------------------------------------------------------------- the dataset


class ImageNet(torchvision.datasets.ImageNet):
    """torchvision.datasets.ImageNet with the same attributes, built from the prepare manifest when one
    is given (no directory walk), decoding with torchvision.io; never extracts archives."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        loader: Callable[[str], Any] = decode_file,
        manifest: Columns | dict | None = None,
    ) -> None:
        require_prepared(root, split)
        if manifest is None:
            super().__init__(root, split, transform=transform, target_transform=target_transform, loader=loader)
            return
        columns = manifest if isinstance(manifest, Columns) else Columns.from_manifest(manifest)
        # What torchvision's ImageNet.__init__ sets, in its order, from the manifest instead of a scan.
        root = self.root = os.path.expanduser(root)
        self.split = split
        split_folder = self.split_folder
        VisionDataset.__init__(self, split_folder, transform=transform, target_transform=target_transform)
        self.loader = loader
        self.extensions = IMG_EXTENSIONS
        if columns is not None:
            self.targets = columns.target_list()
            # == torchvision's list of (os.path.join(split_folder, wnid, name), target), made on access
            prefixes = [f"{split_folder}{os.sep}{wnid}{os.sep}" for wnid in columns.wnids]
            self.samples = SampleList(prefixes, columns.names, columns.offsets, self.targets)
        else:  # a manifest in another order than ImageFolder's: the list itself
            self.samples = list(zip(map((split_folder + os.sep).__add__, manifest["paths"]), manifest["targets"]))
            self.targets = [t for _, t in self.samples]
        self.imgs = self.samples
        self.root = root
        wnids, classes = (columns.wnids, columns.classes) if columns else (manifest["wnids"], manifest["classes"])
        self.wnids = list(wnids)
        self.wnid_to_idx = {wnid: i for i, wnid in enumerate(self.wnids)}
        self.classes = [tuple(names) for names in classes]
        self.class_to_idx = {cls: idx for idx, clss in enumerate(self.classes) for cls in clss}

    def __getitems__(self, indices: Sequence[int]) -> list:
        """A batch for the DataLoader: with our Pipeline, every image is written straight into one
        (shared-memory, in a worker) batch tensor; `collate` hands that tensor on without a copy."""
        transform = self.transform
        if not isinstance(transform, Pipeline) or self.target_transform is not None:
            return [self[i] for i in indices]
        out, batch = [], None
        if transform.writes_crop and self.loader is decode_file:  # every image comes out crop-sized
            batch = new_batch(len(indices), (3, *transform.transforms[1].size), transform.output)
            for k, i in enumerate(indices):
                path, target = self.samples[i]
                slot = batch[k]
                transform.write_file(path, slot)
                out.append((slot, target))
            return out
        for k, i in enumerate(indices):
            path, target = self.samples[i]
            image = transform.head_of_file(path) if self.loader is decode_file else transform.head(self.loader(path))
            if k == 0:
                batch = new_batch(len(indices), image.shape, transform.output)
            if batch is not None and image.shape == batch.shape[1:]:
                transform.write(image, batch[k])  # while the image is still in the cache
                out.append((batch[k], target))
            else:  # sizes differ (no crop): each sample on its own, the usual collate
                batch = None
                out.append((transform.finish(image), target))
        return out


def new_batch(size: int, shape: tuple[int, ...], output: str) -> torch.Tensor:
    """The batch `__getitems__` writes: float32 and contiguous, or uint8 and channels-last (HWC in
    memory, the layout decoding and resizing leave an image in, and the one DALI and FFCV hand over),
    so a uint8 sample is copied in one straight pass."""
    if output == "float" or len(shape) != 3:
        return empty_batch((size, *shape), torch.float32 if output == "float" else torch.uint8)
    channels, height, width = shape
    return empty_batch((size, height, width, channels), torch.uint8).permute(0, 3, 1, 2)


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker in shared memory that the worker reuses once
    the main process has let go of it (launcher.data.shared_batches), with room for the targets."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    if shared_batches.AVAILABLE:
        return shared_batches.empty(shape, dtype, extra=8 * shape[0])
    template = torch.empty(0, dtype=dtype)  # a fresh shared-memory file, as default_collate takes
    storage = template._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return template.new(storage).resize_(*shape)


def collate(batch: list) -> Any:
    """default_collate, except that a batch `ImageNet.__getitems__` already wrote (every image a view,
    in order, of one whole tensor) is passed on as that tensor, without a copy (from a worker: with
    the targets, in its reused shared memory)."""
    images = [s[0] for s in batch] if batch and all(isinstance(s, tuple) for s in batch) else []
    first = images[0] if images else None
    base = getattr(first, "_base", None)
    if isinstance(base, torch.Tensor) and base.numel() == len(images) * first.numel():
        step, start = first.numel(), first.storage_offset()
        if all(
            im._base is base
            and im.shape == first.shape
            and im.stride() == first.stride()
            and im.storage_offset() == start + k * step
            for k, im in enumerate(images)
        ):
            whole = first.as_strided((len(images), *first.shape), (step, *first.stride()), start)
            return shared_batches.batch(whole, [s[1] for s in batch])
    return default_collate(batch)


def require_prepared(root: str | Path, split: str) -> None:
    """meta.bin and root/<split> are there (two stats), or the error says to run prepare."""
    if split not in SPLITS:
        raise LauncherError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    root = Path(os.path.expanduser(root))
    missing = [str(p) for p in (root / "meta.bin", root / split) if not p.exists()]
    if missing:
        raise LauncherError(
            f"{root} is not a prepared ImageNet root ({', '.join(missing)} missing). Run "
            f"`launcher prepare storage.root={root} split={split}` first (or point storage.root at a "
            "prepared root); loaders never extract archives."
        )


def manifest_for(state_dir: str | Path | None, split: str) -> Columns | dict | None:
    """The columns of the prepare manifest of `split` (None when there is none): from the binary
    cache of that manifest when it matches (one stat, one read), else parsed and then cached."""
    if state_dir is None:
        return None
    path = Path(state_dir) / f"manifest-{split}.json"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "split": split}
    caches = cache_paths(path)
    for cache in caches:
        if (columns := Columns.read(cache, key)) is not None:
            return columns
    manifest = read_manifest(path)
    if manifest is None or manifest.get("split") != split or len(manifest["paths"]) != len(manifest["targets"]):
        return None
    columns = Columns.from_manifest(manifest)
    if columns is None:
        return manifest
    for cache in caches:
        if columns.write(cache, key):
            break
    return columns


def cache_paths(manifest: Path) -> list[Path]:
    """Beside the manifest, or (read-only state folder) in the user's cache folder."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "launcher"
    digest = hashlib.sha1(str(manifest.absolute()).encode()).hexdigest()[:16]
    return [manifest.with_suffix(".columns"), user / f"{manifest.stem}-{digest}.columns"]


class Columns:
    """A split's manifest in ImageFolder's order as compact columns: per class (sorted WNIDs) its
    image count, and every file name in one UTF-8 string with offsets. Stored as a binary cache of
    the JSON manifest, it loads in milliseconds for 1.28 M images."""

    MAGIC = b"launcher-columns 2\n"

    def __init__(self, wnids: list, classes: list, counts: list[int], names: bytes, offsets: array):
        self.wnids, self.classes, self.counts, self.names, self.offsets = wnids, classes, counts, names, offsets

    @classmethod
    def from_manifest(cls, manifest: dict) -> Columns | None:
        """None when the manifest is not in ImageFolder's order (classes sorted, files under their class)."""
        wnids, paths, targets = manifest["wnids"], manifest["paths"], manifest["targets"]
        if wnids != sorted(wnids) or any(b < a for a, b in zip(targets, targets[1:])):
            return None
        names = []
        for path, target in zip(paths, targets):
            folder, _, name = path.partition("/")
            if folder != wnids[target] or not name:
                return None
            names.append(name.encode())
        offsets = array("q", [0])
        offsets.extend(itertools.accumulate(map(len, names)))
        counts = [0] * len(wnids)
        for target in targets:
            counts[target] += 1
        return cls(wnids, manifest["classes"], counts, b"".join(names), offsets)

    def target_list(self) -> list[int]:
        targets: list[int] = []
        for target, count in enumerate(self.counts):
            targets += [target] * count
        return targets

    def write(self, path: Path, key: dict) -> bool:
        """Write atomically; False when the folder is not writable."""
        header = {**key, "wnids": self.wnids, "classes": self.classes, "counts": self.counts}
        header["sizes"] = [len(self.offsets) * self.offsets.itemsize, len(self.names)]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(self.MAGIC + json.dumps(header).encode() + b"\n")
                f.write(self.offsets.tobytes())
                f.write(self.names)
            os.replace(tmp, path)
            return True
        except OSError:
            tmp.unlink(missing_ok=True)
            return False

    @classmethod
    def read(cls, path: Path, key: dict) -> Columns | None:
        """The cached columns when `path` holds them for this manifest (`key`), else None."""
        try:
            with open(path, "rb") as f:
                if f.readline() != cls.MAGIC or sys.byteorder != "little":
                    return None
                header = json.loads(f.readline())
                if any(header.get(k) != v for k, v in key.items()):
                    return None
                offsets = array("q")
                offsets.frombytes(f.read(header["sizes"][0]))
                names = f.read()
        except (OSError, ValueError, KeyError):
            return None
        if len(names) != header["sizes"][1] or len(offsets) != sum(header["counts"]) + 1:
            return None
        return cls(header["wnids"], header["classes"], header["counts"], names, offsets)


class SampleList(Sequence):
    """torchvision's `samples` (and `imgs`): (path, class index) of every image, equal to the list
    ImageFolder builds, with each tuple made on access from the file names (no million tuples to
    build at start, nor to copy into every DataLoader worker)."""

    __slots__ = ("prefixes", "names", "offsets", "targets")

    def __init__(self, prefixes: list[str], names: bytes, offsets: array, targets: list[int]):
        self.prefixes, self.names, self.offsets, self.targets = prefixes, names, offsets, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self.targets)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("sample index out of range")
        target = self.targets[index]
        return self.prefixes[target] + self.names[self.offsets[index] : self.offsets[index + 1]].decode(), target

    def __iter__(self) -> Iterator[tuple[str, int]]:
        prefixes, names, offsets = self.prefixes, self.names, self.offsets
        for i, target in enumerate(self.targets):
            yield prefixes[target] + names[offsets[i] : offsets[i + 1]].decode(), target

    def __eq__(self, other) -> bool:
        if isinstance(other, SampleList):
            mine = (self.prefixes, self.names, self.offsets, self.targets)
            return mine == (other.prefixes, other.names, other.offsets, other.targets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} samples of {len(self.prefixes)} classes>"


def load_imagenet(
    root: str | Path,
    split: str,
    state_dir: str | Path | None = None,
    use_manifest: bool = True,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
    allow_incomplete: bool = False,
) -> ImageNet:
    """An ImageNet split from the manifest in `state_dir` (default root/.launcher; the root's own
    root/.launcher is looked in as well) or, without one, torchvision's scan, said once on stderr.
    A root whose records say prepare did not finish the split is refused unless `allow_incomplete`.
    `hydra.utils.instantiate(cfg.loader.dataset, split=..., transform=...)`."""
    if reason := completion.incomplete_reason(root, state_dir, split):
        require_prepared(root, split)  # a split never prepared: say that first
        if not allow_incomplete:
            raise LauncherError(
                f"{Path(os.path.expanduser(root)) / split} is not whole: {reason}. Fix the cause and run "
                f"`launcher prepare storage.root={root}` again, or set loader.allow_incomplete=true to load "
                "the images that are there anyway."
            )
        say_once(f"launcher.data: loading {split} of {root} although {reason} (loader.allow_incomplete=true)")
    manifest = None
    if use_manifest:
        folders = completion.state_folders(root, state_dir)
        manifest = next((m for f in folders if (m := manifest_for(f, split)) is not None), None)
        if manifest is None:
            say_once(
                f"launcher.data: no prepare manifest of {split} in {' or '.join(map(str, folders))}: listing "
                f"{Path(os.path.expanduser(root)) / split} with torchvision's directory scan instead (slow on a "
                f"parallel file system). Point storage.state_dir at the folder holding manifest-{split}.json, "
                "or set loader.use_manifest=false to scan without this note."
            )
    return ImageNet(root, split, transform=transform, target_transform=target_transform, manifest=manifest)


def build_dataset(cfg: Any, split: str, transform: Callable | None | str = "config") -> ImageNet:
    """The `split` of the root in cfg.storage, with the split's transform from cfg.transform
    (or `transform` when given; None for raw uint8 tensors)."""
    storage = as_dict(section(cfg, "storage"))
    if "root" not in storage:
        raise LauncherError("the config has no storage.root: compose the storage group (storage=...)")
    loader = options(section(cfg, "loader"), LOADER_DEFAULTS, "loader", ignore=("dataset",))
    if isinstance(transform, str):
        node = section(cfg, "transform")
        transform = build_transforms(node, split == "train") if node is not None else None
    return load_imagenet(
        storage["root"],
        split,
        storage.get("state_dir"),
        loader["use_manifest"],
        transform,
        allow_incomplete=bool(loader["allow_incomplete"]),
    )


# ---------------------------------------------------------------- ranks and samplers


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
SAID: set[str] = set()


def checked_rank(rank_key: str, world_key: str) -> tuple[int, int]:
    """(int(env[rank_key]), int(env[world_key])) when both are whole numbers with rank < world."""
    rank, world = os.environ[rank_key], os.environ[world_key]
    if not (DIGITS.fullmatch(rank) and DIGITS.fullmatch(world) and int(rank) < int(world)):
        raise LauncherError(
            f"{rank_key}={rank!r} and {world_key}={world!r} are not a rank and a world size "
            f"(whole numbers, rank < world size): fix or unset them"
        )
    return int(rank), int(world)


def say_once(message: str) -> None:
    """`message` on stderr, once per process."""
    if message not in SAID:
        SAID.add(message)
        print(message, file=sys.stderr, flush=True)


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
    if train is None:
        train = getattr(dataset, "split", "train") == "train"
    return make_loader(dataset, train, node)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the train shuffle (the same on every rank); from then on the caller owns it.
    Optional: without any call, each new pass over a train loader takes the next epoch by itself."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
