"""Provider-native batches run: the database side (the runner's store thread), native_run and
NativeRun (check, submit, poll, collect), and each item's outcome.

While a provider holds them, a group's items are running with no lease end (a gateway
runner's claim takes a running item only once its lease lapsed) under the owner
`provider:<index of its provider batch>`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from caching.policies import policy_get
from llmops import catalog
from llmops.api.chat import completion_body
from llmops.batches import store
from llmops.batches.models import Batch, BatchItem, BatchStatus, Execution, ItemStatus
from llmops.batches.native.providers import (
    ADAPTERS,
    CANCELLED,
    EXPIRED,
    AnthropicBatches,
    Calls,
    OpenAIBatches,
    _endpoint,
    _snapshot,
)
from llmops.batches.store import Outcome
from llmops.batches.validation import Checked, item_request
from llmops.catalog import EndpointConfig
from llmops.errors import AuthenticationFailed, GatewayError, InvalidRequest
from llmops.pipeline import InferenceResult, new_request_id, request_preview
from llmops.pricing import cost_usd
from llmops.providers.base import Completion, ProviderCall, UpstreamError
from monitoring.outcomes import AttemptRecord, RequestOutcome, request_observed

if TYPE_CHECKING:
    from llmops.batches.runner import BatchRunner

logger = logging.getLogger(__name__)

RECORD_EVERY = 500
Answer = Completion | UpstreamError | GatewayError  # an item's answer, or why it has none


# --- the database side (the runner's store thread) ---


def provider_executed(batch_id: str) -> bool:
    return Batch.objects.filter(id=batch_id, execution=Execution.PROVIDER).exists()


def _owner(index: int) -> str:
    return f"provider:{index}"


def _entries(batch_id: str) -> list[dict[str, Any]]:
    return list(Batch.objects.values_list("provider_batches", flat=True).get(id=batch_id) or [])


def _queued(batch_id: str) -> list[tuple[int, dict[str, Any]]]:
    items = BatchItem.objects.filter(batch_id=batch_id, status=ItemStatus.QUEUED).order_by("line")
    return list(items.values_list("line", "body"))


def _held(batch_id: str, index: int) -> list[tuple[int, int, dict[str, Any]]]:
    """The items a provider batch holds and that have no result yet: id, line, body."""
    items = BatchItem.objects.filter(batch_id=batch_id, status=ItemStatus.RUNNING, lease_owner=_owner(index))
    return list(items.order_by("line").values_list("id", "line", "body"))


def _refuse(batch_id: str, errors: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        moved = Batch.objects.filter(id=batch_id, status=BatchStatus.IN_PROGRESS).update(
            status=BatchStatus.FAILED, errors={"object": "list", "data": errors}, failed_at=timezone.now(), total=0
        )
        if moved:
            BatchItem.objects.filter(batch_id=batch_id).delete()


def _claim(batch_id: str, entries: list[dict[str, Any]], lines: list[list[int]]) -> list[dict[str, Any]] | None:
    """Give each provider batch its items, once: the entries recorded (another runner's if it
    came first), or None when the batch is no longer in progress."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().only("status", "provider_batches").get(id=batch_id)
        if batch.status != BatchStatus.IN_PROGRESS:
            return None
        if batch.provider_batches:
            return batch.provider_batches
        for index, group in enumerate(lines):
            for start in range(0, len(group), 1000):
                BatchItem.objects.filter(
                    batch_id=batch_id, status=ItemStatus.QUEUED, line__in=group[start : start + 1000]
                ).update(
                    status=ItemStatus.RUNNING,
                    lease_owner=_owner(index),
                    lease_until=None,
                    attempts=F("attempts") + 1,
                    started_at=now,
                )
        Batch.objects.filter(id=batch_id).update(provider_batches=entries, heartbeat_at=now)
    return entries


def _entry_update(batch_id: str, index: int, changes: dict[str, Any]) -> dict[str, Any]:
    with transaction.atomic():
        entries = Batch.objects.select_for_update().values_list("provider_batches", flat=True).get(id=batch_id)
        entries[index] = {**entries[index], **changes}
        Batch.objects.filter(id=batch_id).update(provider_batches=entries, heartbeat_at=timezone.now())
    return entries[index]


def _submission_take(batch_id: str, index: int, worker: str, horizon_s: float) -> dict[str, Any] | None:
    """Become the one who submits this provider batch: when nobody submitted it, and nobody
    else is at it (or whoever was took longer than any attempt can: it died)."""
    with transaction.atomic():
        entries = Batch.objects.select_for_update().values_list("provider_batches", flat=True).get(id=batch_id)
        entry = entries[index]
        if entry["id"] is not None or entry.get("collected"):
            return None
        if entry.get("owner") not in ("", worker) and time.time() - entry.get("claimed_at", 0) < horizon_s:
            return None
        entries[index] = {**entry, "owner": worker, "claimed_at": time.time(), "submit_runs": entry["submit_runs"] + 1}
        Batch.objects.filter(id=batch_id).update(provider_batches=entries, heartbeat_at=timezone.now())
    return entries[index]


def _heartbeat(batch_id: str) -> None:
    Batch.objects.filter(id=batch_id).update(heartbeat_at=timezone.now())


# --- the run ---


async def native_run(runner: BatchRunner) -> str:
    """Run a provider-executed batch (after its validation): submit what is not submitted,
    poll until every provider batch ended ("ended") or the runner's slice is over ("paused")."""
    state = await runner.store.call(store.batch_state, runner.batch_id)
    if state.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        if await NativeRun(runner).work() == "paused":
            return "paused"
        state = await runner.store.call(store.batch_state, runner.batch_id)
    if state.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING):
        await runner._finalize()
    await runner._publish()
    return "ended"


class NativeRun:
    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner
        self.store = runner.store
        self.batch_id = runner.batch_id
        self.calls: dict[str, Calls] = {}  # per model, the calls this runner checked
        self.beat_at = 0.0

    async def work(self) -> str:
        entries = await self.store.call(_entries, self.batch_id)
        state = await self.store.call(store.batch_state, self.batch_id)
        if not entries and state.status == BatchStatus.IN_PROGRESS:
            entries = await self._check_and_claim()
            if entries is None:
                return "ended"
        while entries:
            state = await self.store.call(store.batch_state, self.batch_id)
            if state.status not in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
                return "ended"
            stopping = state.status == BatchStatus.CANCELLING or timezone.now() >= state.expires_at
            for index, entry in enumerate(entries):
                if not entry.get("collected"):
                    await self._advance(index, entry, stopping)
            entries = await self.store.call(_entries, self.batch_id)
            if all(entry.get("collected") for entry in entries):
                break
            if self._slice_over():
                return "paused"
            await self._wait(stopping)
        state = await self.store.call(store.batch_state, self.batch_id)
        if state.status == BatchStatus.CANCELLING:
            await self.store.call(
                store.items_close, self.batch_id, ItemStatus.CANCELLED, "batch_cancelled", "The batch was cancelled."
            )
        else:  # what is left never ran: the window (ours or the provider's) ended first
            await self.store.call(
                store.items_close,
                self.batch_id,
                ItemStatus.EXPIRED,
                "batch_expired",
                "The batch's completion window ended before this request ran.",
            )
        return "ended"

    def _slice_over(self) -> bool:
        return self.runner.until is not None and time.monotonic() >= self.runner.until

    async def _prepared(self, body: dict[str, Any]) -> tuple[EndpointConfig, ProviderCall]:
        """The model and the call for one item; raises GatewayError when the pipeline would
        refuse it or the provider's batch API cannot take it."""
        key = await catalog.api_key_by_id(self.runner.api_key_id)
        if key is None:
            raise AuthenticationFailed("The batch's API key was revoked or expired.", code="invalid_api_key")
        request = item_request(body, api_key=key)
        resolved, plan = await request_preview(request)
        endpoint = plan.first
        if plan.route or plan.cascade_steps:
            reason = f"{request.model!r} is a route: provider execution needs a model named directly."
        elif endpoint.provider not in ADAPTERS:
            reason = (
                f"{endpoint.name!r} is a {endpoint.provider} model, which has no batch API: provider execution "
                "takes OpenAI and Anthropic models."
            )
        else:
            policy = await policy_get(endpoint.name)
            resolved.call.prompt_cache = bool(policy and policy.prompt_caching)
            return endpoint, resolved.call
        raise InvalidRequest(reason, param="model", code="unsupported_for_provider_execution")

    async def _check_and_claim(self) -> list[dict[str, Any]] | None:
        checked = Checked()
        endpoints: dict[str, EndpointConfig] = {}
        lines: dict[str, list[int]] = {}
        for line, body in await self.store.call(_queued, self.batch_id):
            try:
                endpoint, call = await self._prepared(body)
            except GatewayError as exc:
                checked.refuse(line, exc.code or "invalid_request", exc.message, f"body.{exc.param or 'model'}")
                continue
            endpoints[endpoint.name] = endpoint
            self.calls.setdefault(endpoint.name, []).append((line, call))
            lines.setdefault(endpoint.name, []).append(line)
        if checked.bad_lines:
            await self.store.call(_refuse, self.batch_id, checked.error_list())
            return None
        entries = [
            {
                "provider": endpoint.provider,
                "model": name,
                "id": None,
                "status": "submitting",
                "endpoint": _snapshot(endpoint),
                "owner": "",
                "submit_runs": 0,
            }
            for name, endpoint in endpoints.items()
        ]
        claimed = await self.store.call(_claim, self.batch_id, entries, list(lines.values()))
        return claimed or []

    async def _advance(self, index: int, entry: dict[str, Any], stopping: bool) -> None:
        """One step of a provider batch: submit it, pass on a cancel, poll it, collect it."""
        adapter, endpoint = ADAPTERS[entry["provider"]], _endpoint(entry["endpoint"])
        try:
            if entry["id"] is None:
                if stopping:
                    await self.store.call(_entry_update, self.batch_id, index, {"status": "not_submitted"})
                    await self._collected(index)
                else:
                    await self._submit(index, adapter, endpoint)
                return
            if stopping and not entry.get("cancel_requested"):
                await self._cancel(index, entry, adapter, endpoint)
            status, ended, found = await adapter.retrieve(endpoint, entry["id"])
            if status != entry["status"]:
                await self.store.call(_entry_update, self.batch_id, index, {"status": status})
            if ended:
                await self._collect(index, entry, adapter, endpoint, found, stopping)
        except (ValueError, KeyError, TypeError, AttributeError):
            # The provider answered in a shape the gateway cannot read: asking again would not help.
            logger.exception("Batch %s: provider batch %s could not be read", self.batch_id, entry["id"])
            error = UpstreamError(f"The gateway could not read the provider's batch {entry['id']}.", kind="invalid")
            await self._fail_held(index, entry, endpoint, error)
            await self.store.call(_entry_update, self.batch_id, index, {"error": error.message})
            await self._collected(index)
        except UpstreamError as exc:
            if exc.transient:
                logger.warning("Batch %s: provider batch %s: %s (tried again)", self.batch_id, index, exc.message)
                return
            await self._fail_held(index, entry, endpoint, exc)
            await self.store.call(_entry_update, self.batch_id, index, {"error": exc.message})
            await self._collected(index)

    async def _submit(self, index: int, adapter: OpenAIBatches | AnthropicBatches, endpoint: EndpointConfig) -> None:
        horizon = 2 * settings.LLMOPS_UPSTREAM_TIMEOUT_S + settings.LLMOPS_BATCH_LEASE_S
        entry = await self.store.call(_submission_take, self.batch_id, index, self.runner.worker, horizon)
        if entry is None:
            return  # submitted, or being submitted by another runner
        calls = self.calls.get(entry["model"])
        if calls is None:  # resumed: the items' calls built again
            calls = []
            for item_id, line, body in await self.store.call(_held, self.batch_id, index):
                try:
                    calls.append((line, (await self._prepared(body))[1]))
                except GatewayError as exc:
                    await self._record(entry, endpoint, [(item_id, exc)])
            self.calls[entry["model"]] = calls
        if not calls:
            await self._collected(index)
            return
        try:
            provider_id, status = await adapter.submit(endpoint, self.batch_id, calls)
        except UpstreamError as exc:
            if exc.transient and entry["submit_runs"] >= settings.LLMOPS_BATCH_ITEM_RUNS:
                raise UpstreamError(exc.message, status=exc.status, error_type=exc.error_type, kind="invalid") from exc
            raise
        changes = {"id": provider_id, "status": status, "owner": "", "submitted_at": time.time()}
        await self.store.call(_entry_update, self.batch_id, index, changes)

    async def _cancel(
        self, index: int, entry: dict[str, Any], adapter: OpenAIBatches | AnthropicBatches, endpoint: EndpointConfig
    ) -> None:
        try:
            status = await adapter.cancel(endpoint, entry["id"])
        except UpstreamError as exc:
            if exc.transient:
                raise
            # It could not be cancelled (it ended meanwhile, most likely): polled as it is.
            logger.warning("Batch %s: provider batch %s not cancelled: %s", self.batch_id, entry["id"], exc.message)
            status = entry["status"]
        await self.store.call(_entry_update, self.batch_id, index, {"status": status, "cancel_requested": True})

    async def _collect(
        self,
        index: int,
        entry: dict[str, Any],
        adapter: OpenAIBatches | AnthropicBatches,
        endpoint: EndpointConfig,
        found: Any,
        stopping: bool,
    ) -> None:
        held = {line: item_id for item_id, line, _ in await self.store.call(_held, self.batch_id, index)}
        pending: list[tuple[int, Answer]] = []
        async for line, result in adapter.results(endpoint, found):
            item_id = held.pop(line, None)
            if item_id is None or result == EXPIRED or (result == CANCELLED and stopping):
                continue  # not this batch's, answered already, or never ran: closed at the end
            if result == CANCELLED:
                result = UpstreamError("The request was cancelled at the provider.", status=502)
            pending.append((item_id, result))  # type: ignore[arg-type]
            if len(pending) >= RECORD_EVERY:
                await self._record(entry, endpoint, pending)
                pending = []
        unanswered = adapter.unanswered(found)
        if not stopping and unanswered != EXPIRED:
            message = unanswered or f"The provider's batch {entry['id']} returned no result for this request."
            pending += [(item_id, UpstreamError(message, status=502)) for item_id in held.values()]
        await self._record(entry, endpoint, pending)
        await self._collected(index)

    async def _fail_held(
        self, index: int, entry: dict[str, Any], endpoint: EndpointConfig, error: UpstreamError
    ) -> None:
        held = await self.store.call(_held, self.batch_id, index)
        await self._record(entry, endpoint, [(item_id, error) for item_id, _, _ in held])

    async def _collected(self, index: int) -> None:
        await self.store.call(_entry_update, self.batch_id, index, {"collected": True})
        await self.runner._publish()

    async def _record(self, entry: dict[str, Any], endpoint: EndpointConfig, results: list[tuple[int, Answer]]) -> None:
        """Record each item's result once, and a metric for each one recorded here."""
        if not results:
            return
        latency_ms = (time.time() - entry.get("submitted_at", time.time())) * 1000
        key_id = self.runner.api_key_id
        built = [_outcome(entry, endpoint, key_id, item_id, result, latency_ms) for item_id, result in results]
        recorded = await self.store.call(store.outcomes_record, self.batch_id, [outcome for outcome, _ in built])
        for (_, observed), done in zip(built, recorded, strict=True):
            if done:
                request_observed(observed)

    async def _wait(self, stopping: bool) -> None:
        """The poll interval; over early when the batch is cancelled or its window ends (to
        pass that on at once) or the slice is over. The batch's heartbeat is kept meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + settings.LLMOPS_BATCH_PROVIDER_POLL_S
        step = min(settings.LLMOPS_BATCH_PROVIDER_POLL_S, settings.LLMOPS_BATCH_POLL_S)
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(step, left))
            if loop.time() - self.beat_at >= settings.LLMOPS_BATCH_LEASE_S / 3:
                self.beat_at = loop.time()
                await self.store.call(_heartbeat, self.batch_id)
            if self._slice_over():
                return
            if not stopping:
                state = await self.store.call(store.batch_state, self.batch_id)
                if state.status != BatchStatus.IN_PROGRESS or timezone.now() >= state.expires_at:
                    return


def _outcome(
    entry: dict[str, Any],
    endpoint: EndpointConfig,
    api_key_id: int,
    item_id: int,
    result: Answer,
    latency_ms: float,
) -> tuple[Outcome, RequestOutcome]:
    """One item's result as the runner records it, and as monitoring observes it."""
    request_id = new_request_id()
    ok = isinstance(result, Completion)
    status = 200 if ok else result.status
    attempt = AttemptRecord(endpoint.name, "ok" if ok else "error", latency_ms, status)
    observed = RequestOutcome(
        request_id=request_id,
        created_at=timezone.now(),
        api_key_id=api_key_id,
        endpoint="batch_native",
        model=entry["model"],
        status="ok" if ok else "error",
        http_status=status,
        latency_ms=latency_ms,
        answered_by=endpoint.name if ok else "",
        provider=endpoint.provider,
        cache_status="bypass",
        attempts=[attempt],
    )
    if not ok:
        observed.error_type, observed.error_message = result.error_type, result.message
        error = {
            "message": result.message,
            "type": result.error_type,
            "param": None,
            "code": getattr(result, "code", None),
        }
        failed = Outcome(
            item_id,
            ItemStatus.FAILED,
            status_code=status,
            response={"error": error},
            request_id=request_id,
        )
        return failed, observed
    usage = result.usage
    cost = cost_usd(endpoint, usage, batch=True)
    observed.usage, observed.cost_usd = usage, cost
    answer = InferenceResult(
        request_id=request_id,
        model=endpoint.name,
        provider=endpoint.provider,
        text=result.text,
        finish_reason=result.finish_reason,
        usage=usage,
        cost_usd=cost,
        latency_ms=latency_ms,
        requested_model=entry["model"],
        cache="bypass",
        attempts=[attempt],
    )
    body = completion_body(answer)
    body["llmops"].update(execution=Execution.PROVIDER.value, provider_batch_id=entry["id"])
    outcome = Outcome(
        item_id,
        ItemStatus.SUCCEEDED,
        status_code=200,
        response=body,
        request_id=request_id,
        model=endpoint.name,
        cost_usd=cost,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
    )
    return outcome, observed
