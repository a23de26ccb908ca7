"""The transforms of a transform node: standard train/eval steps, an optional policy, then float32 +
Normalize (or uint8, normalized on the GPU by normalize_on_device)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from launcher.check.imagebounds import Limits
from launcher.core.errors import LauncherError

try:  # the C extension (launcher/data/_jpeg.c, built against libjpeg-turbo): decodes only a train crop
    from launcher.data import _jpeg
except ImportError:  # built without libjpeg's headers: every image is decoded whole
    _jpeg = None

from launcher.data.fastpath import Pipeline
from launcher.data.nodes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    OUTPUTS,
    POLICIES,
    TRANSFORM_DEFAULTS,
    options,
)


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
