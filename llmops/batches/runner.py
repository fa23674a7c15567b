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
import logging
import os
import random
import secrets
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from llmops import catalog
from llmops.api.chat import completion_body
from llmops.batches import output, store
from llmops.batches.files import file_lines
from llmops.batches.models import Batch, BatchItem, BatchStatus, ItemStatus
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


def _validation_begin(batch_id: str) -> tuple[Batch, bool]:
    batch = Batch.objects.select_related("input_file").get(id=batch_id)
    # A runner that died while validating may have written some items: start afresh.
    BatchItem.objects.filter(batch_id=batch_id).delete()
    Batch.objects.filter(id=batch_id).update(heartbeat_at=timezone.now())
    return batch, batch.input_file is not None


def _items_insert(batch_id: str, items: list[ParsedItem]) -> None:
    BatchItem.objects.bulk_create(
        [BatchItem(batch_id=batch_id, line=i.line, custom_id=i.custom_id, body=i.body) for i in items],
        batch_size=ITEMS_PER_INSERT,
    )


def _validation_end(batch_id: str, checked: Checked, failure: str | None) -> str:
    now = timezone.now()
    errors = checked.error_list()
    if failure:
        errors.append({"code": "invalid_file", "line": None, "message": failure, "param": "input_file_id"})
    total = BatchItem.objects.filter(batch_id=batch_id).count()
    if not errors and not total:
        errors.append(
            {"code": "empty_file", "line": None, "message": "The input file holds no requests.", "param": None}
        )
    batches = Batch.objects.filter(id=batch_id, status=BatchStatus.VALIDATING)
    if errors:
        BatchItem.objects.filter(batch_id=batch_id).delete()
        batches.update(status=BatchStatus.FAILED, errors={"object": "list", "data": errors}, failed_at=now)
        return BatchStatus.FAILED
    models = checked.models
    moved = batches.update(
        status=BatchStatus.IN_PROGRESS,
        in_progress_at=now,
        total=total,
        estimated_input_tokens=checked.input_tokens,
        estimated_cost_usd=checked.cost,
        model=next(iter(models)) if len(models) == 1 else "",
        heartbeat_at=now,
    )
    if not moved:  # cancelled while it was being checked: nothing of it runs
        BatchItem.objects.filter(batch_id=batch_id).delete()
    return Batch.objects.values_list("status", flat=True).get(id=batch_id)


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

    async def run(self) -> str:
        """Work on the batch until it ended ("ended") or the slice is over ("paused")."""
        self.api_key_id = await self.store.call(_api_key_of, self.batch_id)
        state = await self.store.call(store.batch_state, self.batch_id)
        if state.status == BatchStatus.VALIDATING:
            await self._validate()
            state = await self.store.call(store.batch_state, self.batch_id)
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
        batch, present = await self.store.call(_validation_begin, self.batch_id)
        key = await catalog.api_key_by_id(batch.api_key_id)
        failure = None
        checker = LineChecker(endpoint=batch.endpoint, api_key=key) if key is not None else None
        if key is None:
            failure = "The batch's API key was revoked or expired before it ran."
        elif not present:
            failure = f"The input file {batch.input_file_ref} was deleted before the batch ran."
        else:
            reader = await self.store.call(_line_reader, batch.input_file_id)
            while (lines := await self.store.call(_next_lines, reader)) is not None:
                for number, raw in lines:
                    await checker.check(number, raw)
                checked = checker.checked
                if checked.bad_lines == 0 and len(checked.items) >= ITEMS_PER_INSERT:
                    await self.store.call(_items_insert, self.batch_id, checked.items)
                    checked.items = []
        checked = checker.checked if checker is not None else Checked()
        if checked.bad_lines == 0 and checked.items:
            await self.store.call(_items_insert, self.batch_id, checked.items)
            checked.items = []
        await self.store.call(_validation_end, self.batch_id, checked, failure)

    async def _work(self) -> str:
        lease = settings.LLMOPS_BATCH_LEASE_S
        poll = settings.LLMOPS_BATCH_POLL_S
        capacity = settings.LLMOPS_BATCH_RUNNER_ITEMS
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + lease / 3
        published = None
        stop = ""
        try:
            while True:
                state = await self.store.call(store.batch_state, self.batch_id)
                if state.status == BatchStatus.CANCELLING:
                    stop = "cancelled"
                    break
                if state.status != BatchStatus.IN_PROGRESS:
                    break
                if timezone.now() >= state.expires_at:
                    stop = "expired"
                    break
                figures = (state.completed, state.failed, state.cost_usd)
                if figures != published:
                    published = figures
                    await self._publish()
                if self.until is not None and time.monotonic() >= self.until:
                    return "paused"
                claimed: list[Claimed] = []
                room = capacity - len(self.running)
                if room >= max(1, capacity // 4):
                    claimed = await self.store.call(
                        store.item_claim, self.batch_id, self.worker, room, lease, settings.LLMOPS_BATCH_ITEM_RUNS
                    )
                    for item in claimed:
                        self.running[asyncio.ensure_future(self._item(item))] = item
                # Nothing here and nothing to take: done, unless others hold the rest (or
                # retries are due later), which this runner then waits for.
                if not self.running and not claimed and not await self.store.call(store.items_open, self.batch_id):
                    break
                if loop.time() >= renew_at:
                    await self.store.call(store.lease_renew, self.batch_id, self.worker, lease)
                    renew_at = loop.time() + lease / 3
                if self.running:
                    done, _ = await asyncio.wait(self.running, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        self.running.pop(task, None)
                        if not task.cancelled() and task.exception() is not None:
                            logger.error("Batch %s: an item's run failed", self.batch_id, exc_info=task.exception())
                else:
                    await asyncio.sleep(poll)
        finally:
            await self._stop_items()
        if stop == "cancelled":
            await self.store.call(
                store.items_close, self.batch_id, ItemStatus.CANCELLED, "batch_cancelled", "The batch was cancelled."
            )
        elif stop == "expired":
            await self.store.call(
                store.items_close,
                self.batch_id,
                ItemStatus.EXPIRED,
                "batch_expired",
                "The batch's completion window ended before this request ran.",
            )
        return "ended"

    async def _stop_items(self) -> None:
        """Stop the items still running here and give back their leases (also on the way out of
        a runner that is itself cancelled: a worker shutting down)."""
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.wait(self.running)
        self.running.clear()
        await asyncio.shield(self.store.call(store.lease_release, self.batch_id, self.worker))

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
        except (GatewayError, UpstreamError) as exc:
            status = exc.status
            transient = status == 429 or (isinstance(exc, UpstreamError) and exc.transient)
            if transient and item.runs < settings.LLMOPS_BATCH_ITEM_RUNS:
                delay = _retry_delay(item.runs, _retry_after(exc))
                return Outcome(item.id, ItemStatus.QUEUED, retry_at=timezone.now() + timedelta(seconds=delay))
            code = getattr(exc, "code", None)
            return _failed(item, status, exc.error_type, exc.message, code)
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

    async def _finalize(self) -> None:
        if await self.store.call(output.batch_finalizing, self.batch_id):
            await self._publish()
            await self.store.call(output.batch_finalize, self.batch_id)

    async def _publish(self) -> None:
        await progress_publish(await self.store.call(_progress_of, self.batch_id))


def _retry_after(exc: GatewayError | UpstreamError) -> str | None:
    if isinstance(exc, UpstreamError):
        return exc.retry_after
    return exc.headers.get("Retry-After")


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
