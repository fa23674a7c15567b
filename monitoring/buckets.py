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


# A histogram is stored packed: one flat list [bucket, count, bucket, count, ...] in ascending
# bucket order, buckets with no count left out (a rollup row's latency and ttft columns;
# None for none). Rows add up by merging their lists (packed_add, and the same in SQL).


def packed(counts: Mapping[int, int]) -> list[int] | None:
    """`counts` (bucket -> count) packed, or None when nothing was counted."""
    found = [value for item in sorted(counts.items()) if item[1] for value in item]
    return found or None


def packed_text(packed_counts: Sequence[int] | None) -> str | None:
    """A packed histogram as the JSON array SQLite keeps it in (written out: json.dumps costs
    several times as much for a list of integers)."""
    return None if packed_counts is None else "[" + ",".join(map(str, packed_counts)) + "]"


def unpacked(packed_counts: Sequence[int] | None) -> dict[int, int]:
    if not packed_counts:
        return {}
    return dict(zip(packed_counts[::2], packed_counts[1::2], strict=True))


def packed_add(one: Sequence[int] | None, other: Sequence[int] | None) -> list[int] | None:
    """Two packed histograms added up, packed: each pair of the shorter found in the longer
    by binary search and added to it, or put in its place (an upsert usually adds a few
    buckets to a few dozen)."""
    if not one or not other:
        return list(one or other or ()) or None
    found, fewer = (list(one), other) if len(one) >= len(other) else (list(other), one)
    buckets = found[::2]
    for bucket, n in zip(fewer[::2], fewer[1::2], strict=True):
        at = bisect_left(buckets, bucket)
        if at < len(buckets) and buckets[at] == bucket:
            found[2 * at + 1] += n
        else:
            buckets.insert(at, bucket)
            found[2 * at : 2 * at] = (bucket, n)
    return found


# PostgreSQL's packed_add, for the rollups' upsert (created by migration 0012; the SQLite
# connection gets packed_add itself, monitoring.apps).
PACKED_ADD = "llmops_packed_add"
# Each pair of the shorter list is found in the longer by binary search and added to it, or
# put in its place: a row's upsert usually adds a few buckets to a few dozen (3 us a call;
# a merge in plain SQL, unnesting both and grouping, took 58).
PACKED_ADD_SQL = f"""
CREATE OR REPLACE FUNCTION {PACKED_ADD}(one bigint[], other bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  merged bigint[]; fewer bigint[]; pairs int; low int; high int; middle int; bucket bigint;
BEGIN
  IF one IS NULL THEN RETURN other; END IF;
  IF other IS NULL THEN RETURN one; END IF;
  IF cardinality(one) >= cardinality(other) THEN merged := one; fewer := other;
  ELSE merged := other; fewer := one; END IF;
  FOR j IN 1 .. cardinality(fewer) BY 2 LOOP
    bucket := fewer[j];
    pairs := cardinality(merged) / 2;
    low := 0; high := pairs;  -- the first pair whose bucket is not below this one
    WHILE low < high LOOP
      middle := (low + high) / 2;
      IF merged[2 * middle + 1] < bucket THEN low := middle + 1; ELSE high := middle; END IF;
    END LOOP;
    IF low < pairs AND merged[2 * low + 1] = bucket THEN
      merged[2 * low + 2] := merged[2 * low + 2] + fewer[j + 1];
    ELSE
      merged := merged[1:2 * low] || fewer[j:j + 1] || merged[2 * low + 1:];
    END IF;
  END LOOP;
  RETURN merged;
END $$"""


class BucketCounts:
    """The packed histograms a read gives (rollup rows'), added in any order. A percentile
    reads the one histogram as it is when there is one (a point of a time series read from
    one series), else the sums per bucket of them all."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[Sequence[int]] = []

    def add(self, packed_counts: Sequence[int] | None) -> None:
        if packed_counts:
            self.parts.append(packed_counts)

    def percentiles(self, shares: Iterable[float]) -> list[float | None]:
        parts = self.parts
        if not parts:
            return [None for _ in shares]
        if len(parts) == 1:
            return _ranked(parts[0][::2], parts[0][1::2], list(shares))
        dense = [0] * (TOP + 1)
        for part in parts:
            for bucket, n in zip(part[::2], part[1::2], strict=True):
                dense[bucket] += n
        return _ranked(range(TOP + 1), dense, list(shares))
