"""The batch runner's database work, on one thread of its own with one connection: claims,
lease renewals and state reads run there in order, and the answers recorded meanwhile are
committed together (a group commit), so that hundreds of items a second cost a few
transactions, and an answer is durable a few milliseconds after it came.

An item's answer is recorded only while the item is still running: whoever records first
wins, and a late duplicate (a runner that lost its lease but was not dead) is dropped, so
every item is written once and counted once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import DataError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from llmops.batches.models import Batch, BatchItem, ItemStatus
from monitoring.prometheus import batch_items_finished

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Claimed:
    id: int
    line: int
    custom_id: str
    body: dict[str, Any]
    runs: int


@dataclass(slots=True)
class Outcome:
    """What became of one item's run: recorded as `status` (succeeded or failed), or
    queued again (`retry_at`) after a transient failure."""

    item_id: int
    status: str
    status_code: int | None = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    request_id: str = ""
    model: str = ""
    cost_usd: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    retry_at: datetime | None = None
    worker: str = ""  # the runner that ran it: only its own lease is given back for a retry
    counts_run: bool = True  # False: queued again without counting a run (the key's rate limit)


@dataclass(slots=True)
class BatchState:
    status: str
    expires_at: datetime
    total: int
    completed: int
    failed: int
    cost_usd: Decimal
    in_progress_at: datetime | None
    validator: str
    heartbeat_at: datetime | None

    def validator_alive(self, lease_s: float) -> bool:
        horizon = timezone.now() - timedelta(seconds=lease_s)
        return bool(self.validator) and self.heartbeat_at is not None and self.heartbeat_at >= horizon


def item_claim(batch_id: str, worker: str, limit: int, lease_s: float, max_runs: int) -> list[Claimed]:
    """Take up to `limit` items that nobody holds: queued ones that are due, and running ones
    whose runner's lease lapsed. One that already ran `max_runs` times without an answer (its
    runner died each time) is failed instead of being taken again."""
    now = timezone.now()
    claimable = Q(status=ItemStatus.QUEUED) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    claimable |= Q(status=ItemStatus.RUNNING, lease_until__lt=now)
    with transaction.atomic():
        candidates = BatchItem.objects.filter(claimable, batch_id=batch_id).order_by("line")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        rows = list(candidates.values_list("id", "attempts", "status")[:limit])
        worn = [item_id for item_id, runs, status in rows if status == ItemStatus.RUNNING and runs >= max_runs]
        if worn:
            failed = BatchItem.objects.filter(id__in=worn).update(
                status=ItemStatus.FAILED,
                status_code=500,
                response={
                    "error": {
                        "message": f"The item's runner stopped {max_runs} times while it ran; it was not run again.",
                        "type": "server_error",
                        "param": None,
                        "code": "batch_item_abandoned",
                    }
                },
                lease_owner="",
                lease_until=None,
                finished_at=now,
            )
            Batch.objects.filter(id=batch_id).update(failed=F("failed") + failed)
            transaction.on_commit(lambda: batch_items_finished(ItemStatus.FAILED, failed))
        ids = [item_id for item_id, _, _ in rows if item_id not in set(worn)]
        if not ids:
            return []
        BatchItem.objects.filter(id__in=ids).update(
            status=ItemStatus.RUNNING,
            lease_owner=worker,
            lease_until=now + timedelta(seconds=lease_s),
            attempts=F("attempts") + 1,
            started_at=now,
            not_before=None,
        )
        found = BatchItem.objects.filter(id__in=ids).values_list("id", "line", "custom_id", "body", "attempts")
        return sorted((Claimed(*row) for row in found), key=lambda claimed: claimed.line)


def lease_renew(batch_id: str, worker: str, lease_s: float, item_ids: list[int]) -> None:
    """Renew the leases of the items this runner is working on (only those: an item whose
    task ended without its answer recorded lapses, and is taken again)."""
    now = timezone.now()
    with transaction.atomic():
        if item_ids:
            BatchItem.objects.filter(id__in=item_ids, status=ItemStatus.RUNNING, lease_owner=worker).update(
                lease_until=now + timedelta(seconds=lease_s)
            )
        Batch.objects.filter(id=batch_id).update(heartbeat_at=now)


def lease_release(batch_id: str, worker: str, handing_on: bool = False) -> None:
    """Give back the items this runner holds unanswered (it stops early): queued again, and
    the run they were given does not count. `handing_on`: the next slice's task follows, so
    the batch keeps its heartbeat (no sweep starts another runner meanwhile); otherwise it
    shows no sign of life, and the next executor or sweep takes it at once."""
    with transaction.atomic():
        BatchItem.objects.filter(batch_id=batch_id, status=ItemStatus.RUNNING, lease_owner=worker).update(
            status=ItemStatus.QUEUED, lease_owner="", lease_until=None, attempts=F("attempts") - 1
        )
        Batch.objects.filter(id=batch_id).update(heartbeat_at=timezone.now() if handing_on else None)


def batch_state(batch_id: str) -> BatchState:
    row = Batch.objects.values_list(*BatchState.__dataclass_fields__).get(id=batch_id)
    return BatchState(*row)


def items_open(batch_id: str) -> int:
    """Items not answered yet, whoever holds them."""
    return BatchItem.objects.filter(batch_id=batch_id, status__in=(ItemStatus.QUEUED, ItemStatus.RUNNING)).count()


def items_close(batch_id: str, status: str, code: str, message: str) -> int:
    """End every item still open (the batch was cancelled or expired)."""
    now = timezone.now()
    closed = BatchItem.objects.filter(batch_id=batch_id, status__in=(ItemStatus.QUEUED, ItemStatus.RUNNING)).update(
        status=status, error={"code": code, "message": message}, lease_owner="", lease_until=None, finished_at=now
    )
    batch_items_finished(status, closed)
    return closed


def outcomes_record(batch_id: str, outcomes: list[Outcome]) -> list[bool]:
    """Record each outcome if its item is still running; one transaction for all. Returns,
    per outcome, whether it was recorded (False: another runner recorded that item first).
    An answer the database refuses costs the whole turn a second try, each answer then in a
    savepoint of its own (three statements an answer instead of one, so only then)."""
    try:
        return _outcomes_write(batch_id, outcomes, careful=False)
    except (DataError, ValueError, UnicodeError):
        return _outcomes_write(batch_id, outcomes, careful=True)


def _outcomes_write(batch_id: str, outcomes: list[Outcome], *, careful: bool) -> list[bool]:
    now = timezone.now()
    recorded: list[bool] = []
    completed = failed = input_tokens = output_tokens = cached_tokens = 0
    cost = Decimal(0)
    with transaction.atomic():
        # In the order of the items' ids: two runners' transactions lock rows in one order.
        for outcome in sorted(outcomes, key=lambda o: o.item_id):
            running = BatchItem.objects.filter(id=outcome.item_id, status=ItemStatus.RUNNING)
            if outcome.retry_at is not None:
                done = running.filter(lease_owner=outcome.worker).update(
                    status=ItemStatus.QUEUED,
                    not_before=outcome.retry_at,
                    lease_owner="",
                    lease_until=None,
                    attempts=F("attempts") if outcome.counts_run else F("attempts") - 1,
                )
                recorded.append(bool(done))
                continue
            stored = _answer_store(running, outcome, now) if careful else _answer_plain(running, outcome, now)
            recorded.append(stored is not None)
            if stored is None:
                continue
            if stored == ItemStatus.SUCCEEDED:
                completed += 1
            else:
                failed += 1
            cost += outcome.cost_usd
            input_tokens += outcome.input_tokens
            output_tokens += outcome.output_tokens
            cached_tokens += outcome.cached_tokens
        if completed or failed:
            Batch.objects.filter(id=batch_id).update(
                completed=F("completed") + completed,
                failed=F("failed") + failed,
                cost_usd=F("cost_usd") + cost,
                input_tokens=F("input_tokens") + input_tokens,
                output_tokens=F("output_tokens") + output_tokens,
                cached_tokens=F("cached_tokens") + cached_tokens,
                heartbeat_at=now,
            )
    batch_items_finished(ItemStatus.SUCCEEDED, completed)
    batch_items_finished(ItemStatus.FAILED, failed)
    # The answers in the order they came, as the caller passed them.
    order = {id(o): i for i, o in enumerate(sorted(outcomes, key=lambda o: o.item_id))}
    return [recorded[order[id(o)]] for o in outcomes]


def _answer_fields(outcome: Outcome, now: datetime) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "status_code": outcome.status_code,
        "response": outcome.response,
        "error": outcome.error,
        "request_id": outcome.request_id,
        "model": outcome.model,
        "cost_usd": outcome.cost_usd,
        "lease_owner": "",
        "lease_until": None,
        "finished_at": now,
    }


def _answer_plain(running: Any, outcome: Outcome, now: datetime) -> str | None:
    return outcome.status if running.update(**_answer_fields(outcome, now)) else None


def _answer_store(running: Any, outcome: Outcome, now: datetime) -> str | None:
    """Write one answer in a savepoint of its own: one the database refuses (PostgreSQL takes
    no NUL character in JSON) is written again without what it refused, or as a failure, and
    never holds back the others of its turn."""
    fields = _answer_fields(outcome, now)
    # Refused: the savepoint is rolled back first, then the answer is written again below.
    with contextlib.suppress(DataError, ValueError, UnicodeError), transaction.atomic():
        return outcome.status if running.update(**fields) else None
    cleaned = json.loads(json.dumps(outcome.response).replace("\\u0000", ""))
    try:
        with transaction.atomic():
            return outcome.status if running.update(**{**fields, "response": cleaned}) else None
    except (DataError, ValueError, UnicodeError):
        logger.warning("Batch item %s: its answer could not be stored; it is failed instead", outcome.item_id)
    message = "The model's answer could not be stored (it holds characters the database refuses)."
    error = {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}
    failed = {**fields, "status": ItemStatus.FAILED, "status_code": 502, "response": error}
    return ItemStatus.FAILED if running.update(**failed) else None


_STOP = object()


class BatchStore:
    """One thread that runs the runner's database calls in order; outcomes waiting together
    are recorded in one transaction."""

    def __init__(self, name: str = "llmops-batch-store") -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(("call", fn, args, loop, future))
        return await future

    async def record(self, batch_id: str, outcome: Outcome) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(("record", batch_id, outcome, loop, future))
        return await future

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(30)

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                jobs = [job]
                # Everything waiting now goes in this round: the records as one transaction.
                while True:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        self._jobs.put(_STOP)
                        break
                    jobs.append(more)
                # In the order they came; records next to each other share a transaction.
                group: list[tuple[Any, ...]] = []
                for item in jobs:
                    if item[0] == "record":
                        group.append(item)
                        continue
                    _records_commit(group)
                    group = []
                    _, fn, args, loop, future = item
                    try:
                        _settle(loop, future, fn(*args), None)
                    except Exception as exc:
                        _settle(loop, future, None, exc)
                        _reconnect_later()
                _records_commit(group)
        finally:
            connection.close()


def _reconnect_later() -> None:
    # The error may be the connection's (the database restarted): the next call opens a new one.
    if not connection.in_atomic_block:
        connection.close()


def _records_commit(group: list[tuple[Any, ...]]) -> None:
    by_batch: dict[str, list[tuple[Any, ...]]] = {}
    for job in group:
        by_batch.setdefault(job[1], []).append(job)
    for batch_id, jobs in by_batch.items():
        try:
            results = outcomes_record(batch_id, [job[2] for job in jobs])
        except Exception as exc:
            for job in jobs:
                _settle(job[3], job[4], None, exc)
            _reconnect_later()
            continue
        for job, result in zip(jobs, results, strict=True):
            _settle(job[3], job[4], result, None)


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        logger.debug("A batch runner's event loop closed before its database call answered")
