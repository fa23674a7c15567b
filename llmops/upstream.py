"""What every upstream call takes while it runs: a slot of its model's concurrency limit
and a place in this process's in-flight count. The pipeline's attempt loop and the
semantic cache's embedding calls both take them here, so both are bounded and counted
alike; whatever takes a slot gives it back with `release()` on every way out."""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections import deque

from django.conf import settings
from django.utils import timezone

from llmops.catalog import EndpointConfig
from llmops.pricing import cost_usd
from llmops.providers import provider_for
from llmops.providers.base import EmbeddingProvider, Embeddings, UpstreamError
from llmops.usage import Usage
from monitoring.outcomes import AttemptRecord, RequestOutcome, request_observed
from monitoring.prometheus import upstream_in_flight_set


class InFlight:
    """Upstream calls this process holds open right now, in all and per model (routing's
    least-in-flight balancing reads it), and the most it ever held. The server's event loop
    and the embedded batch runner's both count here; Prometheus's gauge is set under the lock."""

    current = 0
    peak = 0
    entered = 0  # calls ever started (the idle collector's sign of activity)
    by_model: dict[str, int] = {}
    _lock = threading.Lock()

    @classmethod
    def enter(cls, model: str) -> None:
        with cls._lock:
            cls.current += 1
            cls.entered += 1
            cls.by_model[model] = cls.by_model.get(model, 0) + 1
            if cls.current > cls.peak:
                cls.peak = cls.current
            upstream_in_flight_set(model, cls.by_model[model])

    @classmethod
    def leave(cls, model: str) -> None:
        with cls._lock:
            cls.current -= 1
            cls.by_model[model] -= 1
            upstream_in_flight_set(model, cls.by_model[model])


class _Waiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ModelSlots:
    """A model's concurrency limit in this process, shared by every event loop in it (the
    server's and the embedded batch runner's), so that the catalog's figure holds for the
    process whoever calls. When a slot frees, a waiting interactive request gets it before
    any batch item, and batch items hold at most `batch_cap` slots at once: a running batch
    leaves the rest to interactive requests, which then wait for no batch item."""

    __slots__ = ("_batch_waiting", "_lock", "_waiting", "batch_cap", "batch_used", "limit", "used")

    def __init__(self, limit: int, batch_cap: int) -> None:
        self.limit = limit
        self.batch_cap = batch_cap
        self.used = 0
        self.batch_used = 0
        self._lock = threading.Lock()
        self._waiting: deque[_Waiter] = deque()
        self._batch_waiting: deque[_Waiter] = deque()

    async def acquire(self, *, batch: bool) -> None:
        with self._lock:
            if batch:
                free = not self._waiting and not self._batch_waiting and self._batch_room()
            else:
                free = not self._waiting and self.used < self.limit
            if free:
                self._take(batch)
                return
            waiter = _Waiter(asyncio.get_running_loop())
            (self._batch_waiting if batch else self._waiting).append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.granted:
                    self._release(batch)  # handed a slot just as it was cancelled: pass it on
                else:
                    (self._batch_waiting if batch else self._waiting).remove(waiter)
            raise

    def release(self, *, batch: bool) -> None:
        with self._lock:
            self._release(batch)

    def _batch_room(self) -> bool:
        return self.used < self.limit and self.batch_used < self.batch_cap

    def _take(self, batch: bool) -> None:
        self.used += 1
        if batch:
            self.batch_used += 1

    def _release(self, batch: bool) -> None:
        self.used -= 1
        if batch:
            self.batch_used -= 1
        while self._waiting and self.used < self.limit:
            self._grant(self._waiting.popleft(), batch=False)
        while self._batch_waiting and self._batch_room():
            self._grant(self._batch_waiting.popleft(), batch=True)

    def _grant(self, waiter: _Waiter, *, batch: bool) -> None:
        try:
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)
        except RuntimeError:
            return  # its event loop is closed: nobody waits there any more
        self._take(batch)
        waiter.granted = True


_slots: dict[tuple[str, int, int], ModelSlots] = {}
_slots_lock = threading.Lock()


def batch_cap(limit: int) -> int:
    """The slots of a model's `limit` that batch items may hold (at least one)."""
    return max(1, math.floor(limit * settings.LLMOPS_BATCH_CONCURRENCY_SHARE))


def model_slots(endpoint: EndpointConfig) -> ModelSlots | None:
    if not endpoint.max_concurrency:
        return None
    key = (endpoint.name, endpoint.max_concurrency, batch_cap(endpoint.max_concurrency))
    slots = _slots.get(key)
    if slots is None:
        with _slots_lock:
            slots = _slots.setdefault(key, ModelSlots(key[1], key[2]))
    return slots


def upstream_reset() -> None:
    """Forget every model's slots (tests: a new configuration of limits starts afresh)."""
    with _slots_lock:
        _slots.clear()


class UpstreamSlot:
    """One upstream call's hold on its model: taken by `upstream_slot`, given back once."""

    __slots__ = ("_slots", "batch", "held", "model")

    def __init__(self, slots: ModelSlots | None, model: str, batch: bool) -> None:
        self._slots = slots
        self.model = model
        self.batch = batch
        self.held = True
        InFlight.enter(model)

    def release(self) -> None:
        if self.held:
            self.held = False
            InFlight.leave(self.model)
            if self._slots is not None:
                self._slots.release(batch=self.batch)


async def upstream_slot(endpoint: EndpointConfig, *, batch: bool = False) -> UpstreamSlot:
    """Wait for a free slot of the model's concurrency limit (per process) and take it."""
    slots = model_slots(endpoint)
    if slots is not None:
        await slots.acquire(batch=batch)  # cancelled while waiting: nothing was taken
    return UpstreamSlot(slots, endpoint.name, batch)


async def upstream_embed(endpoint: EndpointConfig, texts: list[str], *, api_key_id: int | None) -> Embeddings:
    """Embeddings from a catalog model through the provider interface, like any other
    upstream call: under the model's concurrency limit, in the in-flight count, costed from
    the catalog's prices and recorded as one `embeddings` request of the key that caused it."""
    request_id = secrets.token_hex(12)
    started = time.perf_counter()
    provider = provider_for(endpoint.provider)
    if not isinstance(provider, EmbeddingProvider):
        raise UpstreamError(f"{endpoint.name} is a {endpoint.provider} model, which computes no embeddings.")
    status, http_status, error_type, message = "ok", 200, "", ""
    usage = Usage()
    slot = await upstream_slot(endpoint)
    try:
        embeddings = await provider.embed(endpoint, texts)
        usage = embeddings.usage
        return embeddings
    except asyncio.CancelledError:
        status, http_status = "cancelled", 499
        raise
    except UpstreamError as exc:
        status, http_status, error_type, message = "error", exc.status, exc.error_type, exc.message
        raise
    finally:
        slot.release()
        latency_ms = (time.perf_counter() - started) * 1000
        request_observed(
            RequestOutcome(
                request_id=request_id,
                created_at=timezone.now(),
                api_key_id=api_key_id,
                endpoint="embeddings",
                model=endpoint.name,
                status=status,
                http_status=http_status,
                latency_ms=latency_ms,
                answered_by=endpoint.name if status == "ok" else "",
                provider=endpoint.provider,
                usage=usage,
                cost_usd=cost_usd(endpoint, usage),
                cache_status="bypass",
                error_type=error_type,
                error_message=message,
                attempts=[AttemptRecord(endpoint.name, "ok" if status == "ok" else status, latency_ms, http_status)],
            )
        )
