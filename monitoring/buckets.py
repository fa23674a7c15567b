"""Fixed logarithmic buckets for latency and time to first token, in milliseconds.

Eighteen buckets per doubling from 0.1 ms up to about 28 minutes: a bucket's upper edge is
2^(1/18) = 1.039 times its lower edge, so its geometric middle is within 1.94% of every
value in it, and a percentile read from merged bucket counts is within 1.94% of the exact
one. Bucket 0 holds everything under 0.1 ms, the last one everything over the top."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

PER_DOUBLING = 18
FLOOR_MS = 0.1
DOUBLINGS = 24
TOP = PER_DOUBLING * DOUBLINGS + 1  # the overflow bucket
_SCALE = PER_DOUBLING / math.log(2)
_LOG_FLOOR = math.log(FLOOR_MS)


def bucket_of(ms: float) -> int:
    if ms < FLOOR_MS:
        return 0
    return min(TOP, int((math.log(ms) - _LOG_FLOOR) * _SCALE) + 1)


def bucket_lower_ms(bucket: int) -> float:
    if bucket <= 0:
        return 0.0
    return FLOOR_MS * 2 ** ((bucket - 1) / PER_DOUBLING)


def bucket_value_ms(bucket: int) -> float:
    """The value a bucket stands for: its geometric middle (half of the floor for bucket 0,
    the lower edge for the overflow bucket)."""
    if bucket <= 0:
        return FLOOR_MS / 2
    if bucket >= TOP:
        return bucket_lower_ms(TOP)
    return FLOOR_MS * 2 ** ((bucket - 0.5) / PER_DOUBLING)


def _ranked(buckets: Sequence[int], counts: Iterable[int], shares: list[float]) -> list[float | None]:
    # Buckets in ascending order (repeats allowed), each with its count.
    running = list(accumulate(counts))
    total = running[-1] if running else 0
    if total <= 0:
        return [None] * len(shares)
    # The first bucket whose running count reaches the rank.
    return [bucket_value_ms(buckets[bisect_left(running, max(1, math.ceil(share * total)))]) for share in shares]


def percentiles(counts: Mapping[int, int], shares: Iterable[float]) -> list[float | None]:
    """Nearest-rank percentiles of the values counted in `counts` (bucket -> count), one per
    share (0.95 for p95); None for each when nothing was counted."""
    ordered = sorted(item for item in counts.items() if item[1] > 0)
    return _ranked([b for b, _ in ordered], [n for _, n in ordered], list(shares))


class BucketCounts:
    """Bucket counts as a read gives them: a list of buckets and a list of their counts per
    part (a block of rollups, a series), added in any order. A percentile reads them as they
    are when they came in ascending order (one part, read in index order), else from their
    sums per bucket (a week of hourly points is 70,000 counts: a dict per point, added to
    count by count, cost more than the database's read)."""

    __slots__ = ("buckets", "counts")

    def __init__(self) -> None:
        self.buckets: list[int] = []
        self.counts: list[int] = []

    def add(self, buckets: list[int], counts: list[int]) -> None:
        self.buckets += buckets
        self.counts += counts

    def percentiles(self, shares: Iterable[float]) -> list[float | None]:
        buckets, counts = self.buckets, self.counts
        if sorted(buckets) == buckets:  # linear, in C
            return _ranked(buckets, counts, list(shares))
        dense = [0] * (TOP + 1)
        for bucket, n in zip(buckets, counts, strict=True):
            dense[bucket] += n
        return _ranked(range(TOP + 1), dense, list(shares))
