"""Reads of the metric rows for other apps (routing's measured figures)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from monitoring.models import QueryMetric

MEASURED_CACHE = ("miss", "bypass")  # a cache hit measures the cache, not the option


@dataclass(frozen=True, slots=True)
class Measured:
    samples: int
    p50_ms: float
    p95_ms: float
    cost_per_1k: float
    mean_quality: float | None


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = max(0, math.ceil(share * len(values)) - 1)
    return values[index]


def measured_load(options: list[str], *, window_s: float, max_rows: int) -> dict[str, Measured]:
    """Each option's most recent successful, uncached requests within the window."""
    since = timezone.now() - timedelta(seconds=window_s)
    found: dict[str, Measured] = {}
    try:
        for option in options:
            rows = list(
                QueryMetric.objects.filter(
                    option=option, created_at__gte=since, status="ok", cache_status__in=MEASURED_CACHE
                )
                .order_by("-created_at")
                .values_list("latency_ms", "cost_usd", "quality_score")[:max_rows]
            )
            if not rows:
                continue
            latencies = sorted(float(row[0] or 0.0) for row in rows)
            cost = sum((Decimal(row[1] or 0) for row in rows), Decimal(0))
            qualities = [row[2] for row in rows if row[2] is not None]
            found[option] = Measured(
                samples=len(rows),
                p50_ms=percentile(latencies, 0.5),
                p95_ms=percentile(latencies, 0.95),
                cost_per_1k=float(cost) * 1000 / len(rows),
                mean_quality=sum(qualities) / len(qualities) if qualities else None,
            )
    finally:
        if not connection.in_atomic_block:
            connection.close()
    return found
