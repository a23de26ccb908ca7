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


MAX_SHARD_BYTES = 2 << 30  # a shard reads at most about this much, whatever the parallelism
MIN_SHARD_BYTES = 64 << 20  # where each job costs start-up (SLURM), shards are at least this big


def shard_count(total_bytes: int, wanted: int, items: int, min_bytes: int) -> int:
    """`wanted` shards, fewer if they would be under `min_bytes`, more if over MAX_SHARD_BYTES."""
    if min_bytes:
        wanted = min(wanted, math.ceil(total_bytes / min_bytes))
    return max(1, min(items, max(wanted, math.ceil(total_bytes / MAX_SHARD_BYTES))))


def default_train_shards(classes: int, total_bytes: int, parallelism: int, min_bytes: int = 0) -> int:
    """4 shards per parallel job: balance, and little lost to a crash."""
    return shard_count(total_bytes, 4 * parallelism, classes, min_bytes)


def default_val_shards(images: int, total_bytes: int, parallelism: int, min_bytes: int = 0) -> int:
    """One shard per parallel job."""
    return shard_count(total_bytes, parallelism, images, min_bytes)


def shard_id(kind: str, i: int, n: int) -> str:
    return f"{kind}-{i:04d}-of-{n:04d}"
