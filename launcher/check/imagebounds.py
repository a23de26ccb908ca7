"""Bounds on the image files verify and the loaders read: regular files only, bytes, pixels, JPEG scans.

    open_regular(path) -> descriptor of a regular file (never a FIFO, device, socket, folder or link)
    read_regular(path, limits) -> its bytes, at most its size and limits.max_file_bytes
    image_size(data) -> (width, height) a JPEG or PNG header declares, checked against max_pixels
    jpeg_scans(data, scan, limits) -> (scans, end of the end-of-image marker), walking the image data

A hostile or damaged root holds a FIFO (an open that never returns), a link to /dev/zero (a read
that never ends), a 780-byte JPEG declaring 30000x30000 pixels (3.9 GB for a decoder) or a 91 KB
progressive JPEG of 1000 scans (13 s of libjpeg): each is refused here, before any decoder runs.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from dataclasses import dataclass

# open without following a link and without waiting for a FIFO's writer; fstat decides the rest
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
# progressive SOFn: many scans are their nature, so they are counted even at verify.level=header
PROGRESSIVE_SOF = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# start-of-scan markers (bytes.count of two bytes is 3x slower than this on entropy-coded data)
SOS = re.compile(b"\xff\xda")
# a marker in or after entropy-coded data: FF then a byte that is not a stuffed 00, a fill FF, a
# restart marker RSTn, SOI or TEM (those have no length and are skipped by the walk)
MARKER = re.compile(b"\xff([^\x00\x01\xd0-\xd8\xff])")


@dataclass(frozen=True)
class Limits:
    """What one image file may cost; `option` names the config group whose keys set them."""

    # bytes of one file (ImageNet's largest is about 15 MB)
    max_file_bytes: int = 64 << 20
    # pixels a header may declare (PIL's Image.MAX_IMAGE_PIXELS)
    max_pixels: int = 89_478_485
    # scans of one JPEG (libjpeg-turbo has no limit; TensorFlow and Chromium cap them)
    max_scans: int = 100
    option: str = "verify"

    def check(self) -> None:
        from launcher.core.errors import LauncherError

        for key in ("max_file_bytes", "max_pixels", "max_scans"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LauncherError(f"{self.option}.{key}={value!r} must be a positive whole number.")


class BadImage(Exception):
    """The file is not a whole JPEG or PNG; the message says how."""


class Refused(Exception):
    """The file is not one verify or a loader reads (not regular, too large, too many pixels or
    scans); `check` is the verify level it fails at."""

    def __init__(self, message: str, check: str = "exists"):
        super().__init__(message)
        self.check = check


# ---------------------------------------------------------------- files


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ]
    return next((name for test, name in kinds if test(mode)), f"not a file (mode {stat.S_IFMT(mode):o})")


def not_regular(mode: int) -> Refused:
    return Refused(f"not a regular file but {kind_of(mode)}; an image must be a plain file: move it out")


def check_regular(path: str, limits: Limits) -> int:
    """Size of the regular file at `path` without opening it (lstat: a link is not followed)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(st.st_mode)
    return check_size(st.st_size, limits)


def check_size(size: int, limits: Limits) -> int:
    if size > limits.max_file_bytes:
        raise Refused(
            f"{size} bytes, more than {limits.option}.max_file_bytes={limits.max_file_bytes}; no image of the "
            f"dataset is that large: move it out, or raise {limits.option}.max_file_bytes"
        )
    return size


def open_regular(path: str, limits: Limits) -> tuple[int, int]:
    """(descriptor, size) of the regular file at `path`: opened without following a link and without
    blocking on a FIFO, checked on the descriptor (fstat), its size within limits.max_file_bytes."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP, errno.EISDIR, errno.ENODEV):
            raise not_regular(os.lstat(path).st_mode) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(st.st_mode)
        return fd, check_size(st.st_size, limits)
    except BaseException:
        os.close(fd)
        raise


def read_fd(fd: int, size: int, offset: int = 0) -> bytearray:
    """At most `size` bytes from `offset` (fewer if the file is shorter now); never reads until EOF."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    view.release()
    if got < size:
        del buf[got:]
    return buf


def read_regular(path: str, limits: Limits) -> bytearray:
    """The bytes of the regular file at `path`: at most its size when opened and limits.max_file_bytes."""
    fd, size = open_regular(path, limits)
    try:
        return read_fd(fd, size)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- headers


def _be16(buf, i: int) -> int:
    return (buf[i] << 8) | buf[i + 1]


def jpeg_header(head: bytes, size: int, read) -> tuple[int, int, int, int, int, int]:
    """(SOF marker, precision, height, width, components, first byte of the scan data) of a JPEG,
    walking its segments from SOI to SOS; `read(offset, n)` fetches bytes past `head`."""
    buf, base, pos, sof = head, 0, 2, None
    try:
        while True:
            if pos + 10 > base + len(buf) and base + len(buf) < size:
                buf, base = read(pos, 4096), pos
            i = pos - base
            if buf[i] != 0xFF:
                raise BadImage(f"corrupt JPEG header: byte {pos} is 0x{buf[i]:02x} where a marker belongs")
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte before a marker
                pos += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
                continue
            if marker in (0xD8, 0xD9):
                raise BadImage(f"corrupt JPEG header: marker FF{marker:02X} at byte {pos}, before any image data")
            length = _be16(buf, i + 2)
            if length < 2:
                raise BadImage(f"corrupt JPEG header: segment FF{marker:02X} at byte {pos} has length {length}")
            if marker in JPEG_SOF:
                sof = (marker, buf[i + 4], _be16(buf, i + 5), _be16(buf, i + 7), buf[i + 9])
            elif marker == 0xDA:
                if sof is None:
                    raise BadImage("corrupt JPEG header: image data (SOS) before any frame header (SOFn)")
                scan = pos + 2 + length
                if scan >= size:
                    raise BadImage(f"truncated: the file ends ({size} bytes) before the image data")
                return (*sof, scan)
            pos += 2 + length
            if pos >= size:
                raise BadImage(
                    f"truncated: segment FF{marker:02X} at byte {pos - 2 - length} runs to byte {pos}, "
                    f"past the end of the file ({size} bytes)"
                )
    except IndexError:
        raise BadImage(f"truncated: the file ends ({size} bytes) inside the JPEG header") from None


def jpeg_scans(data, scan: int, limits: Limits) -> tuple[int, int]:
    """(scans, offset just past the end-of-image marker) of a JPEG whose first scan's data starts at
    `scan`: walks the entropy-coded data (stuffed FF00, restart markers) and the segments between
    scans (tables, further SOS) to the FFD9 that ends the image, so bytes after it are found
    wherever they are. No FFD9: truncated. More scans than limits.max_scans: refused."""
    size, pos, scans = len(data), scan, 1
    while True:
        found = MARKER.search(data, pos)
        if found is None:
            raise BadImage("truncated: no end-of-image marker (FFD9) after the image data")
        marker, at = found[1][0], found.end() - 2
        if marker == 0xD9:
            return scans, at + 2
        if at + 4 > size:
            raise BadImage("truncated: no end-of-image marker (FFD9) after the image data")
        length = _be16(data, at + 2)
        if length < 2:
            raise BadImage(f"corrupt JPEG: segment FF{marker:02X} at byte {at} has length {length}")
        if marker == 0xDA:
            scans += 1
            if scans > limits.max_scans:
                raise too_many_scans(limits, f"scan {scans} starts at byte {at}")
        pos = at + 2 + length


def too_many_scans(limits: Limits, where: str, check: str = "header") -> Refused:
    return Refused(
        f"more than {limits.option}.max_scans={limits.max_scans} JPEG scans ({where}): decoding it costs "
        f"seconds per image (a scan bomb); move it out or re-encode it, or raise "
        f"{limits.option}.max_scans",
        check,
    )


def check_pixels(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_pixels:
        raise Refused(
            f"the header declares {width}x{height} = {width * height} pixels, more than "
            f"{limits.option}.max_pixels={limits.max_pixels} (a decompression bomb: a decoder would allocate "
            f"{width * height * 3 / 1e9:.1f} GB); move it out, or raise {limits.option}.max_pixels",
            "header",
        )


def image_size(data) -> tuple[str, int, int] | None:
    """(format, width, height) from a JPEG's SOFn or a PNG's IHDR; None for other formats."""
    if data[:3] == b"\xff\xd8\xff":
        _, _, height, width, _, _ = jpeg_header(data, len(data), lambda o, n: data[o : o + n])
        return "JPEG", width, height
    if data[:8] == PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def check_image(data, limits: Limits) -> None:
    """A decoder may read `data`: declared pixels within limits.max_pixels, JPEG scans within
    limits.max_scans (FFDA counted in the bytes first: a marker cannot hide in the image data, so a
    count within the bound is a proof; above it the scans are walked). Other formats: PIL's header."""
    found = image_size(data)
    if found is None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                found = (im.format, *im.size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return  # the decoder says what it is not
        except Image.DecompressionBombError as err:
            why = f"{err} (PIL); raise {limits.option}.max_pixels only if it is one of yours"
            raise Refused(why, "header") from None
    fmt, width, height = found
    check_pixels(width, height, limits)
    if fmt == "JPEG" and len(SOS.findall(data)) > limits.max_scans:
        jpeg_scans(data, jpeg_header(data, len(data), lambda o, n: data[o : o + n])[5], limits)
