"""Hostile files for the resource-bound tests (verify and the loaders).

plant(kind, path) -> puts a FIFO, a link to /dev/zero, a socket or a folder where an image belongs
deadline(seconds) -> a guard: TimeoutError instead of a test that hangs (a FIFO's open blocks)
pixel_bomb(30000, 30000) -> a ~850-byte JPEG whose header declares 30000x30000 pixels
scan_bomb(1000) -> a 14 KB progressive JPEG of 1000 scans (one AC scan repeated; libjpeg only warns)
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(size=(64, 48), seed=0, flat: bool = False, **save) -> bytes:
    """A noisy JPEG, or a flat grey one (`flat`: its AC scans are a few bytes each)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if flat:
        pixels[...] = 128
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment of a JPEG up to the first SOS's header end; an SOS
    segment's end includes its entropy-coded data (up to the next marker that is not RSTn or FF00)."""
    out, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((marker, pos, pos + 2))
            return out
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, pos, end))
        pos = end
    raise ValueError("no EOI")


def pixel_bomb(width: int, height: int) -> bytes:
    """A tiny baseline JPEG with its frame header rewritten to declare width x height pixels."""
    data = bytearray(jpeg((16, 16), progressive=False))
    sof = next(start for marker, start, _ in segments(bytes(data)) if marker == 0xC0)
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def scan_bomb(scans: int, size=(512, 512)) -> bytes:
    """A flat grey progressive JPEG of `scans` scans: its last AC scan repeated before the end marker."""
    data = jpeg(size, flat=True, progressive=True)
    parts = segments(data)
    sos = [(start, end) for marker, start, end in parts if marker == 0xDA]
    start, end = sos[-1]
    extra = scans - len(sos)
    assert extra >= 0, len(sos)
    eoi = parts[-1][1]
    return data[:eoi] + data[start:end] * extra + data[eoi:]


# what can stand where an image file belongs and is not a regular file
NON_REGULAR = ("fifo", "dev-zero-link", "socket", "folder")
BOMBS = {"pixels": lambda: pixel_bomb(30000, 30000), "scans": lambda: scan_bomb(1000)}


def plant(kind: str, path: Path) -> None:
    """Replace the file at `path` (if any) by a non-regular one of `kind`."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a socket's path must be short: bind the name alone
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path.name)
            sock.close()
        finally:
            os.chdir(here)
    elif kind == "folder":
        path.mkdir()
    else:
        raise ValueError(kind)


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in the block after `seconds` (SIGALRM; main thread only)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
