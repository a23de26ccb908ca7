"""The one module that calls an image decoder of torch's stack: torchvision.io today.

torchvision 0.29 deprecates its image decoding in favour of TorchCodec (`torchcodec.decoders`, from
torchcodec 0.16), warning on every call. Every decode of launcher (and of its tests and benchmarks)
goes through the wrappers below, which keep torchvision's signatures and silence only that warning,
so the move to TorchCodec is this file alone; tests/test_imageio.py fails the day a function we call
is gone (the import below fails first). launcher.data._jpeg (libjpeg-turbo) and PIL are not torchvision's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as tv_decode_image
from torchvision.io import decode_jpeg as tv_decode_jpeg

__all__ = ["ImageReadMode", "decode_image", "decode_jpeg", "read_file", "TORCHVISION_CALLS"]

TORCHVISION_CALLS = ("decode_image", "decode_jpeg")  # what we call in torchvision.io; nothing else
DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def read_file(path: str | Path) -> torch.Tensor:
    """The bytes of `path` as a 1-D uint8 tensor (what torchvision.io.read_file returned)."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def decode_image(data: torch.Tensor, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """torchvision.io.decode_image: JPEG, PNG, GIF, WebP by content, as a uint8 (C, H, W) tensor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", DEPRECATION, DeprecationWarning)
        return tv_decode_image(data, mode=mode)


def decode_jpeg(data: torch.Tensor, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """torchvision.io.decode_jpeg: one JPEG as a uint8 (C, H, W) tensor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", DEPRECATION, DeprecationWarning)
        return tv_decode_jpeg(data, mode=mode)
