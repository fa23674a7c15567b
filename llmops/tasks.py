"""Celery tasks (production: `celery -A llmops worker`). Thin: each calls one service.

A batch runs as a chain of slices (LLMOPS_BATCH_TASK_SLICE_S each) on the worker process's
own event loop, which lives as long as the process, so provider clients and connection pools
are reused from one slice and batch to the next. Buffered metric and cache rows are written
before a task ends."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from django.conf import settings

from caching.store import ENTRIES
from llmops.batches.executor import batches_unattended
from llmops.batches.runner import batch_run
from llmops.batches.store import BatchStore
from llmops.celery import app
from monitoring.alerts import regressions_check
from monitoring.prometheus import prometheus_process_exited
from monitoring.recorder import METRICS
from monitoring.services import metrics_prune

logger = logging.getLogger(__name__)

_loop: asyncio.AbstractEventLoop | None = None
_store: BatchStore | None = None


def _worker_loop() -> tuple[asyncio.AbstractEventLoop, BatchStore]:
    global _loop, _store
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    if _store is None:
        _store = BatchStore()
    return _loop, _store


@app.task(name="llmops.batches.run", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_run_task(batch_id: str) -> str:
    loop, store = _worker_loop()
    until = time.monotonic() + settings.LLMOPS_BATCH_TASK_SLICE_S
    try:
        outcome = loop.run_until_complete(batch_run(batch_id, store_=store, until=until))
    finally:
        _buffers_flush()
    if outcome == "paused":
        batch_run_task.delay(batch_id)
    return outcome


def _buffers_flush() -> None:
    # Now, not when the process next works or exits: the items answered in this task have
    # their metric rows in the database by the time it ends.
    for writer in (METRICS, ENTRIES):
        try:
            writer.flush()
        except Exception:
            # The database is unreachable: the rows stay buffered for the writer's next try,
            # and neither the task's own error nor its next slice is lost to this one.
            logger.warning("%d buffered %s rows are not written yet", writer.pending(), writer.name, exc_info=True)


@app.task(name="llmops.batches.sweep", ignore_result=True)
def batches_sweep(every: bool = False) -> int:
    """Give a runner to each batch that lacks one (with `every`, to each not ended: a worker
    that starts cannot tell whether a runner of the batch died with the last one)."""
    found = batches_unattended(stale_only=not every, dispatched=True)
    for batch_id in found:
        batch_run_task.delay(batch_id)
    return len(found)


@app.task(name="monitoring.check_regressions", ignore_result=True)
def regressions_check_task() -> dict:
    """The regression checks, on beat's schedule (LLMOPS_ALERTS_CHECK_INTERVAL_S)."""
    return regressions_check().dump()


@app.task(name="monitoring.prune", ignore_result=True)
def metrics_prune_task() -> dict[str, int]:
    return metrics_prune()


@worker_ready.connect
def _resume_batches(**kwargs: object) -> None:
    batches_sweep.delay(every=True)


@worker_process_init.connect
def _freeze_startup_heap(**kwargs: object) -> None:
    # As the server does (llmops/asgi.py): what a pool process loaded at start lives as long
    # as it, out of the collector's sight, so that full collections mid-batch stay short
    # (unfrozen, they paused a 10,000-item batch for 2 s in all, each call holding its slot).
    gc.collect()
    gc.freeze()


@worker_process_shutdown.connect
def _prometheus_process_exited(pid: int | None = None, **kwargs: object) -> None:
    # A pool process ends with os._exit, past any atexit hook: its gauges (calls in flight,
    # breakers) leave Prometheus's sums here, while what it counted stays in them.
    prometheus_process_exited(pid)
