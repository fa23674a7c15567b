"""What a request asks of routing: its features and its limits. Shared with the pipeline's
types, so it imports nothing of the other steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmops.errors import InvalidRequest

if TYPE_CHECKING:
    from routing.stats import Figures

LIMIT_NAMES = ("max_latency_ms", "max_cost_per_1k", "min_quality")


@dataclass(frozen=True, slots=True)
class Limits:
    max_latency_ms: float | None = None
    max_cost_per_1k: float | None = None
    min_quality: float | None = None

    def misses(self, figures: Figures) -> dict[str, str]:
        """Each limit the option misses, and by how much."""
        found: dict[str, str] = {}
        if self.max_latency_ms is not None:
            if figures.p95_ms is None:
                found["max_latency_ms"] = "its p95 latency is unknown (no measurements, no prior)"
            elif figures.p95_ms > self.max_latency_ms:
                over = figures.p95_ms - self.max_latency_ms
                found["max_latency_ms"] = f"p95 {figures.p95_ms:.0f} ms is {over:.0f} ms over {self.max_latency_ms:g}"
        if self.max_cost_per_1k is not None:
            if figures.cost_per_1k is None:
                found["max_cost_per_1k"] = "its cost is unknown"
            elif figures.cost_per_1k > self.max_cost_per_1k:
                over = figures.cost_per_1k - self.max_cost_per_1k
                found["max_cost_per_1k"] = (
                    f"${figures.cost_per_1k:.4f} per 1k is ${over:.4f} over {self.max_cost_per_1k:g}"
                )
        if self.min_quality is not None:
            if figures.quality is None:
                found["min_quality"] = "its quality is unknown (run manage.py evaluate, or set a prior)"
            elif figures.quality < self.min_quality:
                under = self.min_quality - figures.quality
                found["min_quality"] = f"quality {figures.quality:.3f} is {under:.3f} under {self.min_quality:g}"
        return found

    def shortfall(self, figures: Figures) -> float:
        """How far an option is from meeting the limits, relative to each (for "closest")."""
        total = 0.0
        if self.max_latency_ms is not None:
            total += _relative_over(figures.p95_ms, self.max_latency_ms)
        if self.max_cost_per_1k is not None:
            total += _relative_over(figures.cost_per_1k, self.max_cost_per_1k)
        if self.min_quality is not None:
            total += 10.0 if figures.quality is None else max(0.0, self.min_quality - figures.quality)
        return total


def _relative_over(value: float | None, limit: float) -> float:
    if value is None:
        return 10.0
    return max(0.0, value - limit) / limit if limit > 0 else (0.0 if value <= 0 else 10.0)


def limits_parsed(raw: Any) -> Limits | None:
    """A request's `limits`, checked (None when it sets none): raises InvalidRequest naming the field."""
    if not isinstance(raw, dict):
        raise InvalidRequest("limits must be an object.", param="limits")
    for name in raw:
        if name not in LIMIT_NAMES:
            raise InvalidRequest(
                f"limits.{name} is not a limit (use {', '.join(LIMIT_NAMES)}).", param=f"limits.{name}"
            )
    values: dict[str, float] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"limits.{name} must be a number.", param=f"limits.{name}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < 0:
            raise InvalidRequest(f"limits.{name} must be a finite number, not negative.", param=f"limits.{name}")
        if name == "min_quality" and number > 1:
            raise InvalidRequest("limits.min_quality must be between 0 and 1.", param="limits.min_quality")
        values[name] = number
    return Limits(**values) if values else None


@dataclass(slots=True)
class Features:
    """What rules look at."""

    task_type: str = ""
    complexity: str = ""
    prompt: str = ""  # the prompt template's name
    input_tokens: int = 0
    last_user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
