"""Dataset adapters: what is particular to one dataset, chosen by `dataset.adapter`.

A dataset is one folder here (its adapter module `launcher.datasets.<name>.adapter`) plus one YAML
file (`conf/dataset/<name>.yaml`: archive names, md5s, counts, patterns, label members, and for each
split the archive shape, archive and root folder). The adapter supplies what no YAML can: reading
its labels, the counts they announce, checking the indexes against them, the label/meta files of the
prepared root, the torchvision class its root is read by (and the loader's subclass of it, `load_split`), and its
synthetic archives. Generic code
asks `adapter_of(name)`; it never names a dataset.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from launcher.core.errors import ConfigError

# dataset.adapter -> its module
ADAPTERS = {
    "imagenet": "launcher.datasets.imagenet.adapter",
    "places365": "launcher.datasets.places365.adapter",
}
# the adapter of a loader config with no dataset node (plain dicts written before dataset choices)
DEFAULT_ADAPTER = "imagenet"


def adapter_of(name: str) -> ModuleType:
    """The adapter module of `dataset.adapter`, or a one-line refusal listing the adapters there are."""
    if name not in ADAPTERS:
        raise ConfigError(f"dataset.adapter={name!r} is not a dataset adapter; valid adapters: {', '.join(ADAPTERS)}.")
    return importlib.import_module(ADAPTERS[name])


def write_meta(adapter: str, outputs: list[str], **args) -> dict:
    """The meta unit: the label files of the prepared root (`outputs`), written by the adapter's
    `write_meta` (looked up when the unit runs, so a job imports only its dataset's adapter)."""
    return adapter_of(adapter).write_meta(**args)
