"""One image file read within the loader's bounds and decoded whole to a uint8 RGB tensor
(torchvision.io through launcher.data.imageio, PIL for what it cannot decode)."""

from __future__ import annotations

import io

import torch
from torchvision.transforms import v2

from launcher.check.imagebounds import BadImage, Limits, Refused, check_image, read_regular
from launcher.core.errors import LauncherError
from launcher.data.imageio import ImageReadMode, decode_image
from launcher.data.nodes import TRANSFORM_DEFAULTS


class ImageRefused(LauncherError):
    """An image file a loader does not decode: not a regular file, too large, more pixels or JPEG
    scans than its bounds, or a header verify would fail; the message names the file."""


# what one image file may cost when no transform node says (transform.max_file_bytes, max_pixels, max_scans)
LOADER_LIMITS = Limits(TRANSFORM_DEFAULTS["max_file_bytes"], TRANSFORM_DEFAULTS["max_pixels"], option="transform")


def read_image(path: str, limits: Limits = LOADER_LIMITS) -> bytearray:
    """The bytes of the image file at `path`, checked before any decoder allocates: a regular file
    (opened without following links or waiting on a FIFO) of at most limits.max_file_bytes, a header
    declaring at most limits.max_pixels pixels, a JPEG of at most limits.max_scans scans."""
    try:
        data = read_regular(path, limits)
        if not data:
            raise BadImage("empty file (0 bytes)")
        check_image(data, limits)
    except (Refused, BadImage) as err:
        raise refused(path, err) from None
    return data


def refused(path: str, err: Exception) -> ImageRefused:
    fix = "; `launcher verify` lists every such file" if isinstance(err, BadImage) else ""
    return ImageRefused(f"{path}: {err}{fix}")


def decode_file(path: str, limits: Limits = LOADER_LIMITS) -> torch.Tensor:
    """The image at `path` as a uint8 RGB tensor (3, H, W): torchvision.io (JPEG, PNG, ... by
    content, so a PNG named .JPEG works), PIL for what it cannot decode (e.g. CMYK JPEGs); the file
    is read and checked against `limits` first (read_image)."""
    data = read_image(path, limits)
    try:
        return decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return decode_with_pil(path, data, limits)


def decode_with_pil(path: str, data: bytes | bytearray | None = None, limits: Limits = LOADER_LIMITS) -> torch.Tensor:
    """PIL's decode of the image at `path` (its bytes `data` when already read and checked)."""
    from PIL import Image

    if data is None:
        data = read_image(path, limits)
    with Image.open(io.BytesIO(data)) as im:
        return v2.functional.pil_to_tensor(im.convert("RGB"))
