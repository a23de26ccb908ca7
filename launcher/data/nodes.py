"""Config nodes (DictConfig, dataclasses or plain dicts) -> plain values, what a transform or loader
node holds when a key is left out, and say_once: a loader's note printed once per process."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from torchvision.transforms import v2

from launcher.core.errors import LauncherError

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


SAID: set[str] = set()


def say_once(message: str) -> None:
    """`message` on stderr, once per process."""
    if message not in SAID:
        SAID.add(message)
        print(message, file=sys.stderr, flush=True)
