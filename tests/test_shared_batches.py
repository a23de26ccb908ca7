"""launcher.data.shared_batches: a worker reuses a batch's shared memory only after the main process let go."""

from __future__ import annotations

import gc
import os
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers torch's reductions)
from torch.utils.data import DataLoader, Dataset

from launcher.data import shared_batches as S


@pytest.fixture
def pool(monkeypatch):
    """A fresh pool for this process, closed afterwards."""
    fresh = S.Pool()
    monkeypatch.setattr(S, "POOL", fresh)
    yield fresh
    gc.collect()
    for segment in fresh.segments:
        if segment.free():
            segment.close()


def send(obj):
    """What the DataLoader's queue does to a worker's batch: pickle, then unpickle on the other side."""
    return ForkingPickler.loads(bytes(ForkingPickler.dumps(obj)))


def written_batch(rows: int, fill: int, dtype=torch.uint8):
    images = S.empty((rows, 3, 4, 5), dtype, extra=8 * rows)
    images.fill_(fill)
    return S.batch(images, list(range(fill, fill + rows)))


def test_batch_arrives_with_its_targets_and_segment_is_reused_after_release(pool):
    received = send(written_batch(6, 7))
    images, targets = received
    assert images.shape == (6, 3, 4, 5) and bool((images == 7).all())
    assert targets.dtype == torch.int64 and targets.tolist() == list(range(7, 13))
    first = pool.segments[0]
    assert not first.free()  # the main process holds it
    second = send(written_batch(6, 9))  # so the next batch goes elsewhere ...
    assert len(pool.segments) == 2 and bool((images == 7).all())  # ... and the held one is untouched
    del received, images, targets
    assert first.free()  # the last tensor over it is gone
    third = send(written_batch(6, 3))
    assert len(pool.segments) == 2 and not first.free()  # reused
    assert bool((third[0] == 3).all()) and bool((second[0] == 9).all())


def test_a_view_of_the_batch_keeps_the_segment(pool):
    images, targets = send(written_batch(4, 1, torch.float32))
    row = images[2]
    del images, targets
    assert not pool.segments[0].free()
    send(written_batch(4, 5, torch.float32))
    assert bool((row == 1).all()) and len(pool.segments) == 2
    del row
    assert pool.segments[0].free()


def test_unsent_batch_is_released_when_dropped(pool):
    images = S.empty((2, 8), torch.float32, extra=16)
    assert not pool.segments[0].free()  # the worker is still writing it
    del images  # e.g. the dataset raised halfway
    assert pool.segments[0].free()
    S.empty((2, 8), torch.float32, extra=16)
    assert len(pool.segments) == 1


def test_pool_keeps_at_most_KEEP_released_segments(pool):
    held = [send(written_batch(2, k)) for k in range(S.KEEP + 3)]
    assert len(pool.segments) == S.KEEP + 3
    del held
    send(written_batch(2, 0))
    assert len(pool.segments) == S.KEEP


def test_other_tensors_go_the_usual_way(pool):
    images = torch.zeros(3, 2)
    got = S.batch(images, [4, 5, 6])
    assert isinstance(got, list) and got[0] is images and got[1].tolist() == [4, 5, 6]
    whole = S.empty((4, 2), torch.float32, extra=32)
    for part in whole[1:], whole[:3]:  # not the whole tensor of `empty`
        assert isinstance(S.batch(part, [1, 2, 3]), list)
    no_room = S.empty((4, 2), torch.float32)
    assert isinstance(S.batch(no_room, list(range(40))), list)


class Numbered(Dataset):
    """Batch k of n rows holds k in every element, written in place like ImageNet.__getitems__, and
    reports how many segments its worker has made."""

    def __len__(self):
        return 64 * 8

    def __getitems__(self, indices):
        images = S.empty((len(indices), 3, 16, 16), torch.uint8, extra=8 * len(indices))
        images.fill_(indices[0] // len(indices))
        images[:, 0, 0, 0] = len(S.pool().segments)
        return images, list(indices)


def collate(items):
    return S.batch(*items)


def test_through_dataloader_workers_held_batches_stay_intact_and_segments_are_reused():
    loader = DataLoader(Numbered(), batch_size=8, num_workers=2, collate_fn=collate, persistent_workers=True)
    made = 0
    for epoch in range(3):
        kept = []
        for k, (images, targets) in enumerate(loader):
            assert targets.tolist() == list(range(8 * k, 8 * k + 8))
            assert bool((images[:, :, 1:] == k).all()), k
            made = max(made, int(images[0, 0, 0, 0]))
            if k % 8 == 0:
                kept.append((k, images))  # held while later batches are written
        for k, images in kept:
            assert bool((images[:, :, 1:] == k).all()), (epoch, k)
    # 3 x 64 batches; a worker needs a segment per batch held (8) and per batch in flight (prefetch 2 + 1)
    assert made <= len(kept) + 4


def test_fork_gets_its_own_pool(pool):
    S.empty((1,), torch.uint8)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, bytes([len(S.pool().segments)]))
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 1) == b"\x00" and len(pool.segments) == 1


def test_out_of_memory_names_the_loader_options(pool, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match=r"shared batch of 1,024 bytes .*lower loader.batch_size"):
        S.empty((960,), torch.uint8)
    assert not pool.segments


def test_a_fork_dropping_its_copy_of_a_batch_does_not_release_it(pool):
    received = send(written_batch(3, 4))
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        del received  # the child's copy of the batch goes: the parent still holds the segment
        gc.collect()
        os._exit(0 if not pool.segments[0].free() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and not pool.segments[0].free()
    del received
    assert pool.segments[0].free()
