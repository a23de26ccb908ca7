"""Config mistakes caught before a stage runs, each one line naming the option and the fix, exit 2:
unknown options, the command word as an override, a config that does not compose, values out of
range, a root prepared from another dataset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

from launcher.cli.requests import hydra_overrides, layout_of, plain


def unknown_option(overrides: list[str]) -> str | None:
    """The message for an override of an unknown option of a known group (Hydra lets `+` add any)."""
    from launcher.config.schema import GROUP_SCHEMAS, group_options

    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or "." not in key or key.startswith("hydra"):
            continue
        group, option = key.split(".")[:2]
        schema = GROUP_SCHEMAS.get(group)
        valid = group_options(group) if schema else []
        if schema and option not in valid:
            return f"unknown option {group}.{option} in {item!r}; valid options of {group}: {', '.join(valid)}"
    return None


def check_overrides(overrides: list[str]) -> int | None:
    message = unknown_option(overrides)
    if any(item.split("=", 1)[0].lstrip("+~") == "command" for item in overrides):
        message = "command= is set by the command word: run `launcher <command> ...` instead (e.g. launcher verify)"
    if message:
        print(f"launcher: {message}", file=sys.stderr)
        return 2
    return None


HYDRA_FLAGS = ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "-h", "--help", "-hh", "--hydra-help", "-sc")


def config_message(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line errors as one line: what was wrong, the option, the choices."""
    causes = [err]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    inner = causes[-1]
    lines = [line.strip() for line in str(inner).splitlines()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    lines = [line for line in lines if line and not line.startswith(("reference_type", "object_type", "full_key"))]
    text, listing = "", False
    for line in lines:
        text += (", " if listing and not text.endswith(":") else " ") + line
        listing = listing or line.endswith(":")
    text = text.strip()
    key = getattr(inner, "full_key", None) or getattr(err, "full_key", None)
    if key and "Missing mandatory value" in text:
        return f"{key} is not set: pass {key}=... on the command line (or set it in a config of that group)"
    if backend_message := other_backends_option(text):
        return backend_message
    first = str(err).splitlines()[0].strip() if inner is not err else ""
    where = f"{first}: " if first else (f"{key}: " if key else "")
    return where + text


def other_backends_option(text: str) -> str | None:
    """An option of another backend's cluster schema (cluster.partition with cluster=local): say whose it is."""
    import re
    from dataclasses import fields

    from launcher.config.schema import CLUSTER_SCHEMAS

    m = re.search(r"Key '(\w+)' not in '(\w+)'", text, re.ASCII)
    backend = next((b for b, schema in CLUSTER_SCHEMAS.items() if m and schema.__name__ == m.group(2)), None)
    if backend is None:
        return None
    option = m.group(1)
    owners = [b for b, schema in CLUSTER_SCHEMAS.items() if option in {f.name for f in fields(schema)}]
    valid = ", ".join(f.name for f in fields(CLUSTER_SCHEMAS[backend]))
    whose = f"an option of cluster={' and cluster='.join(owners)}" if owners else "not a cluster option"
    return (
        f"cluster.{option} is {whose}, not of the {backend} cluster: drop it or choose that cluster; "
        f"valid options of the {backend} cluster: {valid}"
    )


POSITIVE = (
    "prepare.train_shards",
    "prepare.val_shards",
    "verify.shards",
    "verify.fix_quality",
    "cluster.workers",
    "cluster.array_parallelism",
    "cluster.max_array_size",
    "cluster.cpus_per_task",
    "cluster.nodes",
    "cluster.tasks_per_node",
    "cluster.timeout_min",
    "cluster.poll_s",
    "loader.batch_size",
    "loader.eval_batch_size",
    "loader.prefetch_factor",
    "bench.epochs",
    "bench.max_batches",
    "stage.threads",
    "synth.classes",
    "synth.train_min",
    "synth.val_per_class",
)


FORBIDDEN_MODE_BITS = {
    "file_mode": (0o7002, "setuid, setgid, sticky or world-write"),
    "dir_mode": (0o5002, "setuid, sticky or world-write"),
}


def check_config(cfg: DictConfig) -> None:
    """Values the schema's types admit but the work cannot use: refused before anything runs (exit 2)."""
    check_counts(cfg)
    check_base(cfg)
    for key, (forbidden, words) in FORBIDDEN_MODE_BITS.items():
        check_mode(f"storage.{key}", cfg.storage[key], forbidden, words)
    if "root" in cfg.storage and "state_dir" in cfg.storage:
        check_state_dir(Path(cfg.storage.root).absolute(), Path(cfg.storage.state_dir).absolute())


def check_base(cfg: DictConfig) -> None:
    """An empty storage.base (LAUNCHER_DATA set to an empty string) would put every folder at the top of
    the file system (/archives, /imagenet): refused."""
    from omegaconf import OmegaConf

    from launcher.core.errors import ConfigError

    if "storage" in cfg and OmegaConf.select(cfg, "storage.base", default=None) == "":
        raise ConfigError(
            "storage.base is empty (is LAUNCHER_DATA set to an empty string?): unset LAUNCHER_DATA, set it "
            "to a folder, or pass storage.base=<folder>"
        )


def check_counts(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from launcher.core.errors import ConfigError

    for key in POSITIVE:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} must be a positive number (or null where the option allows it)")


def check_mode(key: str, value: str, forbidden: int, words: str) -> None:
    import re

    from launcher.core.errors import ConfigError

    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3,4}", value, re.ASCII):
        raise ConfigError(f"{key}={value!r} is not an octal mode like 0644 (three or four digits 0-7)")
    if int(value, 8) & forbidden:
        safe = f"{int(value, 8) & ~forbidden & 0o7777:04o}"
        raise ConfigError(f"{key}={value} sets {words} bits, which launcher does not give; use e.g. {key}={safe}")


def check_state_dir(root: Path, state_dir: Path) -> None:
    """A state folder inside a split (or .partial) would be taken for a class folder, or removed
    with it: refused, with the option that moves it."""
    from launcher.core.errors import ConfigError

    for part in ("train", "val", ".partial"):
        folder = root / part
        if state_dir == folder or folder in state_dir.parents:
            raise ConfigError(
                f"storage.state_dir={state_dir} lies inside {folder}, which prepare fills with class folders: "
                f"set storage.state_dir outside {folder} (the default is {root / '.launcher'})"
            )


def shown(value) -> str:
    return "null" if value is None else str(value)


def dataset_differences(chosen: dict, stored: dict) -> list[str]:
    """The facts (adapter, archive names and md5s, expected counts, label members, split sources, name
    patterns) on which two dataset configs disagree; an md5 left null on either side does not count."""
    out = []
    if chosen.get("adapter") != stored.get("adapter"):
        out.append(f"dataset.adapter is {shown(chosen.get('adapter'))} here, {shown(stored.get('adapter'))} there")
    for group in ("archives", "expected", "labels", "splits", "patterns"):
        a, b = chosen.get(group) or {}, stored.get(group) or {}
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) or isinstance(y, dict):
                x, y = x or {}, y or {}
                for sub in sorted(set(x) | set(y)):
                    if x.get(sub) != y.get(sub) and not (sub == "md5" and None in (x.get(sub), y.get(sub))):
                        out.append(
                            f"dataset.{group}.{key}.{sub} is {shown(x.get(sub))} here, {shown(y.get(sub))} there"
                        )
            elif x != y:
                out.append(f"dataset.{group}.{key} is {shown(x)} here, {shown(y)} there")
    return out


def DatasetMismatch(message: str):
    """A config mistake (exit 2): the chosen dataset is not the one the root was prepared with."""
    from launcher.core.errors import LauncherError

    err = LauncherError(message)
    err.exit_code = 2
    return err


def use_root_dataset(cfg: DictConfig, layout=None) -> None:
    """verify/status/bench on a prepared root (stage: on its source, `layout`): without
    `dataset=<choice>` on the command line, take the dataset config the root was prepared with
    (dataset.* overrides still apply on top); with a choice that disagrees with it, stop with a
    message naming both configs."""
    from omegaconf import OmegaConf

    from launcher.prepare.guards import root_dataset

    layout = layout or layout_of(cfg)
    overrides = hydra_overrides()
    stored = root_dataset(layout) if overrides is not None else None
    if stored is None:
        return
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    if "dataset" in keys:
        if diff := dataset_differences(plain(cfg.dataset), stored):
            raise DatasetMismatch(
                f"dataset={cfg.dataset.name} disagrees with dataset={stored.get('name')}, the one "
                f"{layout.root} was prepared with ({'; '.join(diff[:3])}). Leave dataset=... out to "
                f"use the root's, or pass dataset={stored.get('name')}."
            )
        return
    from launcher.config.schema import DatasetConfig

    kept = {k: OmegaConf.select(cfg, k) for k in keys if k.startswith("dataset.")}
    cfg.dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), stored)
    for key, value in kept.items():
        OmegaConf.update(cfg, key, value)
