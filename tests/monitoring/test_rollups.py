from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.db.models import Q

from monitoring import recorder
from monitoring.buckets import TOP, BucketCounts, bucket_of, bucket_value_ms, packed, percentiles, unpacked
from monitoring.figures import metrics_models, metrics_summary, metrics_timeseries, series_filter
from monitoring.models import SERIES_DIMENSIONS, MetricRollup, MetricSeries, QueryMetric
from monitoring.rollups import series_key
from monitoring.selectors import percentile
from monitoring.windows import Window, window_blocks, window_resolve

pytestmark = pytest.mark.django_db(transaction=True)

ROLLUP_FIELDS = (
    *("resolution", "start", "series_id", "requests", "cost", "latency_us", "ttft_us", "escalations"),
    *("latency", "ttft"),
)
NOW = datetime(2026, 12, 1, 17, 33, 20, tzinfo=UTC)


def rows(n: int, *, seed: int = 7, start: datetime = NOW - timedelta(hours=30)) -> list[dict]:
    rng = random.Random(seed)
    made = []
    for i in range(n):
        status = rng.choices(["ok", "error", "cancelled"], [0.9, 0.08, 0.02])[0]
        stream = rng.random() < 0.5
        cascade = rng.random() < 0.2
        made.append(
            {
                "request_id": f"r{seed}-{i}",
                "created_at": start + timedelta(seconds=rng.uniform(0, 30 * 3600)),
                "model": rng.choice(["sim-small", "sim-large", "support"]),
                "route": rng.choice(["", "support"]),
                "provider": "simulated",
                "option": "cascade:triage" if cascade else "sim-small",
                "status": status,
                "error_type": "" if status != "error" else rng.choice(["rate_limited", "upstream_error"]),
                "stream": stream,
                "latency_ms": rng.lognormvariate(5, 0.6),
                "ttft_ms": rng.lognormvariate(4, 0.5) if stream and status == "ok" else None,
                "input_tokens": rng.randint(1, 500),
                "output_tokens": rng.randint(1, 300),
                "cached_tokens": rng.randint(0, 50),
                "cost_usd": Decimal(rng.randint(0, 10**6)) / Decimal(10**10),
                "cost_saved_usd": Decimal(0),
                "cache_status": rng.choice(["hit", "semantic_hit", "miss", "miss", "bypass"]),
                "quality_score": rng.random() if cascade else None,
                "cascade_steps": (2 if rng.random() < 0.3 else 1) if cascade else 0,
            }
        )
    return made


def record(made: list[dict]) -> None:
    for row in made:
        recorder.metric_record(**row)
    recorder.metrics_flush()


def test_buckets_are_within_two_percent_of_every_value_in_them():
    rng = random.Random(1)
    for _ in range(20_000):
        ms = 10 ** rng.uniform(-1, 6)
        assert abs(bucket_value_ms(bucket_of(ms)) - ms) / ms < 0.0195
    assert bucket_of(0.01) == 0
    assert bucket_of(1e12) == TOP


def test_bucketed_percentiles_match_the_exact_ones_within_two_percent():
    rng = random.Random(2)
    values = sorted(rng.lognormvariate(6, 0.8) for _ in range(5000))
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_of(v)] = counts.get(bucket_of(v), 0) + 1
    for share, found in zip((0.5, 0.95, 0.99), percentiles(counts, (0.5, 0.95, 0.99)), strict=True):
        exact = percentile(values, share)
        assert abs(found - exact) / exact < 0.02
    assert percentiles({}, (0.5,)) == [None]


def test_bucket_counts_read_in_parts_give_the_percentiles_of_their_sums():
    rng = random.Random(3)
    summed: dict[int, int] = {}
    parts = BucketCounts()
    for _ in range(6):  # series or blocks read apart: each in order, repeats across them
        part = {bucket_of(rng.lognormvariate(6, 1.2)): rng.randint(1, 40) for _ in range(120)}
        for bucket, n in part.items():
            summed[bucket] = summed.get(bucket, 0) + n
        parts.add(packed(part))  # packed, as a rollup row holds them
    shares = (0.01, 0.5, 0.95, 0.99, 1.0)
    assert parts.percentiles(shares) == percentiles(summed, shares)
    one = BucketCounts()
    one.add(packed(summed))  # one histogram: read as it is
    assert one.percentiles(shares) == percentiles(summed, shares)
    assert BucketCounts().percentiles((0.5,)) == [None]


def test_a_window_is_cut_into_whole_days_hours_and_minutes_covering_it_once():
    window = Window(start=datetime(2026, 11, 24, 17, 34, tzinfo=UTC), end=datetime(2026, 12, 1, 17, 34, tzinfo=UTC))
    blocks = window_blocks(window)
    covered = sum((last - first).total_seconds() for _, first, last in blocks)
    assert covered == window.seconds
    assert [size for size, _, _ in blocks] == [60, 3600, 86400, 3600, 60]
    for size, first, last in blocks:
        assert first.timestamp() % size == 0 and last.timestamp() % size == 0


def test_a_window_ending_now_includes_the_current_minute():
    window = window_resolve(window="15m", now=NOW)
    assert window.end == datetime(2026, 12, 1, 17, 34, tzinfo=UTC)
    assert window.seconds == 15 * 60


def test_the_summary_from_rollups_equals_the_figures_of_the_raw_rows():
    made = rows(3000)
    record(made)
    assert QueryMetric.objects.count() == 3000
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    summary = metrics_summary(window=window, where=Q())
    assert summary["requests"] == 3000
    statuses = [r["status"] for r in made]
    assert summary["errors"] == statuses.count("error")
    assert summary["cancelled"] == statuses.count("cancelled")
    assert summary["errors_by_type"]["rate_limited"] == sum(1 for r in made if r["error_type"] == "rate_limited")
    assert summary["tokens"]["input"] == sum(r["input_tokens"] for r in made)
    assert Decimal(summary["cost_usd"]) == sum(r["cost_usd"] for r in made)
    ok = [r for r in made if r["status"] == "ok"]
    latencies = sorted(r["latency_ms"] for r in ok)
    for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        exact = percentile(latencies, share)
        assert abs(summary["latency_ms"][name] - exact) / exact < 0.02
    ttfts = sorted(r["ttft_ms"] for r in ok if r["ttft_ms"] is not None)
    assert abs(summary["ttft_ms"]["p95"] - percentile(ttfts, 0.95)) / percentile(ttfts, 0.95) < 0.02
    hits = sum(1 for r in ok if r["cache_status"] in ("hit", "semantic_hit"))
    looked_up = sum(1 for r in ok if r["cache_status"] != "bypass")
    assert summary["cache"]["hit_rate"] == round(hits / looked_up, 4)
    cascades = [r for r in made if r["option"].startswith("cascade:")]
    assert summary["quality"]["cascades"] == len(cascades)
    escalated = sum(1 for r in cascades if r["cascade_steps"] > 1)
    assert summary["quality"]["escalation_rate"] == round(escalated / len(cascades), 4)


def test_every_split_of_a_window_gives_the_same_totals():
    made = rows(2000, seed=3)
    record(made)
    window = Window(start=datetime(2026, 11, 30, 11, 7, tzinfo=UTC), end=datetime(2026, 12, 1, 16, 43, tzinfo=UTC))
    inside = [r for r in made if window.start <= r["created_at"] < window.end]
    summary = metrics_summary(window=window, where=Q())
    assert summary["requests"] == len(inside)
    per_model = metrics_models(window=window, where=Q())
    assert sum(m["requests"] for m in per_model) == len(inside)
    assert {m["model"]: m["requests"] for m in per_model} == {
        model: sum(1 for r in inside if r["model"] == model) for model in {r["model"] for r in inside}
    }
    series = metrics_timeseries(window=window, where=Q())
    assert series["step_s"] == 3600
    in_whole_hours = [
        r for r in made if datetime(2026, 11, 30, 11, tzinfo=UTC) <= r["created_at"] < window.end.replace(minute=0)
    ]
    points = series["points"]
    assert points[0]["start"] == "2026-11-30T11:00:00+00:00"
    assert sum(p["requests"] for p in points[:-1]) == len(in_whole_hours)


def test_filters_narrow_the_rollups_read():
    made = rows(1500, seed=4)
    record(made)
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    summary = metrics_summary(window=window, where=series_filter({"route": "support"}, api_key_id=None))
    assert summary["requests"] == sum(1 for r in made if r["route"] == "support")
    nobody = metrics_summary(window=window, where=series_filter({}, api_key_id=987654))
    assert nobody["requests"] == 0 and nobody["latency_ms"]["p95"] is None


def test_two_writers_add_to_the_same_rollup_rows():
    made = rows(400, seed=5)
    record(made[:200])
    record(made[200:])
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    assert metrics_summary(window=window, where=Q())["requests"] == 400
    assert MetricSeries.objects.count() < 400
    minutes = MetricRollup.objects.filter(resolution=60, series__cube=0)
    assert sum(minutes.values_list("requests", flat=True)) == 400
    # Their histograms merged, not replaced: every request's latency counted once.
    days = MetricRollup.objects.filter(resolution=86400, series__cube=0)
    assert sum(sum(unpacked(latency).values()) for latency in days.values_list("latency", flat=True)) == 400
    streamed = sum(1 for row in made if row["ttft_ms"] is not None)
    assert sum(sum(unpacked(ttft).values()) for ttft in days.values_list("ttft", flat=True)) == streamed


def test_without_rollups_the_rows_are_still_written(settings):
    settings.LLMOPS_METRICS_ROLLUPS = False
    record(rows(10, seed=6))
    assert QueryMetric.objects.count() == 10
    assert not MetricRollup.objects.exists()


def test_rollups_rebuilt_from_the_raw_rows_equal_those_the_writer_kept():
    from django.core.management import call_command

    record(rows(800, seed=8))
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    written = metrics_summary(window=window, where=Q())
    kept = sorted(MetricRollup.objects.values_list(*ROLLUP_FIELDS))
    MetricRollup.objects.filter(resolution=60).delete()
    call_command("rebuild_rollups", stdout=StringIO())
    assert metrics_summary(window=window, where=Q()) == written
    again = sorted(MetricRollup.objects.values_list(*ROLLUP_FIELDS))
    assert again == kept


def test_pruning_drops_raw_rows_and_minute_rollups_past_retention_and_keeps_hours(settings):
    from monitoring.services import metrics_prune

    settings.LLMOPS_METRICS_RETENTION_DAYS = 1
    record(rows(300, seed=9, start=NOW - timedelta(days=3)))  # all 3 days to 1.75 days old
    pruned = metrics_prune(now=NOW)
    assert pruned["rows"] == 300 and not QueryMetric.objects.exists()
    assert not MetricRollup.objects.filter(resolution=60).exists()
    assert sum(MetricRollup.objects.filter(resolution=3600, series__cube=0).values_list("requests", flat=True)) == 300
    settings.LLMOPS_METRICS_ROLLUP_RETENTION_DAYS = 1
    metrics_prune(now=NOW)
    assert not MetricRollup.objects.exists()


def test_each_rollup_row_holds_the_histogram_of_its_own_requests():
    made = rows(400, seed=12)
    record(made)
    # Minute rows of cube 0: one series and minute each, recounted from the raw rows.
    expected: dict[tuple, Counter] = defaultdict(Counter)
    ids = {}
    for series in MetricSeries.objects.filter(cube=0):
        ids[series.id] = series
    for row in made:
        at = int(row["created_at"].timestamp())
        expected[(series_key(row), at - at % 60)][bucket_of(row["latency_ms"])] += 1
    found = {}
    for series_id, start, latency in MetricRollup.objects.filter(resolution=60, series__cube=0).values_list(
        "series_id", "start", "latency"
    ):
        key = tuple(getattr(ids[series_id], name) for name in SERIES_DIMENSIONS)
        found[(key, int(start.timestamp()))] = unpacked(latency)
    assert found == {key: dict(counts) for key, counts in expected.items()}
    # Packed in bucket order, no empty bucket kept.
    for latency in MetricRollup.objects.values_list("latency", flat=True):
        assert latency[::2] == sorted(set(latency[::2])) and all(n > 0 for n in latency[1::2])


def test_packed_histograms_add_up_bucket_by_bucket_in_the_database():
    from django.db import connection

    from monitoring.buckets import PACKED_ADD, packed_add

    one, other = [3, 1, 70, 2, 90, 5], [1, 4, 70, 3, 200, 1]
    assert packed_add(one, other) == [1, 4, 3, 1, 70, 5, 90, 5, 200, 1]
    assert packed_add(None, other) == other and packed_add(one, None) == one
    rng = random.Random(4)
    cases = [(one, other), (other, one), (None, other), (one, None), ([5, 1], [5, 2]), ([0, 7], [TOP, 1])]
    for _ in range(200):  # a few buckets into many, many into a few, counts equal to buckets
        sizes = (rng.randint(1, 60), rng.randint(1, 4))
        cases.append(tuple(packed({rng.randint(0, 120): rng.randint(1, 120) for _ in range(k)}) for k in sizes))
    postgres = connection.vendor == "postgresql"
    cast = "::bigint[]" if postgres else ""
    with connection.cursor() as cursor:
        for first, second in cases:
            # The reference: both unpacked and added bucket by bucket.
            assert packed_add(first, second) == packed(Counter(unpacked(first)) + Counter(unpacked(second)))
            sent = [v if postgres or v is None else json.dumps(v) for v in (first, second)]
            cursor.execute(f"SELECT {PACKED_ADD}(%s{cast}, %s{cast})", sent)
            added = cursor.fetchone()[0]
            assert (added if postgres or added is None else json.loads(added)) == packed_add(first, second)


@pytest.mark.parametrize(
    ("filters", "api_key_id", "cube"),
    [
        ({}, None, 1),
        ({"model": "sim-large"}, None, 2),
        ({}, 11, 3),
        ({"model": "support"}, 12, 4),
        ({"model": "sim-small", "route": "support"}, None, 2),
        ({"route": "support"}, None, 2),
        ({"route": "support"}, 11, 0),
        ({"prompt": "p@1"}, None, 0),
    ],
)
def test_each_cube_adds_up_to_what_every_dimension_holds(filters, api_key_id, cube):
    made = rows(1200, seed=10)
    for n, row in enumerate(made):
        row["api_key_id"] = None
        row["prompt"] = "p@1" if n % 3 else ""
    record(made)
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    scope = series_filter(filters, api_key_id=api_key_id)
    assert f"('cube', {cube})" in str(scope.series())
    every = Q(**{"api_key_id" if k == "api_key" else k: v for k, v in filters.items()})
    if api_key_id is not None:
        every &= Q(api_key_id=api_key_id)
    assert metrics_summary(window=window, where=scope) == metrics_summary(window=window, where=every)
    assert metrics_models(window=window, where=scope) == metrics_models(window=window, where=every)
    assert metrics_timeseries(window=window, where=scope) == metrics_timeseries(window=window, where=every)


def test_reads_of_many_series_select_them_by_a_subquery_with_the_same_figures(monkeypatch):
    from monitoring import figures

    made = rows(1500, seed=12)
    for n, row in enumerate(made):
        row["prompt"] = f"p{n % 40}@1"  # 40 prompts: cube 0 holds hundreds of series
    record(made)
    window = Window(start=NOW - timedelta(hours=31), end=NOW + timedelta(minutes=1))
    every = Q(provider="simulated")
    assert MetricSeries.objects.filter(every, cube=0).count() > 100
    listed = (
        metrics_summary(window=window, where=every),
        metrics_models(window=window, where=every),
        metrics_timeseries(window=window, where=every),
    )
    monkeypatch.setattr(figures, "MAX_LISTED", 10)
    assert listed[0]["requests"] == 1500
    assert metrics_summary(window=window, where=every) == listed[0]
    assert metrics_models(window=window, where=every) == listed[1]
    assert metrics_timeseries(window=window, where=every) == listed[2]
