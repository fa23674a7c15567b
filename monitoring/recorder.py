"""Buffered QueryMetric writes: the hot path appends a row to memory and returns; a
background thread bulk-inserts the buffer every LLMOPS_METRICS_FLUSH_INTERVAL_S seconds
or as soon as LLMOPS_METRICS_BATCH_SIZE rows wait, with its own database connection."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction

from monitoring.models import QueryMetric

logger = logging.getLogger(__name__)

_buffer: deque[dict[str, Any]] = deque()
_wake = threading.Event()
_stopping = threading.Event()
_flush_lock = threading.Lock()
_writer: threading.Thread | None = None
_writer_lock = threading.Lock()
dropped = 0


def metric_record(**fields: Any) -> None:
    """Queue one metric row. Never blocks and never touches the database."""
    if len(_buffer) >= settings.LLMOPS_METRICS_MAX_BUFFER:
        # The database is down or far behind: shed metrics rather than memory.
        _count_dropped()
        return
    _buffer.append(fields)  # the model instance is built by the writer, off the hot path
    if len(_buffer) >= settings.LLMOPS_METRICS_BATCH_SIZE:
        _wake.set()
    _ensure_writer()


def metrics_flush() -> int:
    """Write every buffered row now, in the calling thread. Returns how many were written."""
    written = 0
    with _flush_lock:
        while _buffer:
            batch: list[dict[str, Any]] = []
            while _buffer and len(batch) < settings.LLMOPS_METRICS_BATCH_SIZE:
                batch.append(_buffer.popleft())
            try:
                written += _write(batch)
            except (OperationalError, InterfaceError):
                # The database is unreachable or restarting: keep the rows for the next try.
                _buffer.extendleft(reversed(batch))
                raise
    return written


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
            _count_dropped()
            logger.warning("Dropped metric %s: the database refused it", row.get("request_id"))
    return written


def _count_dropped() -> None:
    global dropped
    dropped += 1


def metrics_pending() -> int:
    return len(_buffer)


def _run_writer() -> None:
    while not _stopping.is_set():
        # Interval 0 (tests): sleep until a full batch wakes the thread, never spin.
        _wake.wait(settings.LLMOPS_METRICS_FLUSH_INTERVAL_S or None)
        _wake.clear()
        if not _buffer:
            continue
        try:
            close_old_connections()
            metrics_flush()
        except Exception:
            logger.exception("Writing %d buffered metrics failed; retrying shortly", len(_buffer))
            connection.close()
            time.sleep(1.0)
    connection.close()


def metrics_writer_stop(timeout: float = 10.0) -> None:
    """Stop the background writer after it wrote what is buffered (process exit, tests)."""
    global _writer
    with _writer_lock:
        writer, _writer = _writer, None
    if writer is None:
        return
    _stopping.set()
    _wake.set()
    writer.join(timeout)
    _stopping.clear()


def _ensure_writer() -> None:
    global _writer
    if _writer is not None or settings.LLMOPS_METRICS_FLUSH_INTERVAL_S <= 0:
        return  # interval 0: no background thread, rows wait for metrics_flush()
    with _writer_lock:
        if _writer is None:
            _writer = threading.Thread(target=_run_writer, name="metric-writer", daemon=True)
            _writer.start()


def _flush_at_exit() -> None:
    metrics_writer_stop()
    try:
        metrics_flush()
    except Exception:
        logger.exception("Could not write %d buffered metrics at exit", len(_buffer))


atexit.register(_flush_at_exit)
