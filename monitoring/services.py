"""Writes of the monitoring app besides the metric writer: pruning what is past retention,
rebuilding the rollups from the raw rows."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring.models import SERIES_DIMENSIONS, MetricRollup, QueryMetric
from monitoring.rollups import rollups_add

logger = logging.getLogger(__name__)
PRUNE_CHUNK = 10_000  # rows per delete: short transactions, no long lock on a busy table


def _delete_before(model: type, cutoff: datetime, field: str, **extra: object) -> int:
    deleted = 0
    while True:
        ids = list(model.objects.filter(**{f"{field}__lt": cutoff}, **extra).values_list("id", flat=True)[:PRUNE_CHUNK])
        if not ids:
            return deleted
        deleted += model.objects.filter(id__in=ids).delete()[0]


def metrics_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete raw metric rows and minute rollups older than LLMOPS_METRICS_RETENTION_DAYS, and
    hour and day rollups older than LLMOPS_METRICS_ROLLUP_RETENTION_DAYS. Returns the counts."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(days=settings.LLMOPS_METRICS_RETENTION_DAYS)
    rollup_cutoff = now - timedelta(days=settings.LLMOPS_METRICS_ROLLUP_RETENTION_DAYS)
    minute = MetricRollup.Resolution.MINUTE
    found = {
        "rows": _delete_before(QueryMetric, raw_cutoff, "created_at"),
        "minute_rollups": _delete_before(MetricRollup, raw_cutoff, "start", resolution=minute),
        "rollups": _delete_before(MetricRollup, rollup_cutoff, "start", resolution__gt=minute),
    }
    if any(found.values()):
        logger.info("Pruned metrics past retention: %s", found)
    return found


REBUILD_CHUNK = 5_000
# What rollups_add reads of a row: the series' dimensions and what is summed.
ROW_FIELDS = (
    *SERIES_DIMENSIONS,
    "created_at",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_saved_usd",
    "quality_score",
    "cascade_steps",
)


def rollups_rebuild() -> int:
    """Rebuild every rollup from the raw rows kept (metrics recorded before rollups existed,
    or rollups written with LLMOPS_METRICS_ROLLUPS off). Run it with the gateway stopped: rows
    written meanwhile could be counted twice. Rollups of days whose raw rows were pruned are
    lost: they are rebuilt from what is left. Returns the rows read."""
    read = 0
    with transaction.atomic():
        MetricRollup.objects.all().delete()
        last_id = 0
        while True:
            chunk = list(
                QueryMetric.objects.filter(id__gt=last_id).order_by("id").values("id", *ROW_FIELDS)[:REBUILD_CHUNK]
            )
            if not chunk:
                return read
            last_id = chunk[-1]["id"]
            rollups_add(chunk)
            read += len(chunk)
