"""Histograms packed into the rollup rows: each MetricRollup row holds its latency and TTFT
bucket counts as one list ([bucket, count, ...], monitoring.buckets), instead of a
MetricHistogram row per bucket (a week of hourly percentiles read 74,000 rows; now a few
hundred: one per hour and series, a series per cache result). The
rows are added up by llmops_packed_add, a SQL function on PostgreSQL (made here) and a
function the SQLite connection is given (monitoring.apps).

The histograms of cubes that kept one histogram series for every cache result move to a
rollup row of that series with no requests: the reads add up the histograms of every
series they select, and these series are selected with the others. Stop the gateway's
writers while it runs."""

from django.db import migrations

import monitoring.models
from monitoring.buckets import PACKED_ADD, PACKED_ADD_SQL

SUMS = (
    "requests", "latency_us", "ttft_count", "ttft_us", "input_tokens", "output_tokens", "cached_tokens",
    "cost", "saved", "quality_count", "quality_micros", "cascades", "escalations",
)  # fmt: skip
LATENCY, TTFT = 1, 2
CHUNK = 5_000


def function_made(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PACKED_ADD_SQL)


def function_dropped(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {PACKED_ADD}(bigint[], bigint[])")


def histograms_packed(apps, schema_editor):
    connection = schema_editor.connection
    rollups = apps.get_model("monitoring", "MetricRollup")
    histograms = apps.get_model("monitoring", "MetricHistogram")
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        # One statement: each (row, metric)'s buckets packed in bucket order, then both
        # metrics of a row into its rollup row (made, with no requests, where there is none).
        zeros = ", ".join("0" for _ in SUMS)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quote(rollups._meta.db_table)} (series_id, resolution, start, "
                f"{', '.join(SUMS)}, latency, ttft) "
                f"SELECT series_id, resolution, start, {zeros}, "
                f"MAX(packed) FILTER (WHERE metric = {LATENCY}), MAX(packed) FILTER (WHERE metric = {TTFT}) "
                f"FROM (SELECT series_id, resolution, start, metric, "
                f"array_agg(flat.value ORDER BY bucket, flat.part) AS packed "
                f"FROM {quote(histograms._meta.db_table)} "
                f"CROSS JOIN LATERAL (VALUES (0, bucket::bigint), (1, count)) AS flat(part, value) "
                f"WHERE count > 0 GROUP BY series_id, resolution, start, metric) AS packs "
                f"GROUP BY series_id, resolution, start "
                f"ON CONFLICT (series_id, resolution, start) DO UPDATE "
                f"SET latency = excluded.latency, ttft = excluded.ttft"
            )
        return
    # SQLite: series by series.
    for series_id in histograms.objects.values_list("series_id", flat=True).distinct().order_by("series_id"):
        packs: dict[tuple, dict[int, list[int]]] = {}
        for resolution, start, metric, bucket, count in (
            histograms.objects.filter(series_id=series_id, count__gt=0)
            .order_by("resolution", "start", "metric", "bucket")
            .values_list("resolution", "start", "metric", "bucket", "count")
            .iterator(chunk_size=CHUNK)
        ):
            packs.setdefault((resolution, start), {}).setdefault(metric, []).extend((bucket, count))
        have = {(r.resolution, r.start): r for r in rollups.objects.filter(series_id=series_id)}
        changed, made = [], []
        for (resolution, start), by_metric in packs.items():
            row = have.get((resolution, start))
            if row is None:
                row = rollups(series_id=series_id, resolution=resolution, start=start)
                made.append(row)
            else:
                changed.append(row)
            row.latency, row.ttft = by_metric.get(LATENCY), by_metric.get(TTFT)
        rollups.objects.bulk_update(changed, ["latency", "ttft"], batch_size=CHUNK)
        rollups.objects.bulk_create(made, batch_size=CHUNK)


class Migration(migrations.Migration):

    dependencies = [
        ("monitoring", "0011_alert_recent_minutes"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricrollup",
            name="latency",
            field=monitoring.models.PackedCountsField(
                blank=True, editable=False, help_text="Latency histogram, packed", null=True
            ),
        ),
        migrations.AddField(
            model_name="metricrollup",
            name="ttft",
            field=monitoring.models.PackedCountsField(
                blank=True, editable=False, help_text="Time to first token histogram, packed", null=True
            ),
        ),
        migrations.RunPython(function_made, function_dropped),
        # Back: the packed histograms are dropped with their columns; `manage.py
        # rebuild_rollups` makes the histograms again from the raw rows kept.
        migrations.RunPython(histograms_packed, migrations.RunPython.noop),
        migrations.DeleteModel(name="MetricHistogram"),
    ]
