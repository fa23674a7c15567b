"""QueryMetric rows, written in bulk off the request path (llmops.buffered)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, transaction

from llmops.buffered import BufferedWriter
from monitoring.models import QueryMetric

logger = logging.getLogger(__name__)


def _write(batch: list[dict[str, Any]]) -> int:
    try:
        with transaction.atomic():  # a savepoint when called inside a transaction
            QueryMetric.objects.bulk_create([QueryMetric(**row) for row in batch])
        return len(batch)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        pass
    # Some row is one the database refuses (its API key was deleted meanwhile, say): write
    # the rows one by one so a single bad row cannot hold every later metric back.
    written = 0
    for row in batch:
        for attempt in (row, {**row, "api_key_id": None}):
            try:
                with transaction.atomic():
                    QueryMetric.objects.bulk_create([QueryMetric(**attempt)])
                written += 1
                break
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError:
                continue
        else:
            METRICS.dropped += 1
            logger.warning("Dropped metric %s: the database refused it", row.get("request_id"))
    return written


METRICS = BufferedWriter("metric", _write)


def metric_record(**fields: Any) -> None:
    """Queue one metric row; the model instance is built by the writer, off the hot path."""
    METRICS.add(fields)


def metrics_flush() -> int:
    return METRICS.flush()


def metrics_pending() -> int:
    return METRICS.pending()
