"""launcher.data._jpeg (the C extension): a crop decoded alone has the pixels of the whole decode, cut."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from launcher import data as D
from launcher.data.imageio import ImageReadMode, decode_jpeg

jpeg = D._jpeg  # None when built without libjpeg's headers (libjpeg62-turbo-dev)
needs_jpeg = pytest.mark.skipif(jpeg is None, reason="launcher.data._jpeg was not built (no libjpeg headers)")


def test_the_extension_is_built_under_ci():
    """CI builds the extension (the test command's editable install compiles it into the tree the tests
    import): the fast path must be there, not silently absent."""
    if not os.environ.get("CI"):
        pytest.skip("only CI insists")
    assert jpeg is not None, "launcher.data._jpeg is missing: install gcc and libjpeg62-turbo-dev, then reinstall"
    assert D.build_transforms({}, train=True).fuses_crop


def encoded(mode: str, width: int, height: int, **save) -> bytes:
    """A noisy photo-like JPEG (PIL encodes it)."""
    rng = np.random.default_rng(width * height)
    low = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def full_decode(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def crop(data: bytes, top: int, left: int, height: int, width: int) -> torch.Tensor:
    pixels = jpeg.decode_crop(data, top, left, height, width)
    return torch.frombuffer(pixels, dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


KINDS = {
    "4:2:0": ("RGB", {"subsampling": 2}),
    "4:2:2": ("RGB", {"subsampling": 1}),
    "4:4:4": ("RGB", {"subsampling": 0}),
    "grayscale": ("L", {}),
    "progressive": ("RGB", {"progressive": True}),
    "restart markers": ("RGB", {"restart_marker_rows": 1}),
}


@needs_jpeg
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(173, 131), (64, 48)])
def test_crop_equals_the_full_decode_cut(kind, size):
    mode, save = KINDS[kind]
    data = encoded(mode, *size, **save)
    whole = full_decode(data)
    height, width = whole.shape[1:]
    assert jpeg.size(data) == (height, width)
    rng = np.random.default_rng(0)
    boxes = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, 1, 1), (16, 16, 16, 16), (3, 17, 30, 15)]
    for _ in range(60):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    for top, left, h, w in boxes:
        expected = whole[:, top : top + h, left : left + w]
        assert torch.equal(crop(data, top, left, h, w), expected), (kind, top, left, h, w)


@needs_jpeg
def test_what_it_cannot_decode_is_a_value_error():
    good = encoded("RGB", 40, 30)
    png, cmyk = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    Image.new("CMYK", (16, 16)).save(cmyk, "JPEG")
    with pytest.raises(ValueError, match="CMYK"):
        jpeg.size(cmyk.getvalue())
    for bad in (png.getvalue(), b"", good[: len(good) // 2]):  # the last ends before the rows asked for
        with pytest.raises(ValueError, match="not a decodable JPEG"):
            jpeg.decode_crop(bad, 0, 0, 30, 40)
    for box in [(0, 0, 31, 40), (0, 1, 30, 40), (29, 0, 2, 1), (0, 0, 0, 5)]:
        with pytest.raises(ValueError, match="outside the 30x40 image"):
            jpeg.decode_crop(good, *box)


@needs_jpeg
def test_a_truncated_file_in_the_loader_fails_as_torchvision_would(tmp_path):
    """The fused path never hides a broken file: it hands it to decode_file, which fails (PIL: OSError)."""
    data = encoded("RGB", 300, 200)
    path = tmp_path / "cut.JPEG"
    path.write_bytes(data[: len(data) * 2 // 3])
    pipeline = D.build_transforms({"train_crop_size": 32}, train=True)
    assert pipeline.fuses_crop
    with pytest.raises(OSError, match="truncated"):
        pipeline.head_of_file(str(path))


@needs_jpeg
def test_decode_crop_stops_past_max_scans():
    """libjpeg has no bound on scans: a progressive JPEG of 1000 scans (14 KB) costs about a second.
    decode_crop(..., max_scans) stops as libjpeg reaches the scan after the last allowed one
    (LimitError, not the ValueError the loader answers with a full decode); an ordinary progressive
    file within the bound gives the same pixels as without it."""
    from hostile_files import scan_bomb

    bomb = scan_bomb(1000)
    started = time.perf_counter()
    with pytest.raises(jpeg.LimitError, match="more than 100 scans"):
        jpeg.decode_crop(bomb, 0, 0, 64, 64, 100)
    assert time.perf_counter() - started < 0.5
    assert not issubclass(jpeg.LimitError, ValueError)
    data = encoded("RGB", 173, 131, progressive=True)
    assert torch.equal(
        torch.frombuffer(jpeg.decode_crop(data, 3, 17, 30, 15, 100), dtype=torch.uint8),
        torch.frombuffer(jpeg.decode_crop(data, 3, 17, 30, 15), dtype=torch.uint8),
    )
    with pytest.raises(jpeg.LimitError):
        jpeg.decode_crop(data, 3, 17, 30, 15, 2)
