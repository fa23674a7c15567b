"""The one inference pipeline. REST, streaming, WebSockets and batch items all come here:

    authorize (done by the entry point: it holds an ApiKeyInfo)
    -> resolve prompt -> route -> cache lookup -> provider call (bounded per model)
    -> cost -> metric record (buffered, off the hot path)

`infer` answers whole; `InferenceStream` answers piece by piece. Both record exactly one
QueryMetric for the request, whether it succeeds, fails or is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.utils import timezone

from caching.services import (
    BYPASS,
    MISS,
    CachePlan,
    cache_hit_recorded,
    cache_join,
    cache_lead,
    cache_lead_done,
    cache_lookup,
    cache_plan,
    cache_store,
)
from caching.store import CachedAnswer
from llmops import catalog
from llmops.catalog import ApiKeyInfo, EndpointConfig
from llmops.errors import GatewayError, InvalidRequest, NotFound
from llmops.pricing import ZERO, cost_usd
from llmops.prompts import prompt_render
from llmops.providers import provider_for
from llmops.providers.base import ChatProvider, ProviderCall, StreamDelta, UpstreamError, Usage, estimate_tokens
from monitoring.recorder import metric_record

logger = logging.getLogger(__name__)

WORD = re.compile(r"\S+\s*|\s+")


def new_request_id() -> str:
    return secrets.token_hex(12)


@dataclass(slots=True)
class InferenceRequest:
    api_key: ApiKeyInfo
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, float] | None = None
    cache_mode: str = "use"  # or "bypass" (neither read nor write the cache), "refresh" (write only)
    request_id: str = field(default_factory=new_request_id)
    endpoint_kind: str = "chat.completions"
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class InferenceResult:
    request_id: str
    model: str
    provider: str
    text: str
    finish_reason: str
    usage: Usage
    cost_usd: Decimal
    latency_ms: float
    ttft_ms: float | None = None
    cache: str = "miss"
    saved_usd: Decimal = ZERO  # for a cache hit: what the answer cost when it was generated
    simulated: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(slots=True)
class _Prepared:
    endpoint: EndpointConfig
    provider: ChatProvider
    call: ProviderCall
    prompt_label: str = ""
    cache: CachePlan | None = None


class InFlight:
    """Upstream calls this process holds open right now, and the most it ever held."""

    current = 0
    peak = 0

    @classmethod
    def enter(cls) -> None:
        cls.current += 1
        if cls.current > cls.peak:
            cls.peak = cls.current

    @classmethod
    def leave(cls) -> None:
        cls.current -= 1


_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _limit(endpoint: EndpointConfig) -> asyncio.Semaphore | None:
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


async def _prepare(request: InferenceRequest) -> _Prepared:
    endpoint = await catalog.endpoint_get(request.model)
    if endpoint is None or not endpoint.enabled:
        raise NotFound(
            f"The model {request.model!r} does not exist or is not enabled.", param="model", code="model_not_found"
        )
    messages = request.messages
    prompt_label = ""
    if request.prompt:
        prompt, messages = await prompt_render(
            reference=request.prompt, variables=request.variables, messages=request.messages
        )
        prompt_label = prompt.label
    if not messages:
        raise InvalidRequest("messages must be a non-empty list (or name a prompt).", param="messages")
    if request.simulate and endpoint.provider != "simulated":
        raise InvalidRequest("simulate applies only to simulated models.", param="simulate")
    policy = await catalog.cache_policy_get(endpoint.name)
    plan = cache_plan(
        policy=policy,
        model=endpoint.name,
        target=f"{endpoint.provider}:{endpoint.upstream_model}@{endpoint.base_url}",
        messages=messages,
        params={**request.params, "simulate": request.simulate} if request.simulate else request.params,
        prompt=prompt_label,
        api_key_id=request.api_key.id,
        mode=request.cache_mode,
    )
    call = ProviderCall(
        messages=messages,
        params=request.params,
        simulate=request.simulate,
        prompt_cache=bool(policy and policy.prompt_caching),
    )
    return _Prepared(endpoint, provider_for(endpoint.provider), call, prompt_label, plan)


def filled_usage(usage: Usage, call: ProviderCall, *, output_estimate: int) -> Usage:
    """The provider's usage, with estimates only where it reported none (an
    OpenAI-compatible server that sends no usage, a stream cut before its usage came)."""
    if usage.input_tokens and (usage.output_tokens or not output_estimate):
        return usage
    return Usage(
        input_tokens=usage.input_tokens or estimate_tokens("".join(m["content"] for m in call.messages)),
        output_tokens=usage.output_tokens or output_estimate,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


def request_rejected(request: InferenceRequest, error: GatewayError) -> None:
    """Record a request refused before the pipeline began (bad JSON, a wrong field)."""
    _record(request, None, stream=False, status="error", error=error)


def _elapsed_ms(request: InferenceRequest) -> float:
    return (time.perf_counter() - request.started) * 1000


def _record(
    request: InferenceRequest,
    prepared: _Prepared | None,
    *,
    stream: bool,
    status: str,
    usage: Usage | None = None,
    cost: Decimal = ZERO,
    ttft_ms: float | None = None,
    error: Exception | None = None,
    cache_status: str = MISS,
    saved: Decimal = ZERO,
) -> None:
    usage = usage or Usage()
    http_status = 200
    error_type = error_message = ""
    if isinstance(error, (GatewayError, UpstreamError)):
        http_status, error_type, error_message = error.status, error.error_type, error.message
    elif error is not None:
        http_status, error_type, error_message = 500, type(error).__name__, str(error)
    metric_record(
        request_id=request.request_id,
        created_at=timezone.now(),
        api_key_id=request.api_key.id,
        endpoint=request.endpoint_kind,
        model=request.model,
        provider=prepared.endpoint.provider if prepared else "",
        prompt=prepared.prompt_label if prepared else "",
        stream=stream,
        latency_ms=_elapsed_ms(request),
        ttft_ms=ttft_ms,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=cost,
        cache_status=cache_status,
        cost_saved_usd=saved,
        status=status,
        http_status=http_status if status == "error" else (499 if status == "cancelled" else 200),
        error_type=error_type,
        error_message=error_message[:2000],
    )


async def infer(request: InferenceRequest) -> InferenceResult:
    """Answer a request whole."""
    prepared: _Prepared | None = None
    lead = None
    try:
        prepared = await _prepare(request)
        plan = prepared.cache
        while plan is not None and plan.lookup:
            found = await cache_lookup(plan) or await cache_join(plan)
            if found is not None:
                return _from_cache(request, prepared, *found)
            # Lead, unless another request took the lead meanwhile (the first one failed and
            # its waiters woke together): then wait for that one instead of asking too.
            lead = cache_lead(plan)
            if lead is not None:
                break
        semaphore = _limit(prepared.endpoint)
        if semaphore is not None:
            await semaphore.acquire()
        InFlight.enter()
        try:
            completion = await prepared.provider.complete(prepared.endpoint, prepared.call)
        finally:
            InFlight.leave()
            if semaphore is not None:
                semaphore.release()
    except asyncio.CancelledError:
        _record(request, prepared, stream=False, status="cancelled")
        _lead_failed(prepared, lead)
        raise
    except Exception as exc:
        _record(request, prepared, stream=False, status="error", error=exc)
        _lead_failed(prepared, lead)
        raise
    usage = filled_usage(completion.usage, prepared.call, output_estimate=estimate_tokens(completion.text))
    cost = cost_usd(prepared.endpoint, usage)
    status = MISS if plan is not None else BYPASS
    result = InferenceResult(
        request_id=request.request_id,
        model=prepared.endpoint.name,
        provider=prepared.endpoint.provider,
        text=completion.text,
        finish_reason=completion.finish_reason,
        usage=usage,
        cost_usd=cost,
        latency_ms=_elapsed_ms(request),
        cache=status,
        simulated=completion.simulated,
    )
    # Recorded before storing: the answer was paid for, whatever happens to this request now.
    _record(request, prepared, stream=False, status="ok", usage=usage, cost=cost, cache_status=status)
    if plan is not None:
        await _store(plan, lead, text=completion.text, finish_reason=completion.finish_reason, usage=usage, cost=cost)
    return result


def _lead_failed(prepared: _Prepared | None, lead: Any) -> None:
    if lead is not None and prepared is not None and prepared.cache is not None:
        cache_lead_done(prepared.cache, lead, None)  # the waiters ask for themselves


async def _store(plan: CachePlan, lead: Any, **answer: Any) -> None:
    """Store an answer (and hand it to identical requests waiting for it). Shielded: a
    client that leaves now does not cost the others the answer it already paid for."""

    async def store() -> None:
        try:
            stored = await cache_store(plan, **answer)
        except Exception:
            logger.exception("Storing an answer for %s failed", plan.model)
            stored = None
        if lead is not None:
            cache_lead_done(plan, lead, stored)

    await asyncio.shield(store())


def _from_cache(request: InferenceRequest, prepared: _Prepared, answer: CachedAnswer, how: str) -> InferenceResult:
    """A stored answer: no provider call, no provider cost, and what it saved recorded."""
    assert prepared.cache is not None
    cache_hit_recorded(prepared.cache, answer)
    result = InferenceResult(
        request_id=request.request_id,
        model=prepared.endpoint.name,
        provider=prepared.endpoint.provider,
        text=answer.text,
        finish_reason=answer.finish_reason,
        usage=answer.served_usage,
        cost_usd=ZERO,
        latency_ms=_elapsed_ms(request),
        cache=how,
        saved_usd=answer.cost_usd,
        simulated=prepared.endpoint.provider == "simulated",
    )
    _record(
        request, prepared, stream=False, status="ok", usage=answer.served_usage, cache_status=how, saved=answer.cost_usd
    )
    return result


async def _replay(answer: CachedAnswer) -> AsyncIterator[StreamDelta]:
    """A cached answer as a stream, a word at a time."""
    for piece in WORD.findall(answer.text) or [answer.text]:
        yield StreamDelta(text=piece)
    yield StreamDelta(finish_reason=answer.finish_reason, usage=answer.served_usage)


class InferenceStream:
    """Answer a request as it is generated.

    `await start()` resolves the model and waits for the upstream's first piece, so that
    bad input and upstream failures before any token still get a proper error status.
    Iterating then yields text pieces; `result` is filled in once the stream ends.
    `aclose()` ends it early (the client left) and is safe to call more than once."""

    def __init__(self, request: InferenceRequest) -> None:
        self.request = request
        self.result: InferenceResult | None = None
        self._prepared: _Prepared | None = None
        self._upstream: AsyncIterator[StreamDelta] | None = None
        self._first: StreamDelta | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._ttft_ms: float | None = None
        self._usage = Usage()
        self._text: list[str] = []
        self._finish_reason = "stop"
        self._open = False
        self._recorded = False
        self._cached: CachedAnswer | None = None
        self.cache_status = MISS

    @property
    def endpoint(self) -> EndpointConfig:
        assert self._prepared is not None, "start() first"
        return self._prepared.endpoint

    async def start(self) -> None:
        """Open the stream and wait for its first piece."""
        await self.open()
        await self.first()

    async def open(self) -> None:
        """Resolve the model, look in the cache, and open the upstream call: everything up to
        waiting for the first piece. Bad input and refusals raise here."""
        try:
            self._prepared = await _prepare(self.request)
            plan = self._prepared.cache
            self.cache_status = MISS if plan is not None else BYPASS
            found = await cache_lookup(plan) if plan is not None and plan.lookup else None
            if found is not None:
                self._cached, self.cache_status = found
                self._upstream = _replay(self._cached)
            else:
                self._semaphore = _limit(self._prepared.endpoint)
                if self._semaphore is not None:
                    await self._semaphore.acquire()
                InFlight.enter()
                self._open = True
                self._upstream = aiter(self._prepared.provider.stream(self._prepared.endpoint, self._prepared.call))
        except asyncio.CancelledError:
            await self._finish(status="cancelled")
            raise
        except BaseException as exc:
            await self._finish(status="error", error=exc)
            raise

    async def first(self) -> None:
        """Wait for the upstream's first piece (the time to first token)."""
        try:
            self._first = await self._next()
            self._ttft_ms = _elapsed_ms(self.request)
        except asyncio.CancelledError:
            await self._finish(status="cancelled")
            raise
        except BaseException as exc:
            await self._finish(status="error", error=exc)
            raise

    async def _next(self) -> StreamDelta | None:
        """The next piece with text or an end; usage reported on the way is kept."""
        assert self._upstream is not None
        while True:
            delta = await anext(self._upstream, None)
            if delta is None:
                return None
            if delta.usage is not None:
                self._usage = delta.usage
            if delta.text or delta.finish_reason:
                return delta

    async def __aiter__(self) -> AsyncIterator[str]:
        assert self._prepared is not None, "start() first"
        delta = self._first
        try:
            while delta is not None:
                if delta.text:
                    self._text.append(delta.text)
                    yield delta.text
                if delta.finish_reason:
                    self._finish_reason = delta.finish_reason
                delta = await self._next()
        except (asyncio.CancelledError, GeneratorExit):
            await self._finish(status="cancelled")
            raise
        except BaseException as exc:
            await self._finish(status="error", error=exc)
            raise
        await self._finish(status="ok")

    async def aclose(self) -> None:
        await self._finish(status="cancelled")

    def _billed_usage(self, status: str) -> Usage:
        """What the provider reported, completed where it could not report: a stream cut
        short still generated (and was billed for) every piece that was sent."""
        assert self._prepared is not None
        usage = self._usage
        if status != "ok" and len(self._text) > usage.output_tokens:
            usage = Usage(usage.input_tokens, len(self._text), usage.cached_tokens, usage.cache_write_tokens)
        return filled_usage(usage, self._prepared.call, output_estimate=len(self._text))

    async def _finish(self, *, status: str, error: BaseException | None = None) -> None:
        if self._recorded:
            return
        self._recorded = True
        if self._open:
            self._open = False
            InFlight.leave()
            if self._semaphore is not None:
                self._semaphore.release()
            upstream, self._upstream = self._upstream, None
            if upstream is not None and hasattr(upstream, "aclose"):
                # A broken upstream may fail to close too; its first error is what is recorded.
                with contextlib.suppress(Exception):
                    await upstream.aclose()
        usage = self._billed_usage(status) if self._prepared is not None else Usage()
        cost = cost_usd(self._prepared.endpoint, usage) if self._prepared is not None else ZERO
        saved = ZERO
        if self._cached is not None:
            saved, cost = self._cached.cost_usd, ZERO
            if status == "ok":
                cache_hit_recorded(self._prepared.cache, self._cached)
        if status == "ok":
            endpoint = self.endpoint
            self.result = InferenceResult(
                request_id=self.request.request_id,
                model=endpoint.name,
                provider=endpoint.provider,
                text="".join(self._text),
                finish_reason=self._finish_reason,
                usage=usage,
                cost_usd=cost,
                latency_ms=_elapsed_ms(self.request),
                ttft_ms=self._ttft_ms,
                cache=self.cache_status,
                saved_usd=saved,
                simulated=endpoint.provider == "simulated",
            )
        _record(
            self.request,
            self._prepared,
            stream=True,
            status=status,
            usage=usage,
            cost=cost,
            ttft_ms=self._ttft_ms,
            error=error if isinstance(error, Exception) else None,
            cache_status=self.cache_status,
            saved=saved,
        )
        if status == "ok" and self._cached is None and self._prepared.cache is not None:
            text = "".join(self._text)
            await _store(
                self._prepared.cache, None, text=text, finish_reason=self._finish_reason, usage=usage, cost=cost
            )
