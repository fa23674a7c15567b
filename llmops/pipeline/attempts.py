"""The provider-call step: the gateway's own retries, fallbacks and circuit breakers.

For each candidate in order (the model asked for, then its fallbacks): skip it at once
while its breaker is open; otherwise take a slot of its concurrency limit and call it
until the first piece of the answer arrives (for a whole answer that is the answer). A
transient failure (429, 5xx, a timeout, a refused connection) is retried on the same model
with exponential backoff and full jitter, honouring Retry-After up to
LLMOPS_RETRY_AFTER_MAX_S, LLMOPS_RETRIES times; then the next candidate is asked. A
400-class answer is the request's fault: neither retried nor fallen back from. Nothing
waits past the request's deadline. Every attempt is recorded (model, outcome, latency).

A stream is "opened" at its first piece: before it, a failure falls back; after it the
runner owns the stream, and a failure ends it with an error event."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from llmops.breakers import ModelBreaker, Permit, breaker_for
from llmops.catalog import EndpointConfig
from llmops.model_limits import batch_gate, limited, model_rate_take
from llmops.providers import provider_for
from llmops.providers.base import ProviderCall, StreamDelta, UpstreamError
from llmops.upstream import UpstreamSlot, upstream_slot
from llmops.usage import Usage, estimate_tokens
from monitoring.outcomes import AttemptRecord


@dataclass(slots=True)
class Opened:
    """A call that produced its first piece: the runner reads the rest and gives the slot back."""

    endpoint: EndpointConfig
    first: StreamDelta | None
    rest: AsyncIterator[StreamDelta]
    slot: UpstreamSlot
    breaker: ModelBreaker
    usage_seen: StreamDelta | None = None


@dataclass(slots=True)
class WholePiece(StreamDelta):
    """A whole answer's one piece, with its token log-probabilities when they were asked for."""

    logprobs: list[float] | None = None


async def _whole(endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
    """A whole answer as a stream of one piece, so both kinds run through one loop."""
    completion = await provider_for(endpoint.provider).complete(endpoint, call)
    yield WholePiece(
        text=completion.text,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        logprobs=completion.logprobs,
    )


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


def upstream_iterator(endpoint: EndpointConfig, call: ProviderCall, *, stream: bool) -> AsyncIterator[StreamDelta]:
    if stream:
        return aiter(provider_for(endpoint.provider).stream(endpoint, call))
    return _whole(endpoint, call)


async def next_piece(upstream: AsyncIterator[StreamDelta], usage_box: list[StreamDelta]) -> StreamDelta | None:
    """The next piece with text or an end; a piece that only reports usage is kept aside."""
    while True:
        delta = await anext(upstream, None)
        if delta is None:
            return None
        if delta.usage is not None:
            usage_box[:] = [delta]
        if delta.text or delta.finish_reason:
            return delta


async def close_quietly(upstream: AsyncIterator[StreamDelta]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        # A broken upstream may fail to close too; its first error is what is recorded.
        with contextlib.suppress(Exception):
            await aclose()


def _retry_after_s(error: UpstreamError) -> float | None:
    if not error.retry_after:
        return None
    try:
        value = float(error.retry_after)
    except ValueError:
        return None  # an HTTP date: rare from model providers; the backoff applies
    return value if math.isfinite(value) and value >= 0 else None


def _backoff_s(retry: int, error: UpstreamError) -> float | None:
    """How long to wait before retry number `retry` (1, 2...), or None: do not retry here."""
    delay = random.uniform(0, min(settings.LLMOPS_RETRY_MAX_BACKOFF_S, settings.LLMOPS_RETRY_BASE_S * 2 ** (retry - 1)))
    asked = _retry_after_s(error)
    if asked is not None:
        if asked > settings.LLMOPS_RETRY_AFTER_MAX_S:
            return None  # longer than the gateway will hold a request: ask the next model
        delay = max(delay, asked)
    return delay


def deadline_error() -> UpstreamError:
    return UpstreamError(
        "The request's deadline passed before any model answered.",
        status=504,
        error_type="upstream_timeout",
        kind="deadline",
    )


def all_open_error(breakers: list[ModelBreaker]) -> UpstreamError:
    wait = min((b.retry_after_s() for b in breakers), default=1.0)
    names = ", ".join(b.model for b in breakers)
    return UpstreamError(
        f"No model can answer now: the circuit breaker of {names} is open after repeated failures.",
        status=503,
        error_type="service_unavailable",
        retry_after=str(max(1, math.ceil(wait))),
        kind="breaker_open",
    )


async def attempt_loop(
    candidates: list[EndpointConfig],
    call: ProviderCall,
    *,
    stream: bool,
    deadline: float,
    attempts: list[AttemptRecord],
) -> Opened:
    """Open the first candidate that answers, recording every attempt in `attempts`."""
    loop = asyncio.get_running_loop()
    last_error: UpstreamError | None = None
    skipped: list[ModelBreaker] = []
    for endpoint in candidates:
        breaker = breaker_for(endpoint.name)
        retry = 0
        while True:
            permit = await breaker.allow()
            if permit is None:
                skipped.append(breaker)
                attempts.append(AttemptRecord(endpoint.name, "breaker_open", 0.0, 503))
                break
            if loop.time() >= deadline:
                breaker.abandoned(permit)
                raise last_error if last_error is not None and last_error.kind == "deadline" else deadline_error()
            try:
                return await _attempt(
                    endpoint, call, stream=stream, deadline=deadline, permit=permit, attempts=attempts
                )
            except UpstreamError as error:
                last_error = error
                if error.kind == "invalid":
                    raise
                if error.kind == "deadline":
                    raise
                if not error.transient or retry >= settings.LLMOPS_RETRIES:
                    break
                retry += 1
                delay = _backoff_s(retry, error)
                if delay is None or loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
    if last_error is not None:
        raise last_error
    raise all_open_error(skipped)


async def _paced(endpoint: EndpointConfig, call: ProviderCall) -> None:
    """Wait until the model's requests- and tokens-per-minute limits take this call. An
    interactive request that would wait longer than LLMOPS_MODEL_RATE_MAX_WAIT_S goes to the
    next candidate instead (429 when there is none); a batch item waits its turn."""
    output = call.params.get("max_tokens") or settings.LLMOPS_ESTIMATED_OUTPUT_TOKENS
    tokens = estimate_tokens("".join(m["content"] for m in call.messages)) + output
    if call.batch:
        async with batch_gate(endpoint.name):
            while wait := await model_rate_take(endpoint, tokens, batch=True):
                await asyncio.sleep(wait)
        return
    waited = 0.0
    while wait := await model_rate_take(endpoint, tokens):
        if waited + wait > settings.LLMOPS_MODEL_RATE_MAX_WAIT_S:
            raise UpstreamError(
                f"{endpoint.name} is at its provider's requests- or tokens-per-minute limit.",
                status=429,
                error_type="rate_limit_exceeded",
                retry_after=str(max(1, math.ceil(wait))),
                kind="throttled",
            )
        await asyncio.sleep(wait)
        waited += wait


async def _attempt(
    endpoint: EndpointConfig,
    call: ProviderCall,
    *,
    stream: bool,
    deadline: float,
    permit: Permit,
    attempts: list[AttemptRecord],
) -> Opened:
    breaker = permit.breaker
    try:
        # Waiting for the model's rate limits and for a free slot counts against the deadline too.
        async with asyncio.timeout_at(deadline):
            if limited(endpoint):
                await _paced(endpoint, call)
            slot = await upstream_slot(endpoint, batch=call.batch)
    except TimeoutError:
        breaker.abandoned(permit)
        attempts.append(AttemptRecord(endpoint.name, "deadline", 0.0, 504))
        raise deadline_error() from None
    except UpstreamError as error:
        breaker.abandoned(permit)
        attempts.append(AttemptRecord(endpoint.name, error.kind, 0.0, error.status))
        raise
    except BaseException:
        breaker.abandoned(permit)
        raise
    started = time.perf_counter()
    upstream = upstream_iterator(endpoint, call, stream=stream)
    usage_box: list[StreamDelta] = []
    try:
        try:
            async with asyncio.timeout_at(deadline):
                first = await next_piece(upstream, usage_box)
        except TimeoutError:
            raise deadline_error() from None
    except BaseException as exc:
        slot.release()
        await close_quietly(upstream)
        latency = (time.perf_counter() - started) * 1000
        if isinstance(exc, UpstreamError):
            attempts.append(AttemptRecord(endpoint.name, exc.kind, latency, exc.status))
            if exc.kind == "invalid":
                await breaker.succeeded(permit)  # the model answered; the request was wrong
            else:
                await breaker.failed(permit)
        elif isinstance(exc, asyncio.CancelledError):
            attempts.append(AttemptRecord(endpoint.name, "cancelled", latency))
            breaker.abandoned(permit)
        else:
            attempts.append(AttemptRecord(endpoint.name, "error", latency, 500))
            breaker.abandoned(permit)
        raise
    attempts.append(AttemptRecord(endpoint.name, "ok", (time.perf_counter() - started) * 1000, 200))
    try:
        await breaker.succeeded(permit)  # a probe's success is a Redis call: the client may leave meanwhile
    except BaseException:
        slot.release()
        await close_quietly(upstream)
        raise
    return Opened(endpoint, first, upstream, slot, breaker, usage_box[0] if usage_box else None)
