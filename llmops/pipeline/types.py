"""What the pipeline is asked and what it answers."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmops.catalog import ApiKeyInfo
from llmops.pricing import ZERO
from llmops.usage import Usage
from monitoring.outcomes import AttemptRecord
from routing.types import Limits


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
    # What routing looks at besides the messages (the OpenAI SDK sends them in extra_body).
    task_type: str = ""
    complexity: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    limits: Limits | None = None
    request_id: str = field(default_factory=new_request_id)
    endpoint_kind: str = "chat.completions"  # "batch" for a batch item
    started: float = field(default_factory=time.perf_counter)
    # A batch item: behind interactive requests for its model's slots, paced by its rate
    # limits rather than sent to a fallback, and given its own (longer) deadline.
    batch: bool = False
    deadline_s: float | None = None


@dataclass(slots=True)
class InferenceResult:
    request_id: str
    model: str  # the model that answered (a fallback, when the one asked for failed)
    provider: str
    text: str
    finish_reason: str
    usage: Usage
    cost_usd: Decimal
    latency_ms: float
    requested_model: str = ""
    ttft_ms: float | None = None
    cache: str = "miss"
    saved_usd: Decimal = ZERO  # for a cache hit: what the answer cost when it was generated
    simulated: bool = False
    attempts: list[AttemptRecord] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the answer
    route: str = ""
    route_reason: str = ""
    option: str = ""  # what answered as routing measures it: the model, or cascade:<name>
    quality: float | None = None  # the kept answer's score from a cascade's checks
    cascade: list[dict[str, Any]] = field(default_factory=list)  # each step: model, score, kept, cost
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def upstream_calls(self) -> int:
        """The calls made to models (a model skipped for its open breaker was not called)."""
        return upstream_calls(self.attempts)


def upstream_calls(attempts: list[AttemptRecord]) -> int:
    return sum(1 for attempt in attempts if attempt.outcome not in ("breaker_open", "throttled"))
