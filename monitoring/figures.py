"""Reads of the rollups: a window's summary, its time series and its per-model table, with
the same filters and the same arithmetic everywhere (the cache's hit rate included)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import add
from typing import Any

from django.db import connection, transaction
from django.db.models import Q

from monitoring.buckets import BucketCounts
from monitoring.models import MetricRollup, MetricSeries
from monitoring.rollups import COST_UNITS, CUBES, SUMS
from monitoring.windows import Block, Window, window_blocks, window_step

FILTERS = ("model", "route", "prompt", "provider", "api_key")  # what callers may narrow by
LOOKED_UP = ("hit", "semantic_hit", "miss")  # cache results that were lookups (not bypass)
CENT_MILLIONTHS = Decimal("0.0000000001")
READ_WORK_MEM = "64MB"  # PostgreSQL's memory for one read's hash aggregates


@dataclass(slots=True)
class Tally:
    """What a set of rollups add up to."""

    totals: list[int] = field(default_factory=lambda: [0] * len(SUMS))  # SUMS over every request
    ok_totals: list[int] = field(default_factory=lambda: [0] * len(SUMS))  # over the successful ones
    statuses: Counter = field(default_factory=Counter)
    error_types: Counter = field(default_factory=Counter)
    cache: Counter = field(default_factory=Counter)  # successful requests by cache result
    latency: BucketCounts = field(default_factory=BucketCounts)  # of successful requests
    ttft: BucketCounts = field(default_factory=BucketCounts)

    def add(self, status: str, error_type: str, cache_status: str, values: Sequence[int]) -> None:
        """Add one row of sums (in the order of SUMS)."""
        self.totals = list(map(add, self.totals, values))
        requests = values[0]
        self.statuses[status] += requests
        if status == "ok":
            self.ok_totals = list(map(add, self.ok_totals, values))
            self.cache[cache_status] += requests
        elif status == "error":
            self.error_types[error_type or "unknown"] += requests

    @property
    def sums(self) -> dict[str, int]:
        return dict(zip(SUMS, self.totals, strict=True))

    @property
    def ok_sums(self) -> dict[str, int]:
        return dict(zip(SUMS, self.ok_totals, strict=True))


@dataclass(frozen=True, slots=True)
class Scope:
    """What a read is narrowed to: `filters` holds validated values for FILTERS (api_key as
    an id); `api_key_id`, the calling key's own id, narrows every read."""

    filters: dict[str, Any]
    api_key_id: int | None = None

    def series(self, group: str | None = None) -> Q:
        """The series to read (a Q over MetricSeries): those of the smallest cube keeping
        every dimension the read narrows or groups by (cube 0 keeps them all)."""
        query = Q()
        used = set()
        for name, value in self.filters.items():
            column = "api_key_id" if name == "api_key" else name
            query &= Q(**{column: value})
            used.add(column)
        if self.api_key_id is not None:
            query &= Q(api_key_id=self.api_key_id)
            used.add("api_key_id")
        if group and group != "start":
            used.add(group)
        cube = min((c for c, kept in CUBES.items() if used <= set(kept)), key=lambda c: len(CUBES[c]), default=0)
        return query & Q(cube=cube)


def series_filter(filters: dict[str, Any], *, api_key_id: int | None) -> Scope:
    return Scope(dict(filters), api_key_id)


def _listed(value: list[int] | str) -> list[int]:
    return value if isinstance(value, list) else json.loads(value)


def _blocks(window: Window, *, step: int | None = None) -> list[Block]:
    """The rollups a window adds up: (resolution, first start, end) ranges, each read on its
    own as a range of the series-first indexes."""
    if step is not None:
        first = window.start.timestamp()
        return [(step, datetime.fromtimestamp(first - first % step, window.start.tzinfo), window.end)]
    return window_blocks(window)


@contextmanager
def reading() -> Iterator[None]:
    """Reads of many rollup rows on PostgreSQL, for this transaction only: no JIT (compiling
    costs more than these aggregates take); their groups hashed in memory rather than sorted;
    and index ranges priced as what they are, reads of a few pages each (random_page_cost
    1.1, as for SSDs: at the default 4 the planner chose to scan whole tables for a week of
    days, 10x slower)."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        # Inside a transaction of the caller's, SET LOCAL would outlast the read: plain then.
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"SET LOCAL jit = off; SET LOCAL work_mem = '{READ_WORK_MEM}'; "
                "SET LOCAL enable_sort = off; SET LOCAL random_page_cost = 1.1"
            )
        yield


MAX_LISTED = 500  # series ids written into a read; more are selected by a subquery


def _grouped(
    keys: tuple[str, ...], columns: list[str], blocks: list[Block], ids: list[int], chosen: Q, *, group: bool = True
) -> list[tuple]:
    """For each block, the rollups of the chosen series grouped by `keys` (column names;
    "start" comes back as epoch seconds), `columns` of each group (or, not grouped, of each
    row): one UNION ALL. Written out rather than built by the ORM: grouped, the start is
    grouped as a timestamp and turned into seconds per group, not per row (PostgreSQL's
    EXTRACT is a numeric), and rows arrive as plain tuples, without Django's per-value
    converters."""
    quote = connection.ops.quote_name
    postgres = connection.vendor == "postgresql"
    grouped = [quote(key) for key in keys]
    at = keys.index("start") if "start" in keys else None
    if at is not None and not postgres:
        grouped[at] = f"CAST(strftime('%%s', {quote('start')}) AS INTEGER)"
    selected = ", ".join(f"{column} AS c{n}" for n, column in enumerate([*grouped, *columns]))
    grouping = f" GROUP BY {', '.join(grouped)}" if group else ""
    if len(ids) <= MAX_LISTED:
        within, within_params = ", ".join(["%s"] * len(ids)), list(ids)
    else:
        within, within_params = MetricSeries.objects.filter(chosen).values("id").query.sql_with_params()
    one = (
        f"SELECT {selected} FROM {quote(MetricRollup._meta.db_table)} WHERE {quote('series_id')} IN ({within}) "
        f"AND {quote('resolution')} = %s AND {quote('start')} >= %s AND {quote('start')} < %s{grouping}"
    )
    sql = " UNION ALL ".join([one] * len(blocks))
    adapt = connection.ops.adapt_datetimefield_value
    params = [p for size, first, last in blocks for p in (*within_params, size, adapt(first), adapt(last))]
    if at is not None and postgres:
        outer = [f"c{n}" for n in range(len(grouped) + len(columns))]
        outer[at] = f"EXTRACT(EPOCH FROM c{at})::bigint"
        sql = f"SELECT {', '.join(outer)} FROM ({sql}) AS grouped"
    return _fetched(sql, params)


def _fetched(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def tallies(
    window: Window, where: Scope | Q, *, group: str | None = None, step: int | None = None, histograms: bool = True
) -> dict[Any, Tally]:
    """One Tally per value of `group` (a series field, or "start" with a step: then keyed by
    epoch seconds) over the window, with its latency and TTFT histograms unless `histograms`
    is false (a read of counts alone). A plain Q selects series of cube 0.

    The series are read first, then their rollups by series id: ranges of the series-first
    indexes, with no join, grouped by series (or time) only."""
    chosen = where.series(group) if isinstance(where, Scope) else where & Q(cube=0)
    by_time = group == "start"
    named = [] if by_time or group is None else [group]
    series = {
        row[0]: row[1:]
        for row in MetricSeries.objects.filter(chosen).values_list("id", "status", "error_type", "cache_status", *named)
    }
    found: dict[Any, Tally] = defaultdict(Tally)
    if not series:
        return found
    answered = [id_ for id_, (status, *_) in series.items() if status == "ok"]
    blocks = _blocks(window, step=step)
    with reading():
        quote = connection.ops.quote_name
        # PostgreSQL sums bigints as numeric: cast back, to read ints.
        sums = [f"CAST(SUM({quote(name)}) AS BIGINT)" for name in SUMS]
        keys = ("start", "series_id") if by_time else ("series_id",)
        for row in _grouped(keys, sums, blocks, list(series), chosen):
            if by_time:
                tally, values = found[row[0]], row[2:]
                status, error_type, cache_status = series[row[1]]
            else:
                status, error_type, cache_status, *key = series[row[0]]
                tally, values = found[key[0] if key else None], row[1:]
            tally.add(status, error_type, cache_status, values)
        if not answered or not histograms:
            return found
        # The rows' packed histograms, a few hundred for a week of hourly points, a few
        # thousand for a week's table of models: added up when a percentile is read.
        ok = chosen & Q(status="ok")
        keys = ("start",) if by_time else ("series_id",) if named else ()
        packed = [quote("latency"), quote("ttft")]
        for *key, latency, ttft in _grouped(keys, packed, blocks, answered, ok, group=False):
            tally = found[key[0] if by_time else series[key[0]][3] if named else None]
            if latency:
                tally.latency.add(_listed(latency))
            if ttft:
                tally.ttft.add(_listed(ttft))
    return found


def _dollars(units: int) -> str:
    return format((Decimal(units) / COST_UNITS).quantize(CENT_MILLIONTHS), "f")


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _ms(values: Iterable[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 2) for v in values]


def cache_figures(tally: Tally) -> dict[str, Any]:
    """Hit rates over successful requests that looked the cache up (bypasses excluded)."""
    hits, semantic, misses = (tally.cache[name] for name in LOOKED_UP)
    looked_up = hits + semantic + misses
    return {
        "hits": hits,
        "semantic_hits": semantic,
        "misses": misses,
        "bypassed": tally.cache["bypass"],
        "hit_rate": round((hits + semantic) / looked_up, 4) if looked_up else 0.0,
        "exact_hit_rate": round(hits / looked_up, 4) if looked_up else 0.0,
        "semantic_hit_rate": round(semantic / looked_up, 4) if looked_up else 0.0,
        "saved_usd": _dollars(tally.ok_sums["saved"]),
    }


def figures(tally: Tally, *, seconds: float | None = None) -> dict[str, Any]:
    sums, ok = tally.sums, tally.ok_sums
    requests, scored = sums["requests"], sums["quality_count"]
    p50, p95, p99 = _ms(tally.latency.percentiles((0.5, 0.95, 0.99)))
    t50, t95 = _ms(tally.ttft.percentiles((0.5, 0.95)))
    found: dict[str, Any] = {"requests": requests}
    if seconds is not None:
        found["requests_per_s"] = round(requests / seconds, 4) if seconds else 0.0
    found.update(
        {
            "ok": tally.statuses["ok"],
            "errors": tally.statuses["error"],
            "cancelled": tally.statuses["cancelled"],
            "error_rate": _ratio(tally.statuses["error"], requests),
            "errors_by_type": dict(tally.error_types.most_common()),
            "latency_ms": {
                "p50": p50,
                "p95": p95,
                "p99": p99,
                "mean": round(ok["latency_us"] / ok["requests"] / 1000, 2) if ok["requests"] else None,
            },
            "ttft_ms": {
                "p50": t50,
                "p95": t95,
                "mean": round(ok["ttft_us"] / ok["ttft_count"] / 1000, 2) if ok["ttft_count"] else None,
                "streams": ok["ttft_count"],
            },
            "tokens": {"input": sums["input_tokens"], "output": sums["output_tokens"], "cached": sums["cached_tokens"]},
            "cost_usd": _dollars(sums["cost"]),
            "cost_per_1k_requests_usd": _dollars(round(sums["cost"] * 1000 / requests)) if requests else None,
            "cache": cache_figures(tally),
            "quality": {
                "scored": scored,
                "mean": round(sums["quality_micros"] / scored / 1e6, 4) if scored else None,
                "cascades": sums["cascades"],
                "escalation_rate": _ratio(sums["escalations"], sums["cascades"]),
            },
        }
    )
    return found


def metrics_summary(*, window: Window, where: Scope | Q) -> dict[str, Any]:
    tally = tallies(window, where).get(None, Tally())
    return figures(tally, seconds=window.seconds)


def metrics_models(*, window: Window, where: Scope | Q) -> list[dict[str, Any]]:
    """One row per model named, busiest first."""
    rows = [
        {"model": model, **figures(tally, seconds=window.seconds)}
        for model, tally in tallies(window, where, group="model").items()
    ]
    rows.sort(key=lambda row: (-row["requests"], row["model"]))
    return rows


def metrics_timeseries(*, window: Window, where: Scope | Q, step: int | None = None) -> dict[str, Any]:
    """One point per step (a whole minute, hour or day), empty steps included. Points are
    whole steps, so the series covers from the start of the step the window starts in
    (`covers`); each point's rate is over the seconds of it that have passed."""
    step = step or window_step(window)
    found = tallies(window, where, group="start", step=step)
    first = int(window.start.timestamp())
    first -= first % step
    last = int(window.end.timestamp())
    points = []
    by_start = found
    for at in range(first, last, step):
        point = figures(by_start.get(at, Tally()), seconds=min(step, last - at))
        point["start"] = datetime.fromtimestamp(at, window.start.tzinfo).isoformat()
        points.append(point)
    covers = {"start": datetime.fromtimestamp(first, window.start.tzinfo).isoformat(), "end": window.end.isoformat()}
    return {"step_s": step, "covers": covers, "points": points}
