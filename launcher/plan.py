"""Split work into shards balanced by bytes, and shards into jobs.

Pure functions of sizes: no files, no config. Unit ids name their shard and the shard count
(`train-0003-of-0016`), so a plan with another shard count never mistakes an old record for its own.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def balanced_groups(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Indices of `sizes` in `groups` groups of nearly equal total (largest first onto the lightest)."""
    groups = max(1, min(groups, len(sizes)))
    heap = [(0, g) for g in range(groups)]
    members: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        total, g = heapq.heappop(heap)
        members[g].append(i)
        heapq.heappush(heap, (total + sizes[i], g))
    return [sorted(m) for m in members if m]


def contiguous_ranges(sizes: Sequence[int], ranges: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `sizes` in order, each close to total/ranges bytes."""
    n = len(sizes)
    ranges = max(1, min(ranges, n))
    total = sum(sizes) or 1
    bounds, acc, start = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        if len(bounds) < ranges - 1 and acc >= total * (len(bounds) + 1) / ranges and i + 1 < n:
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, n))
    return bounds


def default_train_shards(classes: int, parallelism: int) -> int:
    """Enough shards to keep every job busy and lose little to a crash: 4 per parallel job."""
    return max(1, min(classes, 4 * parallelism))


def default_val_shards(val_bytes: int, train_bytes: int, train_shards: int, images: int) -> int:
    """Val shards of about the size of a train shard."""
    if not train_bytes:
        return max(1, min(images, 4))
    per_shard = train_bytes / max(train_shards, 1)
    return max(1, min(images, math.ceil(val_bytes / per_shard)))


def shard_id(kind: str, i: int, n: int) -> str:
    return f"{kind}-{i:04d}-of-{n:04d}"
