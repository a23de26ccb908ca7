"""launcher: Hydra-configured ImageNet (ILSVRC2012) preparation, verification and loaders for SLURM.

`compose_config(command, overrides)` returns the DictConfig that `python -m launcher <command>
<overrides...>` runs with; `training_config(overrides)` the one training code builds its loaders
from (`launcher.data.build_loader(cfg, "train")`). Both work standalone and inside a running
`@hydra.main` app. Per-site settings: `$LAUNCHER_CONFIG_DIR` (a folder of config groups, e.g.
`launcher_site/default.yaml` or `cluster/mysite.yaml`) is added to the search path.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

DISTRIBUTION = "imagenet-slurm-launcher"
try:  # pyproject.toml is the one place the version is written
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
__all__ = ["compose_config", "training_config", "__version__"]

CONFIG_MODULE = "launcher.conf"
# a folder of the user's or the site's own config groups, searched after launcher's
CONFIG_DIR_ENV = "LAUNCHER_CONFIG_DIR"


def compose_config(command: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the config of `command` with Hydra overrides, as the CLI does (without `hydra.*`)."""
    from hydra.errors import ConfigCompositionException

    from launcher.cli.checks import unknown_option
    from launcher.cli.commands import COMMANDS

    if command not in COMMANDS:
        valid = ", ".join(COMMANDS)
        raise ValueError(f"unknown command {command!r}; valid commands: {valid}")
    if message := unknown_option(list(overrides)):
        raise ConfigCompositionException(message)
    return compose_primary(command, list(overrides))


def training_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config training code builds its loaders from: storage, dataset, split, cluster, transform
    and loader (with `$LAUNCHER_CONFIG_DIR`'s settings), overridden by `overrides`. Standalone or
    inside a running `@hydra.main` app (whose own Hydra is set aside, then put back)."""
    from hydra.errors import ConfigCompositionException

    from launcher.cli.checks import unknown_option

    if message := unknown_option(list(overrides)):
        raise ConfigCompositionException(message)
    return compose_primary("training", list(overrides))


def compose_primary(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose launcher's primary config `config_name`. Inside a running Hydra app (GlobalHydra
    initialized with the app's own search path) that app's Hydra is set aside for the compose and
    put back after, so the app's config, HydraConfig and later composes are untouched."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from launcher.config.store import register_configs

    register_configs()
    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if running is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base=None):
            return compose(config_name=config_name, overrides=[*overrides, *site_searchpath(overrides)])
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def site_searchpath(overrides: list[str]) -> list[str]:
    """`hydra.searchpath=['file://$LAUNCHER_CONFIG_DIR']` when that is set and no searchpath is given."""
    folder = os.environ.get(CONFIG_DIR_ENV)
    if not folder or any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        return []
    path = os.path.abspath(os.path.expanduser(folder)).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.searchpath=['file://{path}']"]
