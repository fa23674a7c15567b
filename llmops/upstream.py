"""What every upstream call takes while it runs: a slot of its model's concurrency limit
and a place in this process's in-flight count. The pipeline's attempt loop and the
semantic cache's embedding calls both take them here, so both are bounded and counted
alike; whatever takes a slot gives it back with `release()` on every way out."""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref

from django.utils import timezone

from llmops.catalog import EndpointConfig
from llmops.pricing import cost_usd
from llmops.providers import provider_for
from llmops.providers.base import EmbeddingProvider, Embeddings, UpstreamError
from llmops.usage import Usage
from monitoring.outcomes import AttemptRecord, RequestOutcome, request_observed


class InFlight:
    """Upstream calls this process holds open right now, in all and per model (routing's
    least-in-flight balancing reads it), and the most it ever held."""

    current = 0
    peak = 0
    by_model: dict[str, int] = {}

    @classmethod
    def enter(cls, model: str) -> None:
        cls.current += 1
        cls.by_model[model] = cls.by_model.get(model, 0) + 1
        if cls.current > cls.peak:
            cls.peak = cls.current

    @classmethod
    def leave(cls, model: str) -> None:
        cls.current -= 1
        cls.by_model[model] -= 1


_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _semaphore(endpoint: EndpointConfig) -> asyncio.Semaphore | None:
    if not endpoint.max_concurrency:
        return None
    loop = asyncio.get_running_loop()
    per_loop = _semaphores.get(loop)
    if per_loop is None:
        per_loop = _semaphores[loop] = {}
    key = (endpoint.name, endpoint.max_concurrency)
    semaphore = per_loop.get(key)
    if semaphore is None:
        semaphore = per_loop[key] = asyncio.Semaphore(endpoint.max_concurrency)
    return semaphore


class UpstreamSlot:
    """One upstream call's hold on its model: taken by `upstream_slot`, given back once."""

    __slots__ = ("_semaphore", "held", "model")

    def __init__(self, semaphore: asyncio.Semaphore | None, model: str) -> None:
        self._semaphore = semaphore
        self.model = model
        self.held = True
        InFlight.enter(model)

    def release(self) -> None:
        if self.held:
            self.held = False
            InFlight.leave(self.model)
            if self._semaphore is not None:
                self._semaphore.release()


async def upstream_slot(endpoint: EndpointConfig) -> UpstreamSlot:
    """Wait for a free slot of the model's concurrency limit (per process) and take it."""
    semaphore = _semaphore(endpoint)
    if semaphore is not None:
        await semaphore.acquire()  # cancelled while waiting: nothing was taken
    return UpstreamSlot(semaphore, endpoint.name)


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
