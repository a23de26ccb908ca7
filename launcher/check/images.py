"""The image checker verify runs on each file: JPEG/PNG header and end marker read from the head and
the tail, PIL's full decode at level `decode`, and the notes for files some decoders cannot read."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from launcher.check.imagebounds import (
    PNG_SIGNATURE,
    PROGRESSIVE_SOF,
    BadImage,
    Limits,
    Refused,
    check_image,
    check_pixels,
    check_regular,
    jpeg_header,
    jpeg_scans,
    open_regular,
    read_fd,
)

HEAD_BYTES = 16384


# verify.max_file_bytes, verify.max_pixels, verify.max_scans when not given (launcher.config's defaults)
DEFAULT_LIMITS = Limits()


TAIL_BYTES = 16


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


# baseline, extended and progressive Huffman, 8-bit: what every JPEG decoder reads
COMMON_SOF = frozenset((0xC0, 0xC1, 0xC2))


NOTES = {
    "png": "PNG data in a JPEG-named file: PIL reads it, JPEG decoders (nvJPEG, DALI, "
    "torchvision.io.decode_jpeg) fail on it; verify.fix=true re-encodes it to RGB JPEG",
    "cmyk": "CMYK JPEG (4 components): PIL reads it, some JPEG decoders (nvJPEG, DALI) do not; "
    "verify.fix=true re-encodes it to RGB JPEG",
    "grayscale": "grayscale JPEG (1 component): readable by every decoder; loaders must convert it "
    "to RGB (PIL convert('RGB'), decode_jpeg(mode=RGB)); verify.fix leaves it as it is",
    "process": "JPEG coding process not read by every decoder (arithmetic, lossless or 12-bit); "
    "verify.fix=true re-encodes it to RGB JPEG",
}


@dataclass
class FileResult:
    ok: bool
    # the level that failed (exists, header, decode) and why
    check: str | None = None
    reason: str | None = None
    note: str | None = None
    kind: str | None = None
    size: int = 0


def jpeg_end(tail: bytes, size: int, scan: int, read, progressive: bool = False, limits: Limits = DEFAULT_LIMITS):
    """None when the image ends at the end of the file, or a note on the bytes after its end marker.
    A file that ends in FFD9 ends there (the marker cannot hide in the image data), unless it is
    progressive: then its scans are counted. Otherwise the end-of-image marker is found by walking
    the scans and the segments between them (`read(0, size)`: the whole file, at most
    limits.max_file_bytes); none at all: truncated."""
    if tail.endswith(b"\xff\xd9") and not progressive:
        return None
    _, end = jpeg_scans(read(0, size), scan, limits)
    if end == size:
        return None
    at = f"{size - end} bytes after the end-of-image marker (FFD9) at byte {end - 2}"
    return f"trailing bytes after the end marker: {at}, ignored by decoders"


def parse_header(
    head: bytes, tail: bytes, size: int, read, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, int, int, str | None, str | None]:
    """(format, width, height, odd kind or None, note or None) from the head and tail of an image file;
    `read(offset, n)` fetches other bytes. Refused: more pixels or scans than `limits`."""
    if head[:3] == b"\xff\xd8\xff":
        marker, precision, height, width, components, scan = jpeg_header(head, size, read)
        if not width or not height or components not in (1, 3, 4):
            raise BadImage(f"corrupt JPEG header: {width}x{height} pixels, {components} components")
        check_pixels(width, height, limits)
        extra = jpeg_end(tail, size, scan, read, marker in PROGRESSIVE_SOF, limits)
        if marker not in COMMON_SOF or precision != 8:
            kind = "process"
        else:
            kind = {1: "grayscale", 3: None, 4: "cmyk"}[components]
        note = NOTES[kind] if kind else None
        if extra:
            note = f"{note}; {extra}" if note else extra
        return "JPEG", width, height, kind, note
    if head[:8] == PNG_SIGNATURE:
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise BadImage("corrupt PNG: no IHDR chunk after the signature")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if not width or not height:
            raise BadImage(f"corrupt PNG header: {width}x{height} pixels")
        check_pixels(width, height, limits)
        if not tail.endswith(PNG_END):
            raise BadImage("truncated: no IEND chunk at the end of the PNG")
        return "PNG", width, height, "png", NOTES["png"]
    if not head:
        raise BadImage("empty file (0 bytes)")
    raise BadImage(f"not a JPEG or PNG: the file starts with {head[:8].hex(' ')}")


_IMAGE = None


def pil_image():
    global _IMAGE
    if _IMAGE is None:
        from PIL import Image

        _IMAGE = Image
    return _IMAGE


def decode(data: bytes) -> tuple[str, tuple[int, int], list[str]]:
    """Decode all the image data with PIL (`Image.verify()` would not read JPEG data): (mode, size,
    PIL's warnings). A JPEG is decoded at 1/8 scale in the DCT domain (PIL's draft mode): libjpeg
    still parses every marker and entropy-decodes every block of every scan, which is where
    truncation and damage surface, and skips only the full-size IDCT and colour conversion,
    which cannot fail; 1.5x faster. tests/test_verify.py checks it fails exactly the files a
    full-size decode fails."""
    image = pil_image()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
            mode, dims = im.mode, im.size
            im.draft(mode, (max(1, dims[0] // 8), max(1, dims[1] // 8)))  # no-op for PNG
            im.load()
    return mode, dims, [str(w.message) for w in caught]


def probe(path: str, level: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS) -> FileResult:
    """Check one image file at `level`; `size` is the manifest's (None: unknown). At header and
    decode a damaged file fails for what is wrong inside it, its size mismatch added. Only a regular
    file within `limits` is read (a FIFO, a device or a link fails, never blocks or reads forever)."""
    try:
        if level == "exists":
            actual = check_regular(path, limits)
            return _sized(actual, size) or FileResult(True, size=actual)
        fd, actual = open_regular(path, limits)
    except Refused as err:
        return FileResult(False, err.check, str(err))
    except FileNotFoundError:
        return FileResult(False, "exists", "missing (gone while verify ran)")
    except OSError as err:
        return FileResult(False, "exists", f"cannot read it: {err.strerror or err}")
    try:
        return probe_range(fd, 0, actual, level, size, limits)
    finally:
        os.close(fd)


def probe_range(
    fd: int, offset: int, actual: int, level: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> FileResult:
    """probe at header or decode on the `actual` bytes from `offset` of an open file (a whole image
    file, or an image's byte range of an archive; the caller checked `actual` against limits)."""
    try:
        if level == "header":
            head = bytes(read_fd(fd, min(HEAD_BYTES, actual), offset))
            tail = (
                head[-TAIL_BYTES:]
                if actual <= HEAD_BYTES
                else bytes(read_fd(fd, TAIL_BYTES, offset + actual - TAIL_BYTES))
            )
            _, width, height, kind, note = parse_header(head, tail, actual, reader(fd, actual, offset), limits)
        else:
            data = read_fd(fd, actual, offset)
            actual = len(data)
            _, width, height, kind, note = parse_header(
                data, data[-TAIL_BYTES:], actual, lambda o, n: data[o : o + n], limits
            )
            check_image(data, limits)  # scans of every JPEG, not only the progressive ones
    except BadImage as err:
        return FileResult(False, "header", f"{err}{_size_note(actual, size)}", size=actual)
    except Refused as err:
        return FileResult(False, err.check, str(err), size=actual)
    except OSError as err:
        return FileResult(False, "exists", f"cannot read it: {err.strerror or err}")
    if level == "decode":
        try:
            _, dims, warned = decode(data)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
            reason = f"PIL cannot decode it: {type(err).__name__}: {err}{_size_note(actual, size)}"
            return FileResult(False, "decode", reason, size=actual)
        if dims != (width, height):
            reason = f"PIL decodes {dims[0]}x{dims[1]}, the header says {width}x{height}"
            return FileResult(False, "decode", reason, size=actual)
        if warned:
            note = "; ".join([*([note] if note else []), *(f"PIL warns: {w}" for w in warned)])
    return _sized(actual, size) or FileResult(True, None, None, note, kind, actual)


def reader(fd: int, size: int, base: int = 0):
    """read(offset, n) of the `size` bytes from `base` of an open file, never past them (a file's
    size when it was opened, or an image's range of an archive)."""
    return lambda offset, n: bytes(read_fd(fd, max(0, min(n, size - offset)), base + offset))


def _size_note(actual: int, expected: int | None) -> str:
    if expected is None or actual == expected:
        return ""
    return (
        f" (the manifest says {expected} bytes)" if actual == 0 else f" ({actual} bytes, the manifest says {expected})"
    )


def _sized(actual: int, expected: int | None) -> FileResult | None:
    if expected is not None and actual != expected:
        return FileResult(False, "exists", f"{actual} bytes, the manifest says {expected}", size=actual)
    if actual == 0:
        return FileResult(False, "exists", "empty file (0 bytes)")
    return None


def check_file(
    path: str | Path, level: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bool, str | None, str | None]:
    """(ok, reason of the failure, note on an odd but valid file) of one image file at `level`."""
    r = probe(str(path), level, size, limits)
    return r.ok, (f"{r.check}: {r.reason}" if r.reason else None), r.note
