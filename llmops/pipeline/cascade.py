"""A cascade through the attempt loop: each step's model answers whole (with its token
probabilities when a confidence check asks), its checks score the answer, and below the
step's threshold the next step is asked. A step whose models all fail escalates too,
unless the request itself was at fault. The answer kept is replayed to the client, a
word at a time when streamed; a last step with no checks streams live.

Every call is an attempt (the judge's too), with its score and cost; what the rejected
answers and the judges cost is added to the request's cost."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmops.pipeline.attempts import Opened, WholePiece, attempt_loop, filled_usage
from llmops.pipeline.replay import replayed
from llmops.pricing import ZERO, cost_usd
from llmops.providers.base import ProviderCall, StreamDelta, UpstreamError
from llmops.upstream import UpstreamSlot
from llmops.usage import Usage, estimate_tokens
from monitoring.outcomes import AttemptRecord
from routing.checks import judge_messages, judge_score_parsed, local_checks
from routing.services import CascadeStepPlan

JUDGE_PARAMS: dict[str, Any] = {"max_tokens": 16, "temperature": 0}


@dataclass(slots=True)
class Spent:
    """What a cascade paid for besides the answer it kept: rejected answers and judges."""

    usage: Usage = field(default_factory=Usage)
    cost: Decimal = ZERO
    quality: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def add(self, usage: Usage, cost: Decimal) -> None:
        self.usage = Usage(
            self.usage.input_tokens + usage.input_tokens,
            self.usage.output_tokens + usage.output_tokens,
            self.usage.cached_tokens + usage.cached_tokens,
            self.usage.cache_write_tokens + usage.cache_write_tokens,
        )
        self.cost += cost


def _usage_of(piece: StreamDelta | None, call: ProviderCall, text: str) -> Usage:
    usage = piece.usage if piece is not None and piece.usage is not None else Usage()
    return filled_usage(usage, call, output_estimate=estimate_tokens(text))


def _step_params(plan: CascadeStepPlan, call: ProviderCall) -> dict[str, Any]:
    cap = plan.step.max_tokens
    asked = call.params.get("max_tokens")
    if cap is None or (asked is not None and asked <= cap):
        return call.params
    return {**call.params, "max_tokens": cap}


def _last_user(call: ProviderCall) -> str:
    return next((m["content"] for m in reversed(call.messages) if m["role"] == "user"), "")


async def _judged(
    plan: CascadeStepPlan,
    call: ProviderCall,
    text: str,
    *,
    deadline: float,
    attempts: list[AttemptRecord],
    spent: Spent,
) -> tuple[float, str]:
    """The judge's score of an answer (0 when it gave none or could not be asked)."""
    assert plan.judge is not None
    checks = plan.step.checks
    judge_call = ProviderCall(
        messages=judge_messages(checks.judge_rubric, _last_user(call), text),
        params=dict(JUDGE_PARAMS),
        batch=call.batch,
    )
    start = len(attempts)
    try:
        opened = await attempt_loop([plan.judge], judge_call, stream=False, deadline=deadline, attempts=attempts)
    except UpstreamError as error:
        if error.kind == "deadline":
            raise
        return 0.0, f"the judge could not be asked: {error.message}"
    finally:
        for record in attempts[start:]:
            record.role = "judge"
    opened.slot.release()
    reply = opened.first.text if opened.first is not None else ""
    usage = _usage_of(opened.first, judge_call, reply)
    cost = cost_usd(opened.endpoint, usage)
    spent.add(usage, cost)
    attempts[-1].cost_usd = cost
    score = judge_score_parsed(reply)
    if score is None:
        return 0.0, f"the judge gave no score from 0 to 1 on its first line: {reply[:60]!r}"
    return score, ""


async def cascade_open(
    steps: list[CascadeStepPlan],
    call: ProviderCall,
    *,
    stream: bool,
    deadline: float,
    attempts: list[AttemptRecord],
    spent: Spent,
) -> Opened:
    """Open the first answer a step's checks keep (or the last step's)."""
    last_error: UpstreamError | None = None
    for index, plan in enumerate(steps):
        final = index == len(steps) - 1
        checks = plan.step.checks
        if final and not checks.any:
            opened = await attempt_loop(plan.candidates, call, stream=stream, deadline=deadline, attempts=attempts)
            spent.steps.append({"model": opened.endpoint.name, "score": None, "kept": True})
            return opened
        step_call = dataclasses.replace(call, logprobs=bool(checks.confidence), params=_step_params(plan, call))
        started = time.perf_counter()
        try:
            opened = await attempt_loop(plan.candidates, step_call, stream=False, deadline=deadline, attempts=attempts)
        except UpstreamError as error:
            # A 400 from a checked step may be what the step added (token probabilities, its
            # length cap): the next step is asked; the last one's error is the answer.
            if error.kind == "deadline" or final:
                raise
            last_error = error
            spent.steps.append({"model": plan.candidates[0].name, "score": None, "kept": False, "error": error.kind})
            continue
        opened.slot.release()
        record = attempts[-1]
        piece = opened.first
        text = piece.text if piece is not None else ""
        usage = _usage_of(piece, step_call, text)
        cost = cost_usd(opened.endpoint, usage)
        try:
            scores = local_checks(checks, text, piece.logprobs if isinstance(piece, WholePiece) else None)
            if plan.judge is not None:
                scores.scores["judge"], note = await _judged(
                    plan, call, text, deadline=deadline, attempts=attempts, spent=spent
                )
                if note:
                    scores.notes["judge"] = note
        except BaseException:
            spent.add(usage, cost)  # the answer was generated, and paid for, whatever ended the request
            raise
        kept = final or scores.score >= plan.step.threshold
        record.score, record.cost_usd = scores.score, cost
        spent.steps.append(
            {
                "model": opened.endpoint.name,
                **scores.dump(),
                "threshold": plan.step.threshold,
                "kept": kept,
                "cost_usd": format(cost, "f"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                **({"why": scores.notes} if scores.notes else {}),
            }
        )
        if kept:
            spent.quality = scores.score
            finish = piece.finish_reason if piece is not None and piece.finish_reason else "stop"
            pieces = replayed(text, finish, usage, stream=stream)
            first = await anext(pieces, None)
            # Its usage is known now: a client leaving during the replay still paid for all of it.
            return Opened(opened.endpoint, first, pieces, _RELEASED, opened.breaker, StreamDelta(usage=usage))
        spent.add(usage, cost)
    assert last_error is not None
    raise last_error


class _Released(UpstreamSlot):
    """The slot of an answer read whole: already given back."""

    def __init__(self) -> None:
        self.held = False
        self.model = ""

    def release(self) -> None:
        return None


_RELEASED = _Released()
