"""Rollup keys series first (a read takes each series' window as an index range), and the
(model, route) cube as cube 2: the model-only cube goes, its route-keeping twin (cube 5) takes
its number. Stop the gateway's writers while it runs: a writer still on the earlier code
would go on adding to the model-only cube 2 and count its rows twice in reads by model
(`manage.py rebuild_rollups` repairs that)."""

from django.db import migrations, models


def cubes_merged(apps, schema_editor):
    series = apps.get_model("monitoring", "MetricSeries")
    rollups = apps.get_model("monitoring", "MetricRollup")
    histograms = apps.get_model("monitoring", "MetricHistogram")
    # Cube 5 kept (model, route) and the cube dimensions, which is what cube 2 keeps now.
    histograms.objects.filter(series__cube=2).delete()
    rollups.objects.filter(series__cube=2).delete()
    series.objects.filter(cube=2).delete()
    series.objects.filter(cube=5).update(cube=2)


def cubes_split(apps, schema_editor):
    # Back: the model-only cube is gone; `manage.py rebuild_rollups` makes it again.
    apps.get_model("monitoring", "MetricSeries").objects.filter(cube=2).update(cube=5)


class Migration(migrations.Migration):

    dependencies = [
        ("monitoring", "0009_series_cubes"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="metricrollup", name="metric_rollup_unique"),
        migrations.RemoveConstraint(model_name="metrichistogram", name="metric_histogram_unique"),
        migrations.AlterField(
            model_name="metricrollup",
            name="series",
            field=models.ForeignKey(
                db_index=False, on_delete=models.deletion.CASCADE, related_name="+", to="monitoring.metricseries"
            ),
        ),
        migrations.AlterField(
            model_name="metrichistogram",
            name="series",
            field=models.ForeignKey(
                db_index=False, on_delete=models.deletion.CASCADE, related_name="+", to="monitoring.metricseries"
            ),
        ),
        migrations.AddConstraint(
            model_name="metricrollup",
            constraint=models.UniqueConstraint(fields=("series", "resolution", "start"), name="metric_rollup_key"),
        ),
        migrations.AddConstraint(
            model_name="metrichistogram",
            constraint=models.UniqueConstraint(
                fields=("series", "resolution", "start", "metric", "bucket"), name="metric_histogram_key"
            ),
        ),
        migrations.RunPython(cubes_merged, cubes_split),
    ]
