"""Where every request ends: the pipeline hands one RequestOutcome to `request_observed`,
whatever happened (an answer, an error, a client that left, a refusal before the pipeline
began). The metric row is written from here; counters, rollups and alerts hang here too."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from llmops.usage import Usage
from monitoring.prometheus import prometheus_request_observed
from monitoring.recorder import metric_record

ZERO = Decimal(0)


@dataclass(slots=True)
class AttemptRecord:
    """One upstream call of a request: which model, how it ended, how long it took; for a
    cascade step also its checks' score and its cost (a judge's call is an attempt too)."""

    model: str
    outcome: str  # ok, error, timeout, rate_limited, unreachable, breaker_open, cancelled
    latency_ms: float
    status: int | None = None
    score: float | None = None
    cost_usd: Decimal | None = None
    role: str = ""  # "" for an answer; "judge" for a judge's grading call

    def dump(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "model": self.model,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_ms, 3),
            "status": self.status,
        }
        if self.score is not None:
            found["score"] = round(self.score, 4)
        if self.cost_usd is not None:
            found["cost_usd"] = format(self.cost_usd, "f")
        if self.role:
            found["role"] = self.role
        return found


@dataclass(slots=True)
class RequestOutcome:
    request_id: str
    created_at: datetime
    api_key_id: int | None
    endpoint: str
    model: str  # what the request named
    status: str  # ok, error, cancelled
    http_status: int
    latency_ms: float
    answered_by: str = ""
    route: str = ""
    option: str = ""  # what answered, as routing measures it: a model, or cascade:<name>
    quality_score: float | None = None
    cascade_steps: int = 0  # the steps a cascade ran: 0 when none ran (a cache hit, a model)
    provider: str = ""
    prompt: str = ""
    stream: bool = False
    ttft_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = ZERO
    cache_status: str = "miss"
    cost_saved_usd: Decimal = ZERO
    error_type: str = ""
    error_message: str = ""
    attempts: list[AttemptRecord] = field(default_factory=list)


def request_observed(outcome: RequestOutcome) -> None:
    """Record a finished request. Never blocks: the row is buffered and written in bulk."""
    metric_record(**outcome_row(outcome))
    prometheus_request_observed(outcome)


def outcome_row(outcome: RequestOutcome) -> dict[str, Any]:
    """The QueryMetric fields of an outcome: its metric row."""
    usage = outcome.usage
    return dict(
        request_id=outcome.request_id,
        created_at=outcome.created_at,
        api_key_id=outcome.api_key_id,
        endpoint=outcome.endpoint,
        model=outcome.model,
        answered_by=outcome.answered_by,
        route=outcome.route,
        option=outcome.option,
        quality_score=outcome.quality_score,
        cascade_steps=outcome.cascade_steps,
        attempts=[attempt.dump() for attempt in outcome.attempts],
        provider=outcome.provider,
        prompt=outcome.prompt,
        stream=outcome.stream,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=outcome.cost_usd,
        cache_status=outcome.cache_status,
        cost_saved_usd=outcome.cost_saved_usd,
        status=outcome.status,
        http_status=outcome.http_status,
        error_type=outcome.error_type,
        error_message=outcome.error_message[:2000],
    )
