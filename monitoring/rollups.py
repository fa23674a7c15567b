"""Rollups: the metric writer adds every batch of rows it writes to per-minute, per-hour and
per-day sums and latency histograms (MetricRollup), in the same transaction, so that any
window's figures are read from a few thousand rows whatever the traffic.

Each write is one upsert that adds to what is there (`ON CONFLICT ... DO UPDATE SET n = n +
excluded.n`, and the packed histograms merged by llmops_packed_add: on PostgreSQL one
statement of unnested arrays, on SQLite one prepared statement run for every row), so
several writers (server processes, Celery workers) add to the same rows safely."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.db import connection

from monitoring.buckets import PACKED_ADD, bucket_of, packed, packed_text
from monitoring.models import SERIES_DIMENSIONS, MetricRollup, MetricSeries, QueryMetric

RESOLUTIONS = tuple(MetricRollup.Resolution.values)  # 60, 3600, 86400
COST_UNITS = Decimal("1e10")  # rollup costs are integers of 1e-10 dollars
SUMS = (
    "requests",
    "latency_us",
    "ttft_count",
    "ttft_us",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "saved",
    "quality_count",
    "quality_micros",
    "cascades",
    "escalations",
)
HISTOGRAMS = ("latency", "ttft")  # packed, merged rather than added
UNRESOLVED = "(unknown)"


# A row left out of a field gets the column's default when written: its series must too.
_DEFAULTS = {
    name: QueryMetric._meta.get_field(name).get_default() for name in SERIES_DIMENSIONS if name != "api_key_id"
}


def series_key(row: dict[str, Any]) -> tuple:
    get = row.get
    return (
        get("api_key_id") or 0,
        get("endpoint", _DEFAULTS["endpoint"]),
        # A name nothing resolved (no provider, no route) is anyone's text: one series for all.
        get("model", _DEFAULTS["model"]) if get("provider") or get("route") else UNRESOLVED,
        get("option", _DEFAULTS["option"]),
        get("route", _DEFAULTS["route"]),
        get("prompt", _DEFAULTS["prompt"]),
        get("provider", _DEFAULTS["provider"]),
        bool(get("stream", _DEFAULTS["stream"])),
        get("status", _DEFAULTS["status"]),
        get("error_type", _DEFAULTS["error_type"]),
        get("cache_status", _DEFAULTS["cache_status"]),
    )


# The cubes besides 0 (every dimension): the dimensions each keeps, with status, error type
# and cache result, which every read groups by. A read narrowed (or grouped) by no more than
# a cube's dimensions reads that cube (monitoring.figures).
# A route names its models, so (model, route) has hardly more series than the model alone and
# serves both reads by model and the regression checks (per model and route).
CUBES: dict[int, tuple[str, ...]] = {
    1: (),
    2: ("model", "route"),
    3: ("api_key_id",),
    4: ("api_key_id", "model"),
}
ALWAYS = ("status", "error_type", "cache_status")
_POSITION = {name: index for index, name in enumerate(SERIES_DIMENSIONS)}
_BLANK = tuple(0 if name == "api_key_id" else (False if name == "stream" else "") for name in SERIES_DIMENSIONS)
_KEPT = {cube: {_POSITION[name] for name in (*names, *ALWAYS)} for cube, names in CUBES.items()}


@lru_cache(maxsize=8192)  # about 10 MB at most
def cube_keys(key: tuple) -> tuple[tuple, ...]:
    """The series a row of series `key` adds to: its own (cube 0) and one in each cube.
    Remembered: a gateway's series recur minute after minute."""
    found = [(0, *key)]
    for cube, kept in _KEPT.items():
        found.append((cube, *(value if index in kept else _BLANK[index] for index, value in enumerate(key))))
    return tuple(found)


def series_ids(keys: Iterable[tuple]) -> dict[tuple, int]:
    """The id of each series, created where missing. Looked up on every write rather than
    remembered: a series deleted meanwhile (a test's flush, a cleanup) cannot be pointed at."""
    wanted = set(keys)
    found: dict[tuple, int] = {}
    # The two databases the project runs on (settings configures no other).
    lookup = _series_arrays if connection.vendor == "postgresql" else _series_json_each
    lookup(wanted, found)
    missing = wanted - found.keys()
    if missing:
        # Sorted: two writers creating the same series lock them in the same order.
        names = MetricSeries.DIMENSIONS
        MetricSeries.objects.bulk_create(
            [MetricSeries(**dict(zip(names, key, strict=True))) for key in sorted(missing)], ignore_conflicts=True
        )
        lookup(missing, found)
    return found


def _series_json_each(keys: set[tuple], found: dict[tuple, int]) -> None:
    """SQLite: every key in one statement, sent as one JSON array of arrays and joined against
    the series' unique index (an OR of a hundred keys costs Django milliseconds to compile)."""
    if not keys:
        return
    quote = connection.ops.quote_name
    columns = [quote(MetricSeries._meta.get_field(name).column) for name in MetricSeries.DIMENSIONS]
    on = " AND ".join(f"s.{column} = json_extract(k.value, '$[{index}]')" for index, column in enumerate(columns))
    sql = (
        f"SELECT s.id, {', '.join(f's.{c}' for c in columns)} FROM json_each(%s) AS k "
        f"CROSS JOIN {quote(MetricSeries._meta.db_table)} s ON {on}"
    )
    stream = MetricSeries.DIMENSIONS.index("stream")
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps(list(keys))])
        for row in cursor.fetchall():
            key = list(row[1:])
            key[stream] = bool(key[stream])  # SQLite gives 0 or 1
            found[tuple(key)] = row[0]


def _series_arrays(keys: set[tuple], found: dict[tuple, int]) -> None:
    """PostgreSQL: every key in one statement, sent as one JSON parameter (encoded in C, not
    adapted value by value) and joined against the series' unique index."""
    if not keys:
        return
    quote = connection.ops.quote_name
    fields = [MetricSeries._meta.get_field(name) for name in MetricSeries.DIMENSIONS]
    columns = [quote(f.column) for f in fields]
    kinds = ", ".join(f"{column} {f.db_type(connection)}" for column, f in zip(columns, fields, strict=True))
    sql = (
        f"SELECT s.id, {', '.join(f's.{c}' for c in columns)} FROM {quote(MetricSeries._meta.db_table)} s "
        f"JOIN json_to_recordset(%s::json) AS k({kinds}) ON {' AND '.join(f's.{c} = k.{c}' for c in columns)}"
    )
    names = [f.column for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps([dict(zip(names, key, strict=True)) for key in keys])])
        for row in cursor.fetchall():
            found[tuple(row[1:])] = row[0]


def _values(row: dict[str, Any]) -> tuple[int, ...]:
    latency = row.get("latency_ms")
    ttft = row.get("ttft_ms")
    quality = row.get("quality_score")
    steps = row.get("cascade_steps") or 0
    return (
        1,
        round((latency or 0.0) * 1000),
        1 if ttft is not None else 0,
        round((ttft or 0.0) * 1000),
        row.get("input_tokens", 0),
        row.get("output_tokens", 0),
        row.get("cached_tokens", 0),
        int(Decimal(row.get("cost_usd") or 0) * COST_UNITS),
        int(Decimal(row.get("cost_saved_usd") or 0) * COST_UNITS),
        1 if quality is not None else 0,
        round((quality or 0.0) * 1_000_000),
        1 if steps else 0,
        1 if steps > 1 else 0,
    )


class _Made:
    """A rollup row being made: its sums and its latency and TTFT counts (bucket -> requests).
    One made from another shares the other's until something is added to it, then copies
    them once (`own`): where a batch holds one minute of a series, the minute, its cubes,
    hours and days are all that minute's, never copied."""

    __slots__ = ("latency", "own", "sums", "ttft")

    def __init__(self, sums: list[int], latency: Counter, ttft: Counter, *, own: bool) -> None:
        self.sums, self.latency, self.ttft, self.own = sums, latency, ttft, own

    def shared(self) -> _Made:
        return _Made(self.sums, self.latency, self.ttft, own=False)

    def add(self, other: _Made) -> None:
        if not self.own:
            self.sums, self.latency, self.ttft = list(self.sums), Counter(self.latency), Counter(self.ttft)
            self.own = True
        sums = self.sums
        for index, value in enumerate(other.sums):
            sums[index] += value
        self.latency.update(other.latency)
        self.ttft.update(other.ttft)


def _added(into: dict[Any, _Made], at: Any, made: _Made) -> None:
    have = into.get(at)
    if have is None:
        into[at] = made.shared()
    else:
        have.add(made)


def rollups_add(rows: Sequence[dict[str, Any]]) -> None:
    """Add written metric rows (the fields of QueryMetric) to the rollups of their minute,
    hour and day, in every cube."""
    if not rows:
        return
    # First each series' minutes, then those added up into cubes, hours and days: the work
    # past this loop is per series and minute, not per row.
    minutes: dict[tuple[tuple, int], _Made] = {}
    for row in rows:
        at = int(row["created_at"].timestamp())
        key = (series_key(row), at - at % 60)
        values = _values(row)
        made = minutes.get(key)
        if made is None:
            made = minutes[key] = _Made(list(values), Counter(), Counter(), own=True)
        else:
            sums = made.sums
            for index, value in enumerate(values):
                sums[index] += value
        latency, ttft = row.get("latency_ms"), row.get("ttft_ms")
        if latency is not None:
            made.latency[bucket_of(latency)] += 1
        if ttft is not None:
            made.ttft[bucket_of(ttft)] += 1
    cube_minutes: dict[tuple[tuple, int], _Made] = {}
    for (key, minute), made in minutes.items():
        for cube in cube_keys(key):
            _added(cube_minutes, (cube, minute), made)
    found: dict[tuple[int, int, tuple], _Made] = {}
    for (cube, minute), made in cube_minutes.items():
        for resolution in RESOLUTIONS:
            _added(found, (resolution, minute - minute % resolution, cube), made)
    ids = series_ids({cube for _, _, cube in found})
    packs: dict[int, list[int] | None] = {}  # by id(): a shared Counter is packed once

    def packed_once(counts: Counter) -> list[int] | None:
        done = packs.get(id(counts), False)
        if done is False:
            done = packs[id(counts)] = packed(counts)
        return done

    # In key order (the unique index's own), so that two writers adding to the same rows take
    # their locks in the same order and cannot deadlock.
    _upsert(
        sorted(
            (ids[cube], res, start, *made.sums, packed_once(made.latency), packed_once(made.ttft))
            for (res, start, cube), made in found.items()
        )
    )


def _upsert(rows: list[tuple]) -> None:
    """INSERT INTO the rollups ... ON CONFLICT (series, resolution, start) DO UPDATE SET n = n +
    excluded.n for the SUMS and the packed histograms merged (HISTOGRAMS), rows of (series id,
    resolution, start in epoch seconds, *SUMS, *HISTOGRAMS) in the caller's order. On
    PostgreSQL each column travels as one array literal through unnest (one statement;
    joining integers into text is all the client does); on SQLite as one prepared statement
    run for every row."""
    if not rows:
        return
    quote = connection.ops.quote_name
    table = MetricRollup._meta.db_table
    keys = ("series_id", "resolution", "start")
    names = (*keys, *SUMS, *HISTOGRAMS)
    at = names.index("start")
    columns = ", ".join(quote(name) for name in names)
    updates = ", ".join(
        [f"{quote(name)} = {quote(table)}.{quote(name)} + excluded.{quote(name)}" for name in SUMS]
        # Merged only where the row brings one (half the rows have no TTFT): no call otherwise.
        + [
            f"{quote(name)} = CASE WHEN excluded.{quote(name)} IS NULL THEN {quote(table)}.{quote(name)} "
            f"ELSE {PACKED_ADD}({quote(table)}.{quote(name)}, excluded.{quote(name)}) END"
            for name in HISTOGRAMS
        ]
    )
    conflict = f"ON CONFLICT ({', '.join(quote(name) for name in keys)}) DO UPDATE SET {updates}"
    plain = len(names) - len(HISTOGRAMS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            aliases = [f"c{index}" for index in range(len(names))]
            selected = [f"to_timestamp({a})" if index == at else a for index, a in enumerate(aliases)]
            selected[plain:] = [f"{a}::bigint[]" for a in aliases[plain:]]
            columns_of = list(zip(*rows, strict=True))
            cursor.execute(
                f"INSERT INTO {quote(table)} ({columns}) SELECT {', '.join(selected)} "
                f"FROM unnest({', '.join(['%s::bigint[]'] * plain + ['%s::text[]'] * len(HISTOGRAMS))}) "
                f"AS u({', '.join(aliases)}) {conflict}",
                ["{" + ",".join(map(str, column)) + "}" for column in columns_of[:plain]]
                + [_array_of_arrays(column) for column in columns_of[plain:]],
            )
            return
        moments: dict[int, Any] = {}
        for start in {row[at] for row in rows}:
            moments[start] = connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(start, UTC))
        # One prepared statement for every row: the driver binds each row's values in C.
        one = "(" + ", ".join(["%s"] * len(names)) + ")"
        cursor.executemany(
            f"INSERT INTO {quote(table)} ({columns}) VALUES {one} {conflict}",
            [
                (*row[:at], moments[row[at]], *row[at + 1 : plain], *(packed_text(pack) for pack in row[plain:]))
                for row in rows
            ],
        )


def _array_of_arrays(packs: Iterable[list[int] | None]) -> str:
    # A text[] literal of bigint[] literals, one per row, cast per row in the statement.
    return "{" + ",".join("NULL" if p is None else '"{' + ",".join(map(str, p)) + '}"' for p in packs) + "}"
