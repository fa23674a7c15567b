"""Fixed logarithmic buckets for latency and time to first token, in milliseconds.

Eighteen buckets per doubling from 0.1 ms up to about 28 minutes: a bucket's upper edge is
2^(1/18) = 1.039 times its lower edge, so its geometric middle is within 1.94% of every
value in it, and a percentile read from merged bucket counts is within 1.94% of the exact
one. Bucket 0 holds everything under 0.1 ms, the last one everything over the top."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
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


def percentiles(counts: Mapping[int, int], shares: Iterable[float]) -> list[float | None]:
    """Nearest-rank percentiles of the values counted in `counts` (bucket -> count), one per
    share (0.95 for p95); None for each when nothing was counted."""
    shares = list(shares)
    total = sum(counts.values())
    if total <= 0:
        return [None] * len(shares)
    ordered = sorted(item for item in counts.items() if item[1] > 0)
    running = list(accumulate(n for _, n in ordered))
    # The first bucket whose running count reaches the rank.
    return [bucket_value_ms(ordered[bisect_left(running, max(1, math.ceil(share * total)))][0]) for share in shares]
