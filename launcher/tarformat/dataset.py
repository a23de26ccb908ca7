"""`TarImageNet`: launcher.data's ImageNet interface over the original archive and a tar index.

    index = read_index(state_dir / "tarindex-train.bin", "train")
    dataset = TarImageNet(index, archive, root=storage_root, transform=build_transforms(node, True),
                          overlay=read_overlay(state_dir, index))
    loader = launcher.data.make_loader(dataset, train=True, options_node=cfg.loader)

`classes, wnids, class_to_idx, wnid_to_idx, targets, samples, imgs` are those of
torchvision.datasets.ImageNet on a folder root prepared from the same archives (`samples` holds
each image's logical path under `root`). A sample's bytes are one positional read of its range
from an archive descriptor that each process opens once (a DataLoader worker after fork opens its
own: the pid is compared) and checks against the identity the index recorded, so a rewritten,
replaced or truncated archive is refused when the dataset is made, with one line naming the
archive and the fix. The bytes are decoded as launcher.data decodes a file's: the same bounds
(launcher.imagebounds), torchvision.io with PIL for what it cannot read, the crop-only decoder
under a leading RandomResizedCrop, batches written into (shared-memory) tensors, so transforms,
uint8 output, collate and the samplers work unchanged. A sample of the overlay (a re-encoded odd
file) is read from its replacement file instead of the archive.

The reading is `TarSamples`, which a dataset class puts before its torchvision class; TarImageNet
is ImageNet's, launcher.datasets.places365.tardataset.TarPlaces365 Places365's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from launcher.check.imagebounds import (
    BadImage,
    Limits,
    Refused,
    check_image,
    check_pixels,
    check_size,
    read_fd,
    read_regular,
    too_many_scans,
)
from launcher.data import fastpath
from launcher.data.decode import LOADER_LIMITS, ImageRefused, decode_with_pil, refused
from launcher.data.fastpath import (
    Pipeline,
    apply_step,
    crop_box,
    draw_uniform,
    float32,
    new_batch,
    resize_into,
)
from launcher.data.imageio import ImageReadMode, decode_image
from launcher.data.samples import SampleList
from launcher.tarformat.archivefile import ArchiveChanged, open_checked
from launcher.tarformat.indexfile import TarIndex, read_index
from launcher.tarformat.overlay import read_overlay

# ---------------------------------------------------------------- decoding bytes (launcher.data's path)


def check_bytes(data, label: str, limits: Limits) -> None:
    """What launcher.data.read_image checks of a file, on bytes already read: not empty, a header
    declaring at most limits.max_pixels pixels, a JPEG of at most limits.max_scans scans."""
    try:
        if not data:
            raise BadImage("empty file (0 bytes)")
        check_image(data, limits)
    except (Refused, BadImage) as err:
        raise refused(label, err) from None


def decode_bytes(data: bytearray, label: str, limits: Limits = LOADER_LIMITS) -> torch.Tensor:
    """launcher.data.decode_file on bytes: uint8 RGB (3, H, W) by torchvision.io, PIL for what it
    cannot decode (e.g. CMYK JPEGs)."""
    check_bytes(data, label, limits)
    try:
        return decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return decode_with_pil(label, data, limits)


def decode_crop(pipe: Pipeline, data: bytearray, label: str) -> torch.Tensor | None:
    """Pipeline.decode_crop on bytes: the RandomResizedCrop box of a JPEG, drawn as the step draws
    it and decoded alone, or None (before any draw) for what is not such a JPEG."""
    try:
        if not data.endswith(b"\xff\xd9"):  # cut short (or trailing bytes): let torchvision.io decide
            raise ValueError(label)
        height, width = fastpath._jpeg.size(data)
    except ValueError:  # not a JPEG libjpeg turns into RGB (PNG, CMYK, ...): the usual way
        return None
    try:
        check_pixels(width, height, pipe.limits)
    except Refused as err:
        raise refused(label, err) from None
    box = crop_box(pipe.transforms[1], height, width)
    try:
        pixels = fastpath._jpeg.decode_crop(data, *box, pipe.limits.max_scans)
    except fastpath._jpeg.LimitError:
        raise refused(label, too_many_scans(pipe.limits, "libjpeg reached the next one")) from None
    except ValueError:  # broken past the header: let torchvision.io (or PIL) decide, same crop
        return v2.functional.crop_image(decode_bytes(data, label, pipe.limits), *box)
    return torch.frombuffer(pixels, dtype=torch.uint8).view(box[2], box[3], 3).permute(2, 0, 1)


def head_of_bytes(pipe: Pipeline, data: bytearray, label: str) -> torch.Tensor:
    """Pipeline.head_of_file on bytes: the uint8 steps, decoding only the crop when it can."""
    crop = decode_crop(pipe, data, label) if pipe.fuses_crop else None
    if crop is None:
        return pipe.head(decode_bytes(data, label, pipe.limits))
    crop_step = pipe.transforms[1]
    image = v2.functional.resize_image(
        crop, list(crop_step.size), interpolation=crop_step.interpolation, antialias=crop_step.antialias
    )
    for step in pipe.transforms[2 : pipe.head_steps]:
        image = apply_step(step, image)
    return image


def write_bytes(pipe: Pipeline, data: bytearray, label: str, out: torch.Tensor) -> None:
    """Pipeline.write_file on bytes: out[...] = pipe.finish(head_of_bytes(...)), the same pixels and
    draws; with `writes_crop` the resized crop goes straight into `out`."""
    if not pipe.writes_crop:
        return pipe.write(head_of_bytes(pipe, data, label), out)
    crop = decode_crop(pipe, data, label)
    if crop is None:
        return pipe.write(pipe.head(decode_bytes(data, label, pipe.limits)), out)
    resize_into(crop, out, pipe.transforms[1])
    for step in pipe.transforms[2 : pipe.head_steps]:  # RandomHorizontalFlip
        if draw_uniform() < float32(step.p):
            out.copy_(out.flip(-1))


# ---------------------------------------------------------------- the dataset


class TarSamples:
    """What a dataset class over an archive and its tar index adds to its torchvision class: each
    sample's bytes one positional read from an archive descriptor each process opens (and checks)
    once, decoded as launcher.data decodes a file; `__getitem__` and the fast-path `__getitems__`.
    The class's __init__ sets its torchvision attributes and calls `open_archive`."""

    def open_archive(
        self,
        index: TarIndex,
        archive: str | Path,
        overlay: Mapping[int, tuple[str, int, str]] | None = None,
        index_label: str = "",
    ) -> None:
        """Read from `archive` through `index` (its replacement files from `overlay`); the archive is
        opened and checked now: a changed or truncated one is refused here, not in the first batch."""
        self.index, self.archive = index, str(archive)
        self.index_label = index_label or f"of {index.split}"
        self.overlay = dict(overlay or {})
        self._fd, self._pid = -1, None
        self.descriptor()

    # ------------------------------------------------ reading

    def descriptor(self) -> int:
        """The archive's descriptor in this process: opened (and checked) once per process."""
        pid = os.getpid()
        if self._pid != pid:
            if self._fd >= 0:  # inherited through fork: the parent's; this process opens its own
                os.close(self._fd)
                self._fd = -1
            self._fd = open_checked(self.archive, self.index.archive, self.index_label)
            self._pid = pid
        return self._fd

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = -1, None  # a spawned worker opens its own
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid() and self._fd >= 0:
            os.close(self._fd)

    def limits(self) -> Limits:
        return self.transform.limits if isinstance(self.transform, Pipeline) else LOADER_LIMITS

    def label(self, i: int) -> str:
        """How an error names sample i: the archive, the member's logical path and its byte range."""
        offset, size = self.index.offsets[i], self.index.sizes[i]
        return f"{self.archive} member {self.index.path(i)} (bytes {offset:,} to {offset + size:,})"

    def read_sample(self, i: int, limits: Limits | None = None) -> tuple[bytearray, str]:
        """(the bytes of sample i, how errors name it): one positional read of its range of the archive,
        or its replacement file from the overlay; its size within limits.max_file_bytes first."""
        limits = limits or self.limits()
        if i in self.overlay:
            return self.read_replacement(i, limits)
        label = self.label(i)
        offset, size = self.index.offsets[i], self.index.sizes[i]
        try:
            check_size(size, limits)
        except Refused as err:
            raise refused(label, err) from None
        data = read_fd(self.descriptor(), size, offset)
        if len(data) != size:
            raise ArchiveChanged(
                f"{label}: the archive ends at byte {offset + len(data):,}; it was truncated after the tar index "
                f"{self.index_label} was built. Put the original archive back, or run `launcher prepare` again."
            )
        return data, label

    def read_replacement(self, i: int, limits: Limits) -> tuple[bytearray, str]:
        path, size, digest = self.overlay[i]
        try:
            data = read_regular(path, limits)
        except Refused as err:
            raise refused(path, err) from None
        except FileNotFoundError:
            data = None
        if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise ImageRefused(
                f"{path}: the replacement of {self.index.path(i)} is missing or not the file the overlay recorded; "
                "run `launcher verify verify.fix=true` again to write it anew."
            )
        return data, path

    # ------------------------------------------------ samples

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """DatasetFolder.__getitem__: the decoded image through `transform`, its target through
        `target_transform`; the image decoded from bytes as launcher.data.decode_file decodes a file."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("sample index out of range")
        data, label = self.read_sample(index)
        sample = decode_bytes(data, label, self.limits())
        target = self.targets[index]
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def __getitems__(self, indices: Sequence[int]) -> list:
        """launcher.data.ImageNet.__getitems__: with our Pipeline, every image is written straight into
        one (shared-memory, in a worker) batch tensor that launcher.data.collate hands on."""
        transform = self.transform
        if not isinstance(transform, Pipeline) or self.target_transform is not None:
            return [self[i] for i in indices]
        out, batch = [], None
        if transform.writes_crop:  # every image comes out crop-sized
            batch = new_batch(len(indices), (3, *transform.transforms[1].size), transform.output)
            for k, i in enumerate(indices):
                data, label = self.read_sample(i)
                slot = batch[k]
                write_bytes(transform, data, label, slot)
                out.append((slot, self.targets[i]))
            return out
        for k, i in enumerate(indices):
            data, label = self.read_sample(i)
            image = head_of_bytes(transform, data, label)
            if k == 0:
                batch = new_batch(len(indices), image.shape, transform.output)
            if batch is not None and image.shape == batch.shape[1:]:
                transform.write(image, batch[k])
                out.append((batch[k], self.targets[i]))
            else:
                batch = None
                out.append((transform.finish(image), self.targets[i]))
        return out


class TarImageNet(TarSamples, torchvision.datasets.ImageNet):
    """torchvision.datasets.ImageNet's attributes, in its order, over an archive and its tar index."""

    def __init__(
        self,
        index: TarIndex,
        archive: str | Path,
        root: str | Path = "",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        overlay: Mapping[int, tuple[str, int, str]] | None = None,
        index_label: str = "",
    ) -> None:
        # What torchvision's ImageNet.__init__ sets, from the index instead of a scan.
        self.root = os.path.expanduser(root)
        self.split = index.split
        split_folder = self.split_folder
        VisionDataset.__init__(self, split_folder, transform=transform, target_transform=target_transform)
        self.root = os.path.expanduser(root)
        self.loader = None  # images are read from the archive, not from paths
        self.extensions = IMG_EXTENSIONS
        self.targets = index.targets.tolist()
        prefixes = [os.path.join(split_folder, wnid, "") for wnid in index.wnids]
        self.samples = SampleList(prefixes, index.names, index.name_offsets, self.targets)
        self.imgs = self.samples
        self.wnids = list(index.wnids)
        self.wnid_to_idx = {wnid: i for i, wnid in enumerate(self.wnids)}
        self.classes = [tuple(names) for names in index.classes]
        self.class_to_idx = {cls: idx for idx, clss in enumerate(self.classes) for cls in clss}
        self.open_archive(index, archive, overlay, index_label)


def load_tar_imagenet(
    index_path: str | Path,
    archive: str | Path,
    split: str,
    root: str | Path = "",
    state_dir: str | Path | None = None,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
) -> TarImageNet:
    """The `split` of `archive` through the tar index at `index_path`, with the overlay of `state_dir`."""
    index = read_index(index_path, split)
    overlay = read_overlay(state_dir, index) if state_dir is not None else None
    return TarImageNet(index, archive, root, transform, target_transform, overlay, index_label=str(index_path))


def tar_split(
    root: str | Path, split: str, state_dir: str | Path | None, archive_dir: str | Path | None
) -> tuple[TarIndex, Path, dict, str]:
    """(index, archive, overlay, index label) of a prepared tar root's split: prepare's
    state_dir/tarindex-<split>.bin (state_dir None: root/.launcher), the archive the index's file name
    in `archive_dir` (None: where prepare read it), the overlay of the state folder."""
    state = Path(state_dir if state_dir is not None else Path(root) / ".launcher")
    index_path = state / f"tarindex-{split}.bin"
    index = read_index(index_path, split)
    archive = Path(index.archive["path"])
    if archive_dir is not None:
        archive = Path(archive_dir) / archive.name
    return index, archive, read_overlay(state, index), str(index_path)
