"""launcher.data.imageio: the one place torchvision.io's (deprecated) decoders are called."""

from __future__ import annotations

import ast
import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.io
from PIL import Image

from launcher.data import imageio

from conftest import REPO


def test_the_torchvision_decoders_we_call_still_exist():
    """The day torchvision removes one, this fails (and importing launcher.data.imageio fails before it):
    move launcher/data/imageio.py to TorchCodec (torchcodec.decoders) as torchvision's warning says."""
    for name in imageio.TORCHVISION_CALLS:
        assert callable(getattr(torchvision.io, name, None)), (
            f"torchvision.io.{name} is gone: port launcher/data/imageio.py"
        )


def png(pixels: np.ndarray) -> torch.Tensor:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)


def test_decode_image_gives_the_pixels_without_the_deprecation_warning(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(png(pixels).numpy().tobytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = imageio.decode_image(imageio.read_file(tmp_path / "a.png"), mode=imageio.ImageReadMode.RGB)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, torch.from_numpy(pixels).permute(2, 0, 1))


def test_decode_jpeg_reads_a_jpeg_without_the_deprecation_warning():
    out = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 200, dtype=np.uint8)).save(out, "JPEG", quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = imageio.decode_jpeg(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8))
    assert decoded.shape == (3, 16, 24) and abs(int(decoded.float().mean()) - 200) <= 2


def test_a_direct_call_fails_under_pytest():
    """pyproject's filterwarnings turns torchvision's deprecation into an error, so a decode call that
    bypasses launcher.data.imageio fails the test that makes it."""
    data = png(np.zeros((2, 2, 3), dtype=np.uint8))
    try:
        torchvision.io.decode_image(data)
    except DeprecationWarning:
        return
    raise AssertionError("torchvision.io.decode_image no longer warns: is the deprecation gone, or the filter?")


def test_no_other_module_imports_torchvision_io():
    """launcher/, benchmarks/ and tests/ reach torchvision.io only through launcher.data.imageio."""
    offenders = []
    for path in [*REPO.glob("launcher/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("tests/*.py")]:
        if path.name in ("imageio.py", Path(__file__).name):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "torchvision.io" or n.startswith("torchvision.io.") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"decode through launcher.data.imageio instead: {offenders}"
