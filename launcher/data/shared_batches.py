"""Batches that DataLoader workers write into shared memory they reuse.

A DataLoader worker normally puts every batch into a fresh shared-memory file: the kernel allocates,
zeroes and maps each page of it, and frees them all again when the main process drops the batch.
For a uint8 batch of 64 ImageNet crops that is 2,352 pages and about a tenth of the worker's CPU
time. Here a worker keeps its segments (memfds) mapped and writes the next batch into one that the
main process has let go of. FFCV and DALI reuse their buffers too, but a batch of theirs is valid
only until the next few arrive; a batch here stays valid for as long as anything holds it.

How a segment changes hands: byte 0 of its header turns 1 when a worker pickles a batch over it
(to send it to the main process). It turns 0 again when the main process frees its last tensor over
the segment (`MainMap.__del__`). A worker reuses a segment only when that byte is 0 and none of its
own tensors point into the segment any more. Images and targets travel as one segment and one fd.

    empty(shape, dtype, extra)  -> a tensor in a segment (call it in a DataLoader worker)
    batch(images, targets)      -> what collate returns: [images, targets] once it arrives
"""

from __future__ import annotations

import math
import mmap
import os
import weakref
from multiprocessing.reduction import DupFd

import torch

AVAILABLE = hasattr(os, "memfd_create")  # Linux; elsewhere launcher.data uses torch's shared memory
HEADER = 64  # bytes before the data; byte 0 is 1 while the main process may hold the batch
KEEP = 8  # segments a worker keeps mapped; released ones beyond that are unmapped


class Segment:
    """A memfd of `size` bytes that this process maps once and fills again and again."""

    def __init__(self, size: int):
        self.fd = os.memfd_create("launcher-batch", os.MFD_CLOEXEC)
        try:
            os.posix_fallocate(self.fd, 0, size)  # out of memory: an error here, not SIGBUS later
            self.map = mmap.mmap(self.fd, size)
        except OSError as e:
            os.close(self.fd)
            raise OSError(
                e.errno,
                f"no memory for a shared batch of {size:,} bytes ({e.strerror}); lower loader.batch_size, "
                "loader.num_workers or loader.prefetch_factor",
            ) from e
        self.size = size
        self.nbytes = 0  # what `empty` asked for
        self.held = False  # a tensor of this process points into it
        self.address = 0

    def free(self) -> bool:
        return not self.held and self.map[0] == 0

    def tensor(self) -> torch.Tensor:
        """The segment as uint8; the segment is held until that tensor and every view of it are gone."""
        view = memoryview(self.map)
        self.held = True
        weakref.finalize(view, setattr, self, "held", False)
        whole = torch.frombuffer(view, dtype=torch.uint8)
        self.address = whole.data_ptr()
        return whole

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Pool:
    """The segments of one process."""

    def __init__(self):
        self.pid = os.getpid()
        self.segments: list[Segment] = []

    def take(self, size: int) -> Segment:
        """A free segment of `size` to 2 x `size` bytes, else a new one."""
        found = None
        for segment in list(self.segments):
            if not segment.free():
                continue
            if found is None and size <= segment.size <= 2 * size:
                found = segment
            elif len(self.segments) > KEEP:
                self.segments.remove(segment)
                segment.close()
        if found is None:
            found = Segment(size)
            self.segments.append(found)
        return found

    def owner(self, tensor: torch.Tensor) -> Segment | None:
        """The held segment `tensor` lives in, else None."""
        address = tensor.untyped_storage().data_ptr()
        return next((s for s in self.segments if s.held and s.address == address), None)


POOL: Pool | None = None


def pool() -> Pool:
    """This process's pool (a new one after a fork)."""
    global POOL
    if POOL is None or POOL.pid != os.getpid():
        POOL = Pool()
    return POOL


def padded(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of HEADER (so what follows stays aligned)."""
    return -(-nbytes // HEADER) * HEADER


def empty(shape: tuple[int, ...], dtype: torch.dtype, extra: int = 0) -> torch.Tensor:
    """An uninitialized contiguous tensor in a reused segment that has `extra` bytes to spare after it."""
    nbytes = math.prod(shape) * dtype.itemsize
    segment = pool().take(HEADER + padded(nbytes) + padded(extra))
    segment.nbytes = nbytes
    return segment.tensor()[HEADER : HEADER + nbytes].view(dtype).view(shape)


def batch(images: torch.Tensor, targets: list[int]) -> SharedBatch | list:
    """[images, torch.tensor(targets)]; sent to the main process as one segment when `images` is the
    tensor of an `empty` call (any view of all of it) with room after it for the targets."""
    segment = pool().owner(images)
    nbytes = images.numel() * images.element_size()
    at = HEADER + padded(nbytes)
    if (
        segment is None
        or (images.storage_offset() * images.element_size(), nbytes) != (HEADER, segment.nbytes)
        or at + 8 * len(targets) > segment.size
    ):
        return [images, torch.tensor(targets)]
    labels = torch.empty(0, dtype=torch.uint8).set_(images.untyped_storage())
    labels[at : at + 8 * len(targets)].view(torch.int64).copy_(torch.tensor(targets, dtype=torch.int64))
    return SharedBatch(segment, images, at, len(targets))


class SharedBatch:
    """A batch in a segment on its way to the main process (collate's output in a worker)."""

    def __init__(self, segment: Segment, images: torch.Tensor, at: int, count: int):
        self.segment, self.images, self.at, self.count = segment, images, at, count

    def __reduce__(self):
        self.segment.map[0] = 1  # the main process holds it from now until MainMap.__del__
        images = self.images
        layout = (images.dtype, tuple(images.shape), images.stride(), images.storage_offset())
        return receive, (DupFd(self.segment.fd), self.segment.size, layout, self.at, self.count)


class MainMap(mmap.mmap):
    """The main process's map of a worker's segment: freed with the last tensor over it, which hands
    the segment back to the worker (only in the process that received it, not in a fork of it)."""

    def __new__(cls, fd: int, size: int):
        mapped = super().__new__(cls, fd, size)
        mapped.pid = os.getpid()
        return mapped

    def __del__(self):
        if not self.closed and self.pid == os.getpid():
            self[0] = 0


def receive(fd_holder, size: int, layout: tuple, at: int, count: int) -> list:
    """[images, targets] over the sent segment (unpickling in the main process)."""
    fd = fd_holder.detach()
    try:
        mapped = MainMap(fd, size)
    finally:
        os.close(fd)
    whole = torch.frombuffer(mapped, dtype=torch.uint8)
    dtype, shape, stride, offset = layout
    images = whole.view(dtype).as_strided(shape, stride, offset)
    return [images, whole[at : at + 8 * count].view(torch.int64)]
