"""The migration that made cube 5 (model, route) the new cube 2 keeps what cube 5 held."""

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
