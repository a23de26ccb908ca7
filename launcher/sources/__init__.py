"""Archive shapes as sources: how an archive holds a split, independent of the dataset.

- *class_tars* (`class_tars.py`): a tar of per-class tars (ImageNet train, ImageNet-21k).
- *flat_labels* (`flat_labels.py`): a flat tar whose labels come from elsewhere: by image number
  (ImageNet val and the devkit's ground truth) or by a file list (Places365 val).
- *tree* (`tree.py`): one tar holding `<prefix>/<class path>/<file>`, named by a file list (Places365 train).

Each shape module supplies the same steps: `index` (a header walk, every member checked), `shard`
(index rows grouped into units balanced by bytes), `unit_args` (what one unit is given),
`extract` (the unit function: rows of the index -> files under the opened root) and `files_of`
(what finalize needs from a unit's record: (class, file name, size) per file). A dataset's YAML names
the shape of each split (`dataset.splits.<split>.shape`); generic code asks this package, never the
split's name.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from launcher.core.errors import ConfigError

# shape name -> module holding its steps
SHAPES = {
    "class_tars": "launcher.sources.class_tars",
    "flat_labels": "launcher.sources.flat_labels",
    "tree": "launcher.sources.tree",
}


def shape_module(shape: str) -> ModuleType:
    """The module of a shape, or a one-line refusal listing the shapes there are."""
    name = str(shape)
    if name not in SHAPES:
        raise ConfigError(
            f"dataset.splits.*.shape={name!r} is not an archive shape; valid shapes: {', '.join(SHAPES)}."
        )
    return importlib.import_module(SHAPES[name])


def check_folder(split: str, folder: str) -> str:
    """A split's root folder (from the YAML) is one plain name: it is opened below the root, and only
    its last part would be opened without following a link."""
    from launcher.archive.extract import safe_name

    if not isinstance(folder, str) or not folder.isascii() or not safe_name(folder):
        raise ConfigError(
            f"dataset.splits.{split}.folder={folder!r} is not one plain folder name (no /, not . or ..); "
            "name the folder the dataset's torchvision class reads, e.g. train."
        )
    return folder


def extract(shape: str, **args) -> dict:
    """The unit function of every split's extraction: the shape's own `extract`, looked up when the
    unit runs (so a job imports only its shape's module)."""
    module = shape_module(shape)
    # a flat archive labelled by a file list runs the listed extraction (launcher.sources.tree)
    target = "launcher.sources.tree:extract_listed_unit" if args.pop("listed", False) else module.EXTRACT
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)(**args)
