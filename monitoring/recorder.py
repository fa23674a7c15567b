"""QueryMetric rows, written in bulk off the request path (llmops.buffered), with their
rollups in the same transaction (monitoring.rollups)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, transaction

from llmops.buffered import BufferedWriter
from llmops.bulk import rows_insert
from monitoring.models import QueryMetric
from monitoring.rollups import rollups_add

logger = logging.getLogger(__name__)


def _rows_write(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the rows; returns those written (with the api_key_id they were written with)."""
    try:
        with transaction.atomic():
            rows_insert(QueryMetric, batch)
        return batch
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        pass
    # Some row is one the database refuses (its API key was deleted meanwhile, say): write
    # the rows one by one so a single bad row cannot hold every later metric back.
    written = []
    for row in batch:
        for attempt in (row, {**row, "api_key_id": None}):
            try:
                with transaction.atomic():
                    QueryMetric.objects.bulk_create([QueryMetric(**attempt)])
                written.append(attempt)
                break
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError:
                continue
        else:
            METRICS.dropped += 1
            logger.warning("Dropped metric %s: the database refused it", row.get("request_id"))
    return written


def _known_keys(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, with the key of any row whose API key was deleted meanwhile left out: the
    database checks foreign keys only at commit, too late for the row-by-row fallback."""
    ids = {row["api_key_id"] for row in batch if row.get("api_key_id")}
    if not ids:
        return batch
    keys = QueryMetric._meta.get_field("api_key").related_model
    gone = ids - set(keys.objects.filter(id__in=ids).values_list("id", flat=True))
    if not gone:
        return batch
    return [{**row, "api_key_id": None} if row.get("api_key_id") in gone else row for row in batch]


def _write(batch: list[dict[str, Any]]) -> int:
    # One transaction: the rows and their rollups are written together (an unreachable
    # database keeps the whole batch for the next try).
    try:
        for attempt in (1, 2):
            try:
                with transaction.atomic():
                    written = _rows_write(_known_keys(batch))
                    if written and settings.LLMOPS_METRICS_ROLLUPS:
                        _rollups_write(written)
                return len(written)
            except IntegrityError:
                # A key deleted between the check and the commit: check again, once.
                if attempt == 2:
                    raise
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        # Anything else is a fault of ours, not the database's: count the batch as dropped
        # rather than retry it for ever or lose it unseen.
        METRICS.dropped += len(batch)
        logger.exception("Dropped %d metric rows: writing them failed", len(batch))
    return 0


def _rollups_write(written: list[dict[str, Any]]) -> None:
    try:
        with transaction.atomic():
            rollups_add(written)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        # The rows are kept (rebuild_rollups can add them later); the miss is counted.
        RollupHealth.missed += len(written)
        logger.exception("Rollups of %d metric rows could not be written; the rows were", len(written))


class RollupHealth:
    missed = 0  # rows written without their rollups (see _rollups_write)


METRICS = BufferedWriter("metric", _write)


def metric_record(**fields: Any) -> None:
    """Queue one metric row; the model instance is built by the writer, off the hot path."""
    METRICS.add(fields)


def metrics_flush() -> int:
    return METRICS.flush()


def metrics_pending() -> int:
    return METRICS.pending()
