"""The batch engine: one runner works through one batch on one event loop, many items at
once, each through the one pipeline (so answer caching and its in-flight sharing, routing,
fallbacks, key limits and metrics apply to every item).

    validating   the input checked line by line (llmops.batches.validation); items written
    in_progress  items claimed in turns under a lease, each answered by `infer`, recorded
                 once (llmops.batches.store); leases renewed while the runner lives
    finalizing   the output and error files written from the items' rows (output.py)
    completed    or cancelled (cancel asked), expired (its completion window passed), failed
                 (validation refused it)

Bounds: the runner holds at most LLMOPS_BATCH_RUNNER_ITEMS items at once; each upstream call
waits for its model's slot behind interactive requests and within the batch share of the
model's concurrency, and for the model's requests- and tokens-per-minute (shared by every
process in Redis). Several runners on one batch (several workers, or one resumed while
another still lives) share it through the leases. A runner that dies leaves its items
leased: once the lease lapses another runner takes them; an item whose answer was recorded
is never asked again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from llmops import catalog
from llmops.api.chat import completion_body
from llmops.batches import native, output, store
from llmops.batches.files import file_lines
from llmops.batches.models import Batch, BatchItem, BatchStatus, Execution, ItemStatus
from llmops.batches.progress import batch_progress, progress_publish
from llmops.batches.store import BatchStore, Claimed, Outcome
from llmops.batches.validation import Checked, LineChecker, ParsedItem, item_request
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.pipeline import infer
from llmops.providers.base import UpstreamError

logger = logging.getLogger(__name__)

LINES_PER_READ = 2000
ITEMS_PER_INSERT = 1000
# A Celery slice that is over stops taking items and lets those in flight end for this
# long (well inside the task's soft time limit) before giving the rest back.
SLICE_GRACE_S = 60.0
STOPS = {
    ItemStatus.CANCELLED: ("batch_cancelled", "The batch was cancelled."),
    ItemStatus.EXPIRED: ("batch_expired", "The batch's completion window ended before this request ran."),
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# --- validation (synchronous parts run on the store's thread) ---


def _line_reader(file_id: str):
    lines = file_lines(file_id)
    while True:
        chunk = [line for _, line in zip(range(LINES_PER_READ), lines, strict=False)]
        if not chunk:
            return
        yield chunk


def _next_lines(reader) -> list[tuple[int, bytes]] | None:
    return next(reader, None)


class ValidationTaken(Exception):
    """Another runner checks this batch's input now (this one was too slow, or came second)."""


def _validation_begin(batch_id: str, worker: str, lease_s: float) -> tuple[Batch, bool] | None:
    """Become the batch's one validator, or None while another one lives."""
    now = timezone.now()
    stale = now - timedelta(seconds=lease_s)
    with transaction.atomic():
        taken = (
            Batch.objects.filter(id=batch_id, status=BatchStatus.VALIDATING)
            .filter(Q(validator="") | Q(validator=worker) | Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale))
            .update(validator=worker, heartbeat_at=now)
        )
        if not taken:
            return None
        # A validator that died (or lost its turn) may have written some items: start afresh.
        BatchItem.objects.filter(batch_id=batch_id).delete()
    batch = Batch.objects.select_related("input_file").get(id=batch_id)
    return batch, batch.input_file is not None


def _still_validator(batch_id: str, worker: str) -> None:
    """Renew this runner's turn as validator, in the caller's transaction; raise ValidationTaken
    when another runner took it over."""
    if not Batch.objects.filter(id=batch_id, validator=worker).update(heartbeat_at=timezone.now()):
        raise ValidationTaken(batch_id)


# The columns an item is written with (the others are NULL until it runs).
ITEM_COLUMNS = ("batch_id", "line", "custom_id", "body", "status", "attempts", "lease_owner", "request_id", "model")
ITEM_COLUMNS += ("cost_usd",)


def _items_insert(batch_id: str, worker: str, items: list[ParsedItem]) -> None:
    """Write checked items: by COPY on PostgreSQL, one prepared statement on SQLite. Not
    through bulk_create, whose model instances cost six times as much (0.49 s for 10,000
    items against 0.08 s on SQLite), most of a batch's validation."""
    rows = [(batch_id, i.line, i.custom_id, json.dumps(i.body), ItemStatus.QUEUED, 0, "", "", "", "0") for i in items]
    table = connection.ops.quote_name(BatchItem._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(name) for name in ITEM_COLUMNS)
    with transaction.atomic():
        _still_validator(batch_id, worker)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join(["%s"] * len(ITEM_COLUMNS))
                cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)


def _validation_end(batch_id: str, worker: str, checked: Checked, failure: str | None) -> None:
    now = timezone.now()
    errors = checked.error_list()
    if failure:
        errors.append({"code": "invalid_file", "line": None, "message": failure, "param": "input_file_id"})
    with transaction.atomic():
        _still_validator(batch_id, worker)
        total = BatchItem.objects.filter(batch_id=batch_id).count()
        if not errors and not total:
            errors.append(
                {"code": "empty_file", "line": None, "message": "The input file holds no requests.", "param": None}
            )
        batches = Batch.objects.filter(id=batch_id, status=BatchStatus.VALIDATING)
        if errors:
            BatchItem.objects.filter(batch_id=batch_id).delete()
            batches.update(
                status=BatchStatus.FAILED, errors={"object": "list", "data": errors}, failed_at=now, validator=""
            )
            return
        models = checked.models
        moved = batches.update(
            status=BatchStatus.IN_PROGRESS,
            in_progress_at=now,
            total=total,
            estimated_input_tokens=checked.input_tokens,
            estimated_cost_usd=checked.cost,
            model=next(iter(models)) if len(models) == 1 else "",
            heartbeat_at=now,
            validator="",
        )
        if not moved:  # cancelled while it was being checked: nothing of it runs
            BatchItem.objects.filter(batch_id=batch_id).delete()
            Batch.objects.filter(id=batch_id).update(validator="")


def _validation_failed(batch_id: str, worker: str, message: str) -> None:
    """The input could not be checked or stored (what the database refuses, say): the batch
    fails, saying so, rather than being checked again and again."""
    with transaction.atomic():
        if not Batch.objects.filter(id=batch_id, validator=worker).exists():
            return
        BatchItem.objects.filter(batch_id=batch_id).delete()
        error = {"code": "invalid_file", "line": None, "message": message, "param": "input_file_id"}
        Batch.objects.filter(id=batch_id, status=BatchStatus.VALIDATING).update(
            status=BatchStatus.FAILED,
            errors={"object": "list", "data": [error]},
            failed_at=timezone.now(),
            validator="",
        )


def _progress_of(batch_id: str) -> dict:
    return batch_progress(Batch.objects.get(id=batch_id))


class BatchRunner:
    def __init__(self, batch_id: str, *, store_: BatchStore, worker: str, until: float | None = None) -> None:
        self.batch_id = batch_id
        self.store = store_
        self.worker = worker
        self.until = until  # a Celery task's slice ends here (monotonic time); the next task resumes
        self.running: dict[asyncio.Task[None], Claimed] = {}
        self.asked = 0  # items this runner sent to the pipeline
        self._wake = asyncio.Event()
        # Claims come in turns of a quarter of the runner's room; `_drained_at` is when the
        # last claim found nothing (None: it found some).
        self._claim_room = max(1, settings.LLMOPS_BATCH_RUNNER_ITEMS // 4)
        self._drained_at: float | None = None

    async def run(self) -> str:
        """Work on the batch until it ended ("ended") or the slice is over ("paused")."""
        self.api_key_id = await self.store.call(_api_key_of, self.batch_id)
        state = await self.store.call(store.batch_state, self.batch_id)
        if state.status == BatchStatus.VALIDATING:
            await self._validate()
            state = await self.store.call(store.batch_state, self.batch_id)
        if state.status == BatchStatus.VALIDATING:
            return "ended"  # another runner checks its input, and runs it after
        if state.in_progress_at is None and state.validator_alive(settings.LLMOPS_BATCH_LEASE_S):
            return "ended"  # cancelled while its validator still checks: that runner ends it
        if await self.store.call(native.provider_executed, self.batch_id):
            return await native.native_run(self)  # by the providers' own batch APIs
        if state.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
            outcome = await self._work()
            if outcome == "paused":
                return outcome
        state = await self.store.call(store.batch_state, self.batch_id)
        if state.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING):
            await self._finalize()
        await self._publish()
        return "ended"

    async def _validate(self) -> None:
        begun = await self.store.call(_validation_begin, self.batch_id, self.worker, settings.LLMOPS_BATCH_LEASE_S)
        if begun is None:
            return  # another runner checks it now
        batch, present = begun
        try:
            await self._check(batch, present)
        except ValidationTaken:
            logger.info("Batch %s: another runner took over its validation", self.batch_id)
        except (DatabaseError, ValueError, UnicodeError) as exc:
            # Something in the input the database cannot store, which the line checks let by.
            logger.warning("Batch %s: its input could not be stored (%s)", self.batch_id, type(exc).__name__)
            await self.store.call(
                _validation_failed, self.batch_id, self.worker, f"The input could not be stored: {type(exc).__name__}."
            )

    async def _check(self, batch: Batch, present: bool) -> None:
        key = await catalog.api_key_by_id(batch.api_key_id)
        failure = None
        discounted = batch.execution == Execution.PROVIDER
        checker = LineChecker(endpoint=batch.endpoint, api_key=key, discounted=discounted) if key else None
        if key is None:
            failure = "The batch's API key was revoked or expired before it ran."
        elif not present:
            failure = f"The input file {batch.input_file_ref} was deleted before the batch ran."
        else:
            # The store's thread reads the next lines and writes the checked items while this
            # loop checks: reading, checking and writing overlap.
            reader = await self.store.call(_line_reader, batch.input_file_id)
            writes: list[asyncio.Future[None]] = []
            upcoming = asyncio.ensure_future(self.store.call(_next_lines, reader))
            try:
                while (lines := await upcoming) is not None:
                    upcoming = asyncio.ensure_future(self.store.call(_next_lines, reader))
                    for number, raw in lines:
                        await checker.check(number, raw)
                    checked = checker.checked
                    if checked.bad_lines == 0 and len(checked.items) >= ITEMS_PER_INSERT:
                        items, checked.items = checked.items, []
                        writes.append(
                            asyncio.ensure_future(self.store.call(_items_insert, self.batch_id, self.worker, items))
                        )
                if checker.checked.bad_lines == 0 and checker.checked.items:
                    items, checker.checked.items = checker.checked.items, []
                    writes.append(
                        asyncio.ensure_future(self.store.call(_items_insert, self.batch_id, self.worker, items))
                    )
            finally:
                upcoming.cancel()
                await asyncio.gather(upcoming, *writes, return_exceptions=True)
            for write in writes:
                write.result()  # a write that failed fails the validation
        checked = checker.checked if checker is not None else Checked()
        await self.store.call(_validation_end, self.batch_id, self.worker, checked, failure)

    async def _work(self) -> str:
        lease = settings.LLMOPS_BATCH_LEASE_S
        poll = settings.LLMOPS_BATCH_POLL_S
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + lease / 3
        check_at = 0.0
        grace_until: float | None = None  # the slice is over: no new items, the running ones may end
        published = None
        stop = outcome = ""
        try:
            while True:
                now = loop.time()
                if now >= check_at:
                    check_at = now + poll
                    state = await self.store.call(store.batch_state, self.batch_id)
                    if state.status == BatchStatus.CANCELLING:
                        stop = ItemStatus.CANCELLED
                        break
                    if state.status != BatchStatus.IN_PROGRESS:
                        break
                    if timezone.now() >= state.expires_at:
                        stop = ItemStatus.EXPIRED
                        break
                    figures = (state.completed, state.failed, state.cost_usd)
                    if figures != published:
                        published = figures
                        await self._publish()
                    if grace_until is None and self.until is not None and time.monotonic() >= self.until:
                        grace_until = now + SLICE_GRACE_S
                if grace_until is not None and (not self.running or now >= grace_until):
                    outcome = "paused"
                    return outcome
                claimed: list[Claimed] = []
                if grace_until is None and self._claim_due(now):
                    room = settings.LLMOPS_BATCH_RUNNER_ITEMS - len(self.running)
                    claimed = await self.store.call(
                        store.item_claim, self.batch_id, self.worker, room, lease, settings.LLMOPS_BATCH_ITEM_RUNS
                    )
                    self._drained_at = None if claimed else now
                    for item in claimed:
                        task = asyncio.ensure_future(self._item(item))
                        self.running[task] = item
                        task.add_done_callback(self._item_done)
                # Nothing here and nothing to take: done, unless others hold the rest (or
                # retries are due later), which this runner then waits for.
                if not self.running and not claimed and not await self.store.call(store.items_open, self.batch_id):
                    break
                if loop.time() >= renew_at:
                    held = [item.id for item in self.running.values()]
                    await self.store.call(store.lease_renew, self.batch_id, self.worker, lease, held)
                    renew_at = loop.time() + lease / 3
                await self._pause(min(check_at, renew_at))
        finally:
            await self._stop_items(stop, handing_on=outcome == "paused")
        return "ended"

    def _claim_due(self, now: float) -> bool:
        """Room for a turn of items (a quarter of the runner's), and the last claim found some
        or was a poll ago: claims come in turns, not one per answer."""
        if settings.LLMOPS_BATCH_RUNNER_ITEMS - len(self.running) < self._claim_room:
            return False
        return self._drained_at is None or now - self._drained_at >= settings.LLMOPS_BATCH_POLL_S

    def _item_done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Batch %s: an item's run failed", self.batch_id, exc_info=task.exception())
        if not self.running or self._claim_due(asyncio.get_running_loop().time()):
            self._wake.set()

    async def _pause(self, until: float) -> None:
        """Until a turn of items is due, nothing runs any more, or `until` (loop time)."""
        loop = asyncio.get_running_loop()
        self._wake.clear()
        if self._drained_at is not None:
            until = min(until, self._drained_at + settings.LLMOPS_BATCH_POLL_S)
        if self.running and self._claim_due(loop.time()):
            await asyncio.sleep(0)  # let the answers in flight move on before the next claim
            return
        with contextlib.suppress(TimeoutError):  # `until` came first
            async with asyncio.timeout_at(max(until, loop.time())):
                await self._wake.wait()

    async def _stop_items(self, stop: str, *, handing_on: bool) -> None:
        """Stop the items still running here, end the open ones of a cancelled or expired
        batch, and give back the leases of the rest (also on the way out of a runner that is
        itself cancelled: a worker shutting down)."""
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.running.clear()
        if stop:
            code, message = STOPS[stop]
            await asyncio.shield(self.store.call(store.items_close, self.batch_id, stop, code, message))
        await asyncio.shield(self.store.call(store.lease_release, self.batch_id, self.worker, handing_on))

    async def _item(self, item: Claimed) -> None:
        # The key as configured now: revoked meanwhile, the rest of its batch is refused.
        key = await catalog.api_key_by_id(self.api_key_id)
        outcome = await self._answer(item, key)
        await self.store.record(self.batch_id, outcome)

    async def _answer(self, item: Claimed, key: ApiKeyInfo | None) -> Outcome:
        if key is None:
            message = "The batch's API key was revoked or expired."
            return _failed(item, 401, "authentication_error", message, "invalid_api_key")
        try:
            request = item_request(item.body, api_key=key)
            self.asked += 1
            result = await infer(request)
        except GatewayError as exc:
            if exc.status == 429 and exc.code == "rate_limit_exceeded":
                # The key's own requests or tokens per minute: the item waits its turn, and
                # the wait is not one of its runs.
                delay = _retry_delay(0, exc.headers.get("Retry-After"))
                return self._again(item, delay, counts_run=False)
            return _failed(item, exc.status, exc.error_type, exc.message, exc.code)
        except UpstreamError as exc:
            if exc.transient and item.runs < settings.LLMOPS_BATCH_ITEM_RUNS:
                return self._again(item, _retry_delay(item.runs, exc.retry_after), counts_run=True)
            return _failed(item, exc.status, exc.error_type, exc.message, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Batch %s item %s failed in the gateway", self.batch_id, item.custom_id)
            return _failed(item, 500, "server_error", "The gateway failed to handle this request.", None)
        usage = result.usage
        return Outcome(
            item.id,
            ItemStatus.SUCCEEDED,
            status_code=200,
            response=completion_body(result),
            request_id=result.request_id,
            model=result.model,
            cost_usd=result.cost_usd,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
        )

    def _again(self, item: Claimed, delay: float, *, counts_run: bool) -> Outcome:
        retry_at = timezone.now() + timedelta(seconds=delay)
        return Outcome(item.id, ItemStatus.QUEUED, retry_at=retry_at, worker=self.worker, counts_run=counts_run)

    async def _finalize(self) -> None:
        if await self.store.call(output.batch_finalizing, self.batch_id):
            await self._publish()
            await self.store.call(output.batch_finalize, self.batch_id)

    async def _publish(self) -> None:
        await progress_publish(await self.store.call(_progress_of, self.batch_id))


def _api_key_of(batch_id: str) -> int:
    return Batch.objects.values_list("api_key_id", flat=True).get(id=batch_id)


def _failed(item: Claimed, status: int, error_type: str, message: str, code: str | None) -> Outcome:
    return Outcome(
        item.id,
        ItemStatus.FAILED,
        status_code=status,
        response={"error": {"message": message, "type": error_type, "param": None, "code": code}},
    )


def _retry_delay(runs: int, retry_after: str | None) -> float:
    try:
        asked = float(retry_after) if retry_after else 0.0
    except ValueError:
        asked = 0.0
    return max(asked, random.uniform(0, min(60.0, 2.0**runs)))


async def batch_run(batch_id: str, *, store_: BatchStore | None = None, until: float | None = None) -> str:
    """Run a batch here until it ended ("ended") or `until` (monotonic) passed ("paused")."""
    own = store_ is None
    db = store_ or BatchStore()
    try:
        return await BatchRunner(batch_id, store_=db, worker=worker_name(), until=until).run()
    finally:
        if own:
            await asyncio.to_thread(db.close)
