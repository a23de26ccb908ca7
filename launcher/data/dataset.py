"""The dataset of a prepared root: `load_dataset` asks the dataset's adapter (`load_split`) for it;
`ImageNet`, a torchvision.datasets.ImageNet built from the manifest; `FastBatches`, what sends any
such dataset's batches through the fast path; `split_manifest`, the manifest lookup they share."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torchvision
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import VisionDataset

from launcher.core import completion
from launcher.core.errors import ConfigError, LauncherError
from launcher.data.decode import decode_file
from launcher.data.fastpath import Pipeline, new_batch
from launcher.data.nodes import LOADER_DEFAULTS, SPLITS, as_dict, options, say_once, section
from launcher.data.samples import Columns, SampleList, manifest_for
from launcher.data.transforms import build_transforms


class FastBatches:
    """What a dataset class adds to its torchvision class so that its batches go through the fast
    path: `__getitems__` over `self.samples` ((path, target) per index)."""

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


class ImageNet(FastBatches, torchvision.datasets.ImageNet):
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


def require_prepared(root: str | Path, split: str) -> None:
    """meta.bin and root/<split> are there (two stats), or the error says to run prepare."""
    if split not in SPLITS:
        raise LauncherError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    root = Path(os.path.expanduser(root))
    refuse_unprepared(root, "ImageNet", [root / "meta.bin", root / split], [f"storage.root={root}", f"split={split}"])


class UnpreparedRoot(LauncherError):
    """A root without what prepare writes; its message names the `launcher prepare` that makes it."""

    def __init__(self, root: Path, dataset: str, missing: list[str], overrides: list[str]):
        self.root, self.dataset, self.missing, self.overrides = root, dataset, missing, overrides
        command = shlex.join(["launcher", "prepare", *overrides])
        super().__init__(
            f"{root} is not a prepared {dataset} root ({', '.join(missing)} missing). Run `{command}` first (or "
            "point storage.root at a prepared root); loaders never extract archives."
        )

    def with_choice(self, choice: str) -> UnpreparedRoot:
        """The same refusal, its prepare command given the config's dataset choice (dataset=<choice>)."""
        kept = [o for o in self.overrides if not o.startswith("dataset=")]
        return UnpreparedRoot(self.root, self.dataset, self.missing, [f"dataset={choice}", *kept])


def refuse_unprepared(root: Path, dataset: str, needed: list[Path], overrides: list[str]) -> None:
    """One line naming what a prepared root lacks (a stat each) and the `launcher prepare` that makes it."""
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise UnpreparedRoot(root, dataset, missing, overrides)


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
    `hydra.utils.instantiate(cfg.loader.dataset, split=..., transform=...)` on an ImageNet root."""
    manifest = split_manifest(root, split, state_dir, use_manifest, allow_incomplete, require_prepared)
    return ImageNet(root, split, transform=transform, target_transform=target_transform, manifest=manifest)


def split_manifest(
    root: str | Path,
    split: str,
    state_dir: str | Path | None,
    use_manifest: bool,
    allow_incomplete: bool,
    require: Callable[[str | Path, str], None],
) -> Columns | dict | None:
    """The prepare manifest of `split` (None without one, or with use_manifest=false: the dataset's
    torchvision class reads the root itself), after `require(root, split)` says the root holds the
    split and the records say prepare finished it (or `allow_incomplete`)."""
    if reason := completion.incomplete_reason(root, state_dir, split):
        require(root, split)  # a split never prepared: say that first
        if not allow_incomplete:
            raise LauncherError(
                f"{Path(os.path.expanduser(root)) / split} is not whole: {reason}. Fix the cause and run "
                f"`launcher prepare storage.root={root}` again, or set loader.allow_incomplete=true to load "
                "the images that are there anyway."
            )
        say_once(f"launcher.data: loading {split} of {root} although {reason} (loader.allow_incomplete=true)")
    if not use_manifest:
        return None
    folders = completion.state_folders(root, state_dir)
    manifest = next((m for f in folders if (m := manifest_for(f, split)) is not None), None)
    if manifest is None:
        say_once(
            f"launcher.data: no prepare manifest of {split} in {' or '.join(map(str, folders))}: reading "
            f"{Path(os.path.expanduser(root))} as torchvision does instead (for ImageFolder-style roots a "
            f"directory scan, slow on a parallel file system). Point storage.state_dir at the folder holding "
            f"manifest-{split}.json, or set loader.use_manifest=false to do so without this note."
        )
    return manifest


def load_dataset(
    root: str | Path,
    split: str,
    state_dir: str | Path | None = None,
    use_manifest: bool = True,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
    allow_incomplete: bool = False,
    adapter: str | None = None,
    storage_format: str = "folder",
    archive_dir: str | Path | None = None,
) -> Any:
    """The `split` of a prepared root as its dataset adapter loads it (`load_split`, a subclass of the
    adapter's torchvision class); `adapter` None: launcher.datasets.DEFAULT_ADAPTER. With
    storage_format="tar", the adapter's `load_tar_split` reads the images from the original archives
    in `archive_dir` through prepare's tar index (use_manifest and allow_incomplete do not apply).
    `hydra.utils.instantiate(cfg.loader.dataset, split=..., transform=...)`."""
    from launcher.datasets import DEFAULT_ADAPTER, adapter_of

    name = adapter or DEFAULT_ADAPTER
    module = adapter_of(name)
    if str(storage_format) == "tar":
        if not hasattr(module, "load_tar_split"):
            raise ConfigError(
                f"storage.format=tar: the {name} adapter has no load_tar_split; use storage.format=folder"
            )
        return module.load_tar_split(root, split, state_dir, archive_dir, transform, target_transform)
    if str(storage_format) != "folder":
        raise ConfigError(f"storage.format={storage_format!r} is not one of folder, tar")
    return module.load_split(root, split, state_dir, use_manifest, transform, target_transform, allow_incomplete)


def adapter_name(cfg: Any) -> str | None:
    """cfg.dataset.adapter, or None for a config without a dataset node (plain dicts)."""
    dataset = section(cfg, "dataset")
    return None if dataset is None else as_dict(dataset).get("adapter")


def build_dataset(cfg: Any, split: str, transform: Callable | None | str = "config") -> Any:
    """The `split` of the root in cfg.storage, read as cfg.dataset.adapter says (ImageNet without a
    dataset node), with the split's transform from cfg.transform (or `transform` when given; None for
    raw uint8 tensors)."""
    storage = as_dict(section(cfg, "storage"))
    if "root" not in storage:
        raise LauncherError("the config has no storage.root: compose the storage group (storage=...)")
    loader = options(section(cfg, "loader"), LOADER_DEFAULTS, "loader", ignore=("dataset",))
    if isinstance(transform, str):
        node = section(cfg, "transform")
        transform = build_transforms(node, split == "train") if node is not None else None
    try:
        return load_dataset(
            storage["root"],
            split,
            storage.get("state_dir"),
            loader["use_manifest"],
            transform,
            allow_incomplete=bool(loader["allow_incomplete"]),
            adapter=adapter_name(cfg),
            storage_format=str(storage.get("format") or "folder"),
            archive_dir=storage.get("archive_dir"),
        )
    except UnpreparedRoot as err:
        choice = (as_dict(section(cfg, "dataset") or {}) or {}).get("name")
        raise (err.with_choice(choice) if choice else err) from None
