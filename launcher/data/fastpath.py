"""The loaders' fast path: a pipeline that decodes only a train JPEG's crop (launcher.data._jpeg),
resizes it in uint8 straight into its slot of a batch from scratch draws, and a collate that passes
such a batch on without a copy."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy
import torch
from torch.utils.data import default_collate, get_worker_info
from torchvision.transforms import v2

from launcher.check.imagebounds import Limits, Refused, check_pixels, read_regular, too_many_scans
from launcher.data import shared_batches

try:  # the C extension (launcher/data/_jpeg.c, built against libjpeg-turbo): decodes only a train crop
    from launcher.data import _jpeg
except ImportError:  # built without libjpeg's headers: every image is decoded whole
    _jpeg = None

from launcher.data.decode import LOADER_LIMITS, decode_file, refused


class Pipeline(v2.Compose):
    """A v2.Compose whose float tail (ToDtype + Normalize) is known, so a batch can be written in place."""

    def __init__(
        self,
        uint8_steps: list,
        mean: Sequence[float],
        std: Sequence[float],
        output: str,
        limits: Limits = LOADER_LIMITS,
    ):
        # what one image file may cost (transform.max_file_bytes, max_pixels, max_scans)
        self.limits = limits
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))] if output == "float" else []
        super().__init__([*uint8_steps, *tail])
        self.head_steps = len(uint8_steps)
        # ToImage then RandomResizedCrop (the train pipelines): decode only the crop of a JPEG
        self.fuses_crop = _jpeg is not None and [type(step) for step in uint8_steps[:2]] == [
            v2.ToImage,
            v2.RandomResizedCrop,
        ]
        # ... and at most a flip after it, uint8 out (standard train): resize straight into the batch
        self.writes_crop = (
            self.fuses_crop
            and output == "uint8"
            and all(type(step) is v2.RandomHorizontalFlip for step in uint8_steps[2:])
        )
        self.mean, self.std, self.output = list(mean), list(std), output
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def head(self, image: Any) -> torch.Tensor:
        """The uint8 steps: decoded image -> augmented uint8 tensor (the same pixels and random draws
        as the v2 steps; crop and flip go straight to their kernels, without v2's dispatch)."""
        for step in self.transforms[: self.head_steps]:
            image = apply_step(step, image)
        return image

    def head_of_file(self, path: str) -> torch.Tensor:
        """head(decode_file(path)), the same pixels; a JPEG under a leading RandomResizedCrop has only
        its crop decoded (launcher.data._jpeg: rows below it are never read, pixels beside it never
        converted), which saves a fifth to a half of the decode."""
        crop = self.decode_crop(path) if self.fuses_crop else None
        if crop is None:
            return self.head(decode_file(path, self.limits))
        step = self.transforms[1]
        image = v2.functional.resize_image(
            crop, list(step.size), interpolation=step.interpolation, antialias=step.antialias
        )
        for step in self.transforms[2 : self.head_steps]:
            image = apply_step(step, image)
        return image

    def decode_crop(self, path: str) -> torch.Tensor | None:
        """The RandomResizedCrop box of the JPEG at `path`, drawn as the step draws it and decoded
        alone (channels-last uint8), or None, before any draw, for what is not such a JPEG. The
        pixel bound is checked on the header before the draw, the scan bound by libjpeg as it reads."""
        try:
            data = read_regular(path, self.limits)
        except Refused as err:
            raise refused(path, err) from None
        try:
            if not data.endswith(b"\xff\xd9"):  # cut short (or trailing bytes): let torchvision.io decide
                raise ValueError(path)
            height, width = _jpeg.size(data)
        except ValueError:  # not a JPEG libjpeg turns into RGB (PNG, CMYK, ...): the usual way
            return None
        try:
            check_pixels(width, height, self.limits)
        except Refused as err:
            raise refused(path, err) from None
        box = crop_box(self.transforms[1], height, width)
        try:
            pixels = _jpeg.decode_crop(data, *box, self.limits.max_scans)
        except _jpeg.LimitError:
            raise refused(path, too_many_scans(self.limits, "libjpeg reached the next one")) from None
        except ValueError:  # broken past the header: let torchvision.io (or PIL) decide, same crop
            return v2.functional.crop_image(decode_file(path, self.limits), *box)
        return torch.frombuffer(pixels, dtype=torch.uint8).view(box[2], box[3], 3).permute(2, 0, 1)

    def write_file(self, path: str, out: torch.Tensor) -> None:
        """out[...] = self.finish(self.head_of_file(path)), the same pixels and draws; with
        `writes_crop` the resized crop goes straight into `out` (and is flipped there)."""
        if not self.writes_crop:
            return self.write(self.head_of_file(path), out)
        crop = self.decode_crop(path)
        if crop is None:
            return self.write(self.head(decode_file(path, self.limits)), out)
        resize_into(crop, out, self.transforms[1])
        for step in self.transforms[2 : self.head_steps]:  # RandomHorizontalFlip
            if draw_uniform() < float32(step.p):  # v2: torch.rand(1) >= p keeps the image
                out.copy_(out.flip(-1))

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """The rest: self(x) == self.finish(self.head(x)) for the same random draws."""
        for step in self.transforms[self.head_steps :]:
            image = step(image)
        return image

    def write(self, image: torch.Tensor, out: torch.Tensor) -> None:
        """out[...] = self.finish(image), with no new tensor but a uint8 scratch for float output."""
        if self.output == "uint8":
            if image.stride() == out.stride():
                out.copy_(image)  # channels-last to channels-last: one straight copy
            else:
                copy_uint8(image, out)
            return
        if image.dtype == torch.uint8 and not image.is_contiguous():
            image = copy_uint8(image, torch.empty(image.shape, dtype=torch.uint8))
        out.copy_(image)  # ToDtype(scale=True) and Normalize's exact operations, in place
        out.mul_(1.0 / 255).sub_(self._mean).div_(self._std)


def copy_uint8(image: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[...] = image; numpy's strided copy turns a channels-last (3, H, W) uint8 image (what
    decoding and resizing give) into planes ~4x faster than torch's."""
    if image.dtype == torch.uint8 and out.dtype == torch.uint8 and image.device.type == "cpu":
        numpy.copyto(out.numpy(), image.numpy())
    else:
        out.copy_(image)
    return out


def crop_box(step: v2.RandomResizedCrop, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) as `step.make_params` draws it for a height x width image: the same
    torch random numbers in the same order (tests compare), without its per-call tensors."""
    scale, ratio = step.scale, step.ratio
    low, high = log_ratios(tuple(ratio))
    area = height * width
    real, integer = SCRATCH.real, SCRATCH.integer
    for _ in range(10):
        target_area = area * real.uniform_(scale[0], scale[1]).item()
        aspect_ratio = real.uniform_(low, high).exp_().item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = integer.random_(0, height - h + 1).item()  # what torch.randint(0, n, (1,)) runs
            left = integer.random_(0, width - w + 1).item()
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop, clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Scratch(threading.local):
    """One-element tensors (per thread) that the per-image random draws fill: `real.uniform_(a, b)`
    is what torch.rand and torch.empty(1).uniform_ run, `integer.random_(a, b)` what torch.randint
    runs, without a new tensor for each draw."""

    def __init__(self):
        self.real = torch.empty(1)
        self.integer = torch.empty(1, dtype=torch.int64)


SCRATCH = Scratch()


def draw_uniform() -> float:
    """torch.rand(1).item(), drawn into the scratch tensor."""
    return SCRATCH.real.uniform_().item()


@functools.lru_cache(maxsize=16)
def float32(value: float) -> float:
    """`value` rounded to float32, as torch rounds a Python number it compares with a float32 tensor."""
    return float(numpy.float32(value))


# torchvision's resize_image runs torch's own uint8 kernel for antialiased bilinear on these CPUs
NATIVE_UINT8_BILINEAR = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resize_into(image: torch.Tensor, out: torch.Tensor, step: v2.RandomResizedCrop) -> None:
    """out[...] = resize_image(image) to step.size, the same pixels. For a channels-last uint8 image
    and slot under antialiased bilinear, torch's kernel writes the slot itself (no image between)."""
    image, slot = image.unsqueeze(0), out.unsqueeze(0)
    if (
        NATIVE_UINT8_BILINEAR
        and step.interpolation == v2.InterpolationMode.BILINEAR
        and step.antialias
        and image.dtype == slot.dtype == torch.uint8
        and image.shape[-2:] != slot.shape[-2:]
        and image.is_contiguous(memory_format=torch.channels_last)
        and slot.is_contiguous(memory_format=torch.channels_last)
    ):
        torch.ops.aten._upsample_bilinear2d_aa.out(image, list(slot.shape[-2:]), False, None, None, out=slot)
    else:
        out.copy_(v2.functional.resize_image(image[0], list(step.size), step.interpolation, antialias=step.antialias))


@functools.lru_cache(maxsize=16)
def log_ratios(ratio: tuple[float, float]) -> tuple[float, float]:
    """make_params' float32 log aspect ratios, as Python floats."""
    return tuple(float(r) for r in torch.log(torch.tensor(ratio)))


def apply_step(step: Any, image: Any) -> Any:
    """step(image) for a tensor image; RandomResizedCrop and RandomHorizontalFlip without v2's
    per-call machinery (a tenth of a millisecond per image), drawing the same random numbers."""
    if not isinstance(image, torch.Tensor):
        return step(image)
    kind = type(step)
    if kind is v2.ToImage:
        return image
    if kind is v2.RandomResizedCrop:
        return v2.functional.resized_crop_image(
            image,
            *crop_box(step, *image.shape[-2:]),
            size=list(step.size),
            interpolation=step.interpolation,
            antialias=step.antialias,
        )
    if kind is v2.RandomHorizontalFlip:
        return image if draw_uniform() >= float32(step.p) else v2.functional.horizontal_flip_image(image)
    return step(image)


def new_batch(size: int, shape: tuple[int, ...], output: str) -> torch.Tensor:
    """The batch `__getitems__` writes: float32 and contiguous, or uint8 and channels-last (HWC in
    memory, the layout decoding and resizing leave an image in, and the one DALI and FFCV hand over),
    so a uint8 sample is copied in one straight pass."""
    if output == "float" or len(shape) != 3:
        return empty_batch((size, *shape), torch.float32 if output == "float" else torch.uint8)
    channels, height, width = shape
    return empty_batch((size, height, width, channels), torch.uint8).permute(0, 3, 1, 2)


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor; in a DataLoader worker in shared memory that the worker reuses once
    the main process has let go of it (launcher.data.shared_batches), with room for the targets."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    if shared_batches.AVAILABLE:
        return shared_batches.empty(shape, dtype, extra=8 * shape[0])
    template = torch.empty(0, dtype=dtype)  # a fresh shared-memory file, as default_collate takes
    storage = template._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return template.new(storage).resize_(*shape)


def collate(batch: list) -> Any:
    """default_collate, except that a batch `ImageNet.__getitems__` already wrote (every image a view,
    in order, of one whole tensor) is passed on as that tensor, without a copy (from a worker: with
    the targets, in its reused shared memory)."""
    images = [s[0] for s in batch] if batch and all(isinstance(s, tuple) for s in batch) else []
    first = images[0] if images else None
    base = getattr(first, "_base", None)
    if isinstance(base, torch.Tensor) and base.numel() == len(images) * first.numel():
        step, start = first.numel(), first.storage_offset()
        if all(
            im._base is base
            and im.shape == first.shape
            and im.stride() == first.stride()
            and im.storage_offset() == start + k * step
            for k, im in enumerate(images)
        ):
            whole = first.as_strided((len(images), *first.shape), (step, *first.stride()), start)
            return shared_batches.batch(whole, [s[1] for s in batch])
    return default_collate(batch)
