"""Config nodes (DictConfig, dataclasses or plain dicts) -> plain values, what a transform or loader
node holds when a key is left out, and say_once: a loader's note printed once per process."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from enum import Enum
from typing import Any

from torchvision.transforms import v2

from launcher.config.schema import LoaderConfig, TransformConfig
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


def schema_defaults(schema: type, **named: Any) -> dict[str, Any]:
    """What a node of `schema` holds when a key is left out: the dataclass schema's own defaults (the
    one source), Enum members as their values; `named` fills the fields without a default (name)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.name.startswith("_") or f.name == "dataset":
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = value.value if isinstance(value, Enum) else value
    return {**out, **named}


# What a transform or loader node holds when a key is left out (from launcher.config's schemas).
TRANSFORM_DEFAULTS: dict[str, Any] = schema_defaults(TransformConfig, name="standard")


LOADER_DEFAULTS: dict[str, Any] = schema_defaults(LoaderConfig, name="default")


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
