"""Reads of the rollups: a window's summary, its time series and its per-model table, with
the same filters and the same arithmetic everywhere (the cache's hit rate included)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import BigIntegerField, Func, Q, QuerySet, Sum
from django.db.models.functions import Cast

from monitoring.buckets import percentiles
from monitoring.models import MetricHistogram, MetricRollup
from monitoring.rollups import COST_UNITS, CUBES, LATENCY, SUMS
from monitoring.windows import Window, window_blocks, window_step

FILTERS = ("model", "route", "prompt", "provider", "api_key")  # what callers may narrow by
LOOKED_UP = ("hit", "semantic_hit", "miss")  # cache results that were lookups (not bypass)
CENT_MILLIONTHS = Decimal("0.0000000001")
READ_WORK_MEM = "64MB"  # PostgreSQL's memory for one read's hash aggregates


def _summed(name: str) -> Cast:
    # PostgreSQL sums bigints as numeric, which arrives as Decimal: cast back, to read ints.
    return Cast(Sum(name), BigIntegerField())


SUMMED = {f"{name}_total": _summed(name) for name in SUMS}


@dataclass(slots=True)
class Tally:
    """What a set of rollups add up to."""

    sums: Counter = field(default_factory=Counter)  # SUMS over every request
    ok_sums: Counter = field(default_factory=Counter)  # SUMS over the successful ones
    statuses: Counter = field(default_factory=Counter)
    error_types: Counter = field(default_factory=Counter)
    cache: Counter = field(default_factory=Counter)  # successful requests by cache result
    latency: Counter = field(default_factory=Counter)  # bucket -> successful requests
    ttft: Counter = field(default_factory=Counter)

    def add(self, status: str, error_type: str, cache_status: str, values: Sequence[int | None]) -> None:
        """Add one row of sums (in the order of SUMS)."""
        sums = {name: value or 0 for name, value in zip(SUMS, values, strict=True)}
        self.sums.update(sums)
        self.statuses[status] += sums["requests"]
        if status == "ok":
            self.ok_sums.update(sums)
            self.cache[cache_status] += sums["requests"]
        elif status == "error":
            self.error_types[error_type or "unknown"] += sums["requests"]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a read is narrowed to: `filters` holds validated values for FILTERS (api_key as
    an id); `api_key_id`, the calling key's own id, narrows every read."""

    filters: dict[str, Any]
    api_key_id: int | None = None

    def where(self, group: str | None = None) -> Q:
        """The series to read: those of the smallest cube keeping every dimension the read
        narrows or groups by (cube 0 keeps them all)."""
        query = Q()
        used = set()
        for name, value in self.filters.items():
            column = "api_key_id" if name == "api_key" else name
            query &= Q(**{f"series__{column}": value})
            used.add(column)
        if self.api_key_id is not None:
            query &= Q(series__api_key_id=self.api_key_id)
            used.add("api_key_id")
        if group and group.startswith("series__"):
            used.add(group.removeprefix("series__"))
        cube = min((c for c, kept in CUBES.items() if used <= set(kept)), key=lambda c: len(CUBES[c]), default=0)
        return query & Q(series__cube=cube)


def series_filter(filters: dict[str, Any], *, api_key_id: int | None) -> Scope:
    return Scope(dict(filters), api_key_id)


class Epoch(Func):
    """A rollup's start as whole seconds since 1970: grouping and reading integers is cheaper
    than timestamps on both databases (a day's time series groups thousands of rows)."""

    output_field = BigIntegerField()

    def as_sql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, template="CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)")

    def as_postgresql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::bigint")


def _blocks(window: Window, *, step: int | None = None) -> list[Q]:
    """The rollups a window adds up, one Q per resolution and range (each read on its own, as
    a range of the series-first index, rather than one OR the planner cannot range over)."""
    if step is not None:
        first = window.start.timestamp()
        first_aligned = datetime.fromtimestamp(first - first % step, window.start.tzinfo)
        return [Q(resolution=step, start__gte=first_aligned, start__lt=window.end)]
    return [Q(resolution=size, start__gte=first, start__lt=last) for size, first, last in window_blocks(window)]


@contextmanager
def reading() -> Iterator[None]:
    """Reads of many rollup rows on PostgreSQL, for this transaction only: no JIT (compiling
    costs more than these aggregates take); their groups hashed in memory rather than sorted
    (the planner expects a few thousand rows where a week of histograms joins a hundred
    thousand, and a sort of those takes twice as long); and index ranges priced as what they
    are, reads of a few pages each (random_page_cost 1.1, as for SSDs: at the default 4 the
    planner scanned a whole histogram table for a week of days, 10x slower)."""
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


def _rows(queries: list[QuerySet]) -> list[tuple]:
    """The rows of values_list queries of the same columns, in one statement (UNION ALL), as
    the database gives them: tens of thousands of tuples of ints and short strings, which
    Django's per-value converters would add up to a third of the read to (the sums are cast
    to bigint in SQL, so they arrive as ints)."""
    parts = [query.query.sql_with_params() for query in queries]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(sql for sql, _ in parts), [p for _, params in parts for p in params])
        return cursor.fetchall()


def tallies(window: Window, where: Scope | Q, *, group: str | None = None, step: int | None = None) -> dict[Any, Tally]:
    """One Tally per value of `group` (a series field, or "start" with a step: then keyed by
    epoch seconds) over the window. A plain Q reads the series of cube 0 it selects."""
    selected = where.where(group) if isinstance(where, Scope) else where & Q(series__cube=0)
    keys = [group] if group else []
    annotations: dict[str, Any] = {}
    if group == "start":
        keys, annotations = ["at"], {"at": Epoch("start")}
    found: dict[Any, Tally] = defaultdict(Tally)
    blocks = _blocks(window, step=step)
    width = len(keys)
    with reading():
        rows = [
            MetricRollup.objects.filter(block & selected)
            .annotate(**annotations)
            .values_list(*keys, "series__status", "series__error_type", "series__cache_status")
            .annotate(**SUMMED)
            .order_by()
            for block in blocks
        ]
        for row in _rows(rows):
            found[row[0] if width else None].add(row[width], row[width + 1], row[width + 2], row[width + 3 :])
        buckets = [
            MetricHistogram.objects.filter(block & selected & Q(series__status="ok"))
            .annotate(**annotations)
            .values_list(*keys, "metric", "bucket")
            .annotate(n=_summed("count"))
            .order_by()
            for block in blocks
        ]
        for row in _rows(buckets):
            *key, metric, bucket, n = row
            tally = found[key[0] if key else None]
            counts = tally.latency if metric == LATENCY else tally.ttft
            counts[bucket] = counts.get(bucket, 0) + n  # not +=: Counter's __missing__ is Python
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
    p50, p95, p99 = _ms(percentiles(tally.latency, (0.5, 0.95, 0.99)))
    t50, t95 = _ms(percentiles(tally.ttft, (0.5, 0.95)))
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
        for model, tally in tallies(window, where, group="series__model").items()
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
