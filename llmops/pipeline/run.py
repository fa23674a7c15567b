"""The one runner: every request, whole or streamed, from REST, the WebSocket or a batch,
goes through `Inference`:

    open():   authorize -> resolve -> route -> admit (rate limits, budget) -> cache step
    first():  the attempt loop (llmops.pipeline.attempts) over the route's candidates, or
              the cascade (llmops.pipeline.cascade), up to the first piece
    iterate:  the rest of the answer
    finish:   give back what was taken (slot, reservation, cache slot), cost, one outcome
              to monitoring.request_observed

`infer(request)` answers whole. Whatever way a request ends (an answer, an error, the
client leaving at any moment, before or after the first token) `_finish` runs exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.utils import timezone

from caching.services import CacheHit, CacheSlot, cache_step
from llmops.breakers import Permit
from llmops.catalog import EndpointConfig
from llmops.errors import GatewayError
from llmops.limits import Admission
from llmops.pipeline import steps
from llmops.pipeline.attempts import Opened, attempt_loop, close_quietly, filled_usage, next_piece
from llmops.pipeline.cascade import Spent, cascade_open
from llmops.pipeline.replay import replayed
from llmops.pipeline.types import InferenceRequest, InferenceResult
from llmops.pricing import ZERO, cost_usd
from llmops.providers.base import StreamDelta, UpstreamError
from llmops.usage import Usage, estimate_tokens
from monitoring.outcomes import AttemptRecord, RequestOutcome, request_observed
from routing.services import RoutePlan

logger = logging.getLogger(__name__)


def header_text(text: str, limit: int = 500) -> str:
    """Text fit for an HTTP header: printable ASCII, one line, not too long."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _elapsed_ms(request: InferenceRequest) -> float:
    return (time.perf_counter() - request.started) * 1000


def _error_fields(error: BaseException | None) -> tuple[int, str, str]:
    if isinstance(error, (GatewayError, UpstreamError)):
        return error.status, error.error_type, error.message
    if error is not None:
        return 500, type(error).__name__, "The gateway failed to handle this request."
    return 200, "", ""


def request_rejected(request: InferenceRequest, error: GatewayError) -> None:
    """Record a request refused before the pipeline began (bad JSON, a wrong field)."""
    http_status, error_type, message = _error_fields(error)
    request_observed(
        RequestOutcome(
            request_id=request.request_id,
            created_at=timezone.now(),
            api_key_id=request.api_key.id,
            endpoint=request.endpoint_kind,
            model=request.model,
            status="error",
            http_status=http_status,
            latency_ms=_elapsed_ms(request),
            error_type=error_type,
            error_message=message,
        )
    )


class Inference:
    """One request through the pipeline. `await open()` runs the steps that refuse bad
    input (400, 401, 404, 429); `await first()` waits for the first piece of the answer
    (upstream failures raise here, after retries and fallbacks); iterating yields the
    text; `result` is set once it ended well. `aclose()` ends it early (the client left)
    and is safe to call at any moment and more than once."""

    def __init__(self, request: InferenceRequest, *, stream: bool) -> None:
        self.request = request
        self.stream = stream
        self.result: InferenceResult | None = None
        self.attempts: list[AttemptRecord] = []
        self.cache_status = "miss"
        self.requested: EndpointConfig | None = None
        self._resolved: steps.Resolved | None = None
        self.plan: RoutePlan | None = None
        self._spent = Spent()
        self._admission: Admission | None = None
        self._slot: CacheSlot | None = None
        self._hit: CacheHit | None = None
        self._opened: Opened | None = None
        self._upstream: AsyncIterator[StreamDelta] | None = None
        self._first: StreamDelta | None = None
        self._usage = Usage()
        self._text: list[str] = []
        self._finish_reason = "stop"
        self._ttft_ms: float | None = None
        self._finished = False

    @property
    def endpoint(self) -> EndpointConfig:
        """The model answering (once the first piece came), else the one asked for."""
        if self._opened is not None:
            return self._opened.endpoint
        assert self.requested is not None, "open() first"
        return self.requested

    @property
    def headers(self) -> dict[str, str]:
        """The key's rate-limit headers, and the route's."""
        found = dict(self._admission.headers) if self._admission is not None else {}
        plan = self.plan
        if plan is not None and plan.route:
            found["x-llmops-route"] = plan.route
            found["x-llmops-route-reason"] = header_text(plan.reason)
        return found

    async def open(self) -> None:
        try:
            key = await steps.authorize(self.request)
            self._resolved = resolved = await steps.resolve(self.request)
            self.plan = plan = await steps.route(self.request, resolved)
            self.requested = plan.first
            self._admission = await steps.admit(key, resolved, plan)
            found = await cache_step(await steps.cache_plan_for(self.request, resolved, plan))
            if isinstance(found, CacheHit):
                self._hit = found
                self.cache_status = found.status
                answer = found.answer
                self._upstream = replayed(answer.text, answer.finish_reason, answer.served_usage, stream=self.stream)
            else:
                self._slot = found
                self.cache_status = found.status
        except BaseException as exc:
            await self._finish(exc)
            raise

    async def first(self) -> None:
        """Wait for the first piece of the answer (the time to first token)."""
        resolved, plan = self._resolved, self.plan
        assert resolved is not None and plan is not None, "open() first"
        try:
            if self._upstream is None:
                deadline = (
                    asyncio.get_running_loop().time()
                    + (self.request.deadline_s or settings.LLMOPS_REQUEST_DEADLINE_S)
                    - (time.perf_counter() - self.request.started)
                )
                if plan.cascade_steps:
                    self._opened = await cascade_open(
                        plan.cascade_steps,
                        resolved.call,
                        stream=self.stream,
                        deadline=deadline,
                        attempts=self.attempts,
                        spent=self._spent,
                    )
                else:
                    self._opened = await attempt_loop(
                        plan.candidates, resolved.call, stream=self.stream, deadline=deadline, attempts=self.attempts
                    )
                if not self.stream:
                    # A whole answer has arrived: the upstream call is over, and its slot is
                    # the next caller's now, not once this answer has been costed and recorded.
                    self._opened.slot.release()
                self._upstream = self._opened.rest
                self._first = self._opened.first
                if self._opened.usage_seen is not None:
                    self._usage = self._opened.usage_seen.usage or self._usage
            else:
                self._first = await self._next()
            self._ttft_ms = _elapsed_ms(self.request)
        except BaseException as exc:
            await self._finish(exc)
            raise

    async def _next(self) -> StreamDelta | None:
        assert self._upstream is not None
        box: list[StreamDelta] = []
        delta = await next_piece(self._upstream, box)
        if box and box[0].usage is not None:
            self._usage = box[0].usage
        return delta

    async def __aiter__(self) -> AsyncIterator[str]:
        delta = self._first
        try:
            while delta is not None:
                if delta.usage is not None:
                    self._usage = delta.usage
                if delta.text:
                    self._text.append(delta.text)
                    yield delta.text
                if delta.finish_reason:
                    self._finish_reason = delta.finish_reason
                delta = await self._next()
        except BaseException as exc:
            if isinstance(exc, UpstreamError) and self._opened is not None:
                breaker = self._opened.breaker
                await breaker.failed(Permit(breaker))  # cut mid-stream: the model is unwell too
            await self._finish(exc if not isinstance(exc, GeneratorExit) else asyncio.CancelledError())
            raise
        await self._finish(None)

    async def text(self) -> str:
        """The whole answer (the text of a whole-answer request is its first piece)."""
        return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        await self._finish(asyncio.CancelledError())

    def _billed_usage(self, ok: bool) -> Usage:
        """What the provider reported, completed where it could not report: a stream cut
        short still generated (and was billed for) every piece that was sent."""
        assert self._resolved is not None
        usage = self._usage
        pieces = len(self._text)
        if not ok and pieces > usage.output_tokens:
            usage = Usage(usage.input_tokens, pieces, usage.cached_tokens, usage.cache_write_tokens)
        estimate = estimate_tokens("".join(self._text)) if not self.stream else pieces
        return filled_usage(usage, self._resolved.call, output_estimate=estimate)

    async def _finish(self, error: BaseException | None) -> None:
        """Give back everything this request took, cost it, and record it, once."""
        if self._finished:
            return
        self._finished = True
        ok = error is None
        opened, upstream = self._opened, self._upstream
        self._upstream = None
        if opened is not None:
            opened.slot.release()
        if upstream is not None and not ok:
            await close_quietly(upstream)
        usage, cost, saved = Usage(), ZERO, ZERO
        spent = self._spent
        if self._hit is not None:
            usage = self._hit.answer.served_usage if ok or self._text else Usage()
            saved = self._hit.answer.cost_usd
        elif opened is not None:
            usage = self._billed_usage(ok)
            cost = cost_usd(opened.endpoint, usage)
        if spent.cost or spent.usage.input_tokens:
            # A cascade also paid for the answers it rejected and for its judges.
            spent.add(usage, cost)
            usage, cost = spent.usage, spent.cost
        headers = self.headers
        admission, self._admission = self._admission, None
        if admission is not None:
            await admission.settle(tokens=usage.input_tokens + usage.output_tokens, cost=cost)
        answered = opened is not None or self._hit is not None
        endpoint = opened.endpoint if opened is not None else self.requested
        plan = self.plan
        route = plan.route if plan is not None else ""
        # What answered, as routing measures it: a fallback's figures are its own, not the
        # model's it stood in for; a cascade (and a cached answer) counts as the option chosen.
        option = ""
        if plan is not None and answered:
            direct = opened is not None and not plan.cascade_steps
            option = opened.endpoint.name if direct and opened is not None else plan.option
        if ok:
            assert endpoint is not None
            self.result = InferenceResult(
                request_id=self.request.request_id,
                model=endpoint.name,
                provider=endpoint.provider,
                text="".join(self._text),
                finish_reason=self._finish_reason,
                usage=usage,
                cost_usd=cost,
                latency_ms=_elapsed_ms(self.request),
                requested_model=self.request.model,
                ttft_ms=self._ttft_ms if self.stream else None,
                cache=self.cache_status,
                saved_usd=saved,
                simulated=endpoint.provider == "simulated",
                attempts=self.attempts,
                headers=headers,
                route=route,
                route_reason=plan.reason if plan is not None else "",
                option=option,
                quality=spent.quality,
                cascade=spent.steps,
            )
        cancelled = isinstance(error, asyncio.CancelledError)
        http_status, error_type, message = _error_fields(None if cancelled else error)
        request_observed(
            RequestOutcome(
                request_id=self.request.request_id,
                created_at=timezone.now(),
                api_key_id=self.request.api_key.id,
                endpoint=self.request.endpoint_kind,
                model=self.request.model,
                status="ok" if ok else ("cancelled" if cancelled else "error"),
                http_status=499 if cancelled else http_status,
                latency_ms=_elapsed_ms(self.request),
                answered_by=endpoint.name if endpoint is not None and answered else "",
                route=route,
                option=option,
                quality_score=spent.quality,
                cascade_steps=len(spent.steps),
                provider=endpoint.provider if endpoint is not None else "",
                prompt=self._resolved.prompt_label if self._resolved is not None else "",
                stream=self.stream,
                ttft_ms=self._ttft_ms if self.stream else None,
                usage=usage,
                cost_usd=cost,
                cache_status=self.cache_status,
                cost_saved_usd=saved,
                error_type=error_type,
                error_message=message,
                attempts=self.attempts,
            )
        )
        slot = self._slot
        if slot is not None:
            if ok and self._hit is None:
                await slot.fill(text="".join(self._text), finish_reason=self._finish_reason, usage=usage, cost=cost)
            else:
                slot.abandon()


async def request_preview(request: InferenceRequest) -> tuple[steps.Resolved, RoutePlan]:
    """What the pipeline would ask and whom, without calling any model: a dry run, neither
    admitted against the key's limits nor recorded. Raises what the request would meet
    (an unknown model, prompt or route)."""
    await steps.authorize(request)
    resolved = await steps.resolve(request)
    return resolved, await steps.route(request, resolved)


async def route_preview(request: InferenceRequest) -> RoutePlan:
    """What routing would do with a request (request_preview's plan)."""
    return (await request_preview(request))[1]


async def infer(request: InferenceRequest) -> InferenceResult:
    """Answer a request whole."""
    inference = Inference(request, stream=False)
    await inference.open()
    await inference.first()
    await inference.text()
    assert inference.result is not None
    return inference.result
