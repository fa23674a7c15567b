"""What the regression checks read of the rollups: for each model and route (a scope) of a
window, its counts, its cost and quality sums (per minute too, for their spread) and its
latency and time-to-first-token histograms. The recent window is read at every check; a
baseline, whole hours, once an hour: its read is kept in process, and a cheap aggregate of
its hour rollups tells whether rows were added to it since (a late write is never missed)."""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from operator import or_

from django.db.models import Count, Max, Q, Sum

from monitoring.buckets import unpacked
from monitoring.figures import LOOKED_UP
from monitoring.models import MetricRollup
from monitoring.rollups import CUBES
from monitoring.windows import Window, window_blocks

MINUTE, HOUR = 60, 3600
HITS = ("hit", "semantic_hit")
# Latency and time to first token are the answers': a cache hit's few milliseconds measure the
# cache (and their share is the hit-rate rule's), and mixed in they blur a model's slowdown.
ANSWERED = ("miss", "bypass")
BASELINES_KEPT = 8
SPREAD_SPAN = timedelta(days=1)

Scope = tuple[str, str]  # (model, route) as MetricSeries holds them

# Checks are per model and route: the cube that keeps just those (monitoring.rollups.CUBES).
IN_CUBE = Q(series__cube=next(cube for cube, kept in CUBES.items() if kept == ("model", "route")))


def _clusters() -> defaultdict[datetime, list[int]]:
    return defaultdict(lambda: [0, 0])


@dataclass(slots=True)
class Side:
    """What one window holds for one model and route."""

    requests: int = 0
    errors: int = 0
    looked_up: int = 0
    hits: int = 0
    cost: list[int] = field(default_factory=lambda: [0, 0])  # successful requests, their cost
    quality: list[int] = field(default_factory=lambda: [0, 0])  # scored answers, their scores in millionths
    # The same per minute, for the spread of the means (of the baseline's last day only).
    cost_minutes: dict[datetime, list[int]] = field(default_factory=_clusters)
    quality_minutes: dict[datetime, list[int]] = field(default_factory=_clusters)
    latency: Counter = field(default_factory=Counter)  # bucket -> successful requests not from the cache
    ttft: Counter = field(default_factory=Counter)


EMPTY = Side()


def _add(side: list[int], n: int, total: int) -> None:
    side[0] += n
    side[1] += total


def _sides(totals: Q, histograms: Q, minutes: Q | None = None) -> dict[Scope, Side]:
    """Each scope's side of the rollups `totals` selects, and of the histograms; the spread
    of its means from the minutes `minutes` selects (None: those of `totals`)."""
    found: dict[Scope, Side] = defaultdict(Side)
    sums = {
        "n": Sum("requests"),
        "cost_sum": Sum("cost"),
        "scored": Sum("quality_count"),
        "micros": Sum("quality_micros"),
    }
    by_start = ["start"] if minutes is None else []
    rows = (
        MetricRollup.objects.filter(totals & IN_CUBE)
        .values("series__model", "series__route", "series__status", "series__cache_status", *by_start)
        .annotate(**sums)
        .order_by()
    )
    for row in rows:
        side = found[(row["series__model"], row["series__route"])]
        n = row["n"] or 0
        side.requests += n
        status = row["series__status"]
        if status == "error":
            side.errors += n
        elif status == "ok":
            _add(side.cost, n, row["cost_sum"] or 0)
            _add(side.quality, row["scored"] or 0, row["micros"] or 0)
            if minute := row.get("start"):
                _add(side.cost_minutes[minute], n, row["cost_sum"] or 0)
                _add(side.quality_minutes[minute], row["scored"] or 0, row["micros"] or 0)
            if row["series__cache_status"] in LOOKED_UP:
                side.looked_up += n
                if row["series__cache_status"] in HITS:
                    side.hits += n
    if minutes is not None:
        rows = (
            MetricRollup.objects.filter(minutes & IN_CUBE & Q(series__status="ok"))
            .values("series__model", "series__route", "start")
            .annotate(**sums)
            .order_by()
        )
        for row in rows:
            side = found[(row["series__model"], row["series__route"])]
            _add(side.cost_minutes[row["start"]], row["n"] or 0, row["cost_sum"] or 0)
            _add(side.quality_minutes[row["start"]], row["scored"] or 0, row["micros"] or 0)
    histogram_rows = (
        MetricRollup.objects.filter(histograms & IN_CUBE & Q(series__status="ok", series__cache_status__in=ANSWERED))
        .values_list("series__model", "series__route", "latency", "ttft")
        .order_by()
    )
    for model, route, latency, ttft in histogram_rows:
        side = found[(model, route)]
        side.latency.update(unpacked(latency))
        side.ttft.update(unpacked(ttft))
    return dict(found)


def recent_read(window: Window) -> dict[Scope, Side]:
    scope = Q(resolution=MINUTE, start__gte=window.start, start__lt=window.end)
    return _sides(scope, scope)


_baselines: OrderedDict[tuple[datetime, datetime], tuple[tuple, dict[Scope, Side]]] = OrderedDict()


def baseline_read(window: Window) -> dict[Scope, Side]:
    hours = MetricRollup.objects.filter(IN_CUBE, resolution=HOUR, start__gte=window.start, start__lt=window.end)
    # Every row written adds to its hour's rollup: these change whenever the window's rows do.
    signature = tuple(
        hours.aggregate(
            rows=Count("id"),
            last=Max("id"),
            requests=Sum("requests"),
            latency=Sum("latency_us"),
            ttft=Sum("ttft_us"),
            cost=Sum("cost"),
            quality=Sum("quality_micros"),
        ).values()
    )
    key = (window.start, window.end)
    kept = _baselines.get(key)
    if kept is not None and kept[0] == signature:
        _baselines.move_to_end(key)
        return kept[1]
    blocks = window_blocks(window, (86400, HOUR))
    # The spread of the per-minute means over the baseline's last day: 1,440 minutes are ample
    # for a variance, and a past regression in them weighs a minute's requests, not an hour's
    # (hours as clusters let one regressed hour double it).
    spread_from = max(window.start, window.end - SPREAD_SPAN)
    sides = _sides(
        Q(resolution=HOUR, start__gte=window.start, start__lt=window.end),
        reduce(or_, (Q(resolution=size, start__gte=first, start__lt=last) for size, first, last in blocks)),
        Q(resolution=MINUTE, start__gte=spread_from, start__lt=window.end),
    )
    _baselines[key] = (signature, sides)
    while len(_baselines) > BASELINES_KEPT:
        _baselines.popitem(last=False)
    return sides
