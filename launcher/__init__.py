"""launcher: Hydra-configured ImageNet (ILSVRC2012) preparation, verification and loaders for SLURM.

`compose_config(command, overrides)` returns the DictConfig that `python -m launcher <command>
<overrides...>` runs with; `launcher.data` builds datasets and loaders from it.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

DISTRIBUTION = "imagenet-slurm-launcher"
try:  # pyproject.toml is the one place the version is written
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
__all__ = ["compose_config", "__version__"]

CONFIG_MODULE = "launcher.conf"


def compose_config(command: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the config of `command` with Hydra overrides, as the CLI does (without `hydra.*`)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    from launcher.commands import COMMANDS, unknown_option
    from launcher.config import register_configs

    if command not in COMMANDS:
        valid = ", ".join(COMMANDS)
        raise ValueError(f"unknown command {command!r}; valid commands: {valid}")
    if message := unknown_option(list(overrides)):
        raise ConfigCompositionException(message)
    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base=None):
        return compose(config_name=command, overrides=list(overrides))
