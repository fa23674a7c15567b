"""Migrations that move rollup data keep what it held: cube 5 (model, route) becoming cube 2,
and the histograms packed into the rollup rows."""

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("monitoring", "0009_series_cubes")]
AFTER = [("monitoring", "0010_series_first_keys")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_route_cube_becomes_cube_two_and_the_model_cube_goes():
    apps = _migrate(BEFORE)
    series = apps.get_model("monitoring", "MetricSeries")
    rollup = apps.get_model("monitoring", "MetricRollup")
    blank = dict(api_key_id=0, endpoint="", option="", prompt="", provider="", stream=False, error_type="")
    blank.update(model="sim-small", status="ok", cache_status="miss")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    made = {}
    for cube, route in ((2, ""), (5, "support"), (0, "support")):
        one = series.objects.create(cube=cube, route=route, **blank)
        rollup.objects.create(resolution=3600, start=at, series=one, requests=10 + cube)
        made[cube] = one.id
    try:
        apps = _migrate(AFTER)
        series = apps.get_model("monitoring", "MetricSeries")
        rollup = apps.get_model("monitoring", "MetricRollup")
        assert dict(series.objects.values_list("id", "cube")) == {made[5]: 2, made[0]: 0}
        assert sorted(rollup.objects.values_list("series_id", "requests")) == sorted([(made[5], 15), (made[0], 10)])
    finally:
        executor = MigrationExecutor(connection)
        apps = _migrate(executor.loader.graph.leaf_nodes())  # every app's latest again
        apps.get_model("monitoring", "MetricSeries").objects.all().delete()


@pytest.mark.django_db(transaction=True)
def test_histogram_rows_are_packed_into_their_rollup_rows():
    apps = _migrate([("monitoring", "0011_alert_recent_minutes")])
    series = apps.get_model("monitoring", "MetricSeries")
    rollup = apps.get_model("monitoring", "MetricRollup")
    histogram = apps.get_model("monitoring", "MetricHistogram")
    blank = dict(api_key_id=0, endpoint="", option="", prompt="", provider="", stream=False, error_type="")
    blank.update(model="sim-small", route="", status="ok")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    counted = series.objects.create(cube=2, cache_status="miss", **blank)
    # A cube that kept one histogram series for every cache result: no rollup row of its own.
    merged = series.objects.create(cube=1, cache_status="", **blank)
    rollup.objects.create(resolution=60, start=at, series=counted, requests=6)
    for one, metric, bucket, count in (
        (counted, 1, 90, 2), (counted, 1, 12, 3), (counted, 2, 40, 1), (counted, 1, 95, 0),
        (merged, 1, 7, 4), (merged, 1, 300, 1),
    ):  # fmt: skip
        histogram.objects.create(resolution=60, start=at, series=one, metric=metric, bucket=bucket, count=count)
    try:
        apps = _migrate([("monitoring", "0012_packed_histograms")])
        rollup = apps.get_model("monitoring", "MetricRollup")
        found = {
            row[0]: row[1:] for row in rollup.objects.values_list("series_id", "requests", "latency", "ttft", "start")
        }
        assert found == {counted.id: (6, [12, 3, 90, 2], [40, 1], at), merged.id: (0, [7, 4, 300, 1], None, at)}
    finally:
        executor = MigrationExecutor(connection)
        apps = _migrate(executor.loader.graph.leaf_nodes())
        apps.get_model("monitoring", "MetricSeries").objects.all().delete()
