"""Reads for the cache's dashboards: hits, misses and dollars saved, from QueryMetric."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum

from monitoring.models import QueryMetric

CENT_MILLIONTHS = Decimal("0.0000000001")  # the precision costs are stored with


def _figures(hits: int, semantic_hits: int, misses: int, saved: Decimal | None) -> dict[str, Any]:
    looked_up = hits + semantic_hits + misses
    return {
        "hits": hits,
        "semantic_hits": semantic_hits,
        "misses": misses,
        "hit_rate": round((hits + semantic_hits) / looked_up, 4) if looked_up else 0.0,
        "saved_usd": format((saved or Decimal(0)).quantize(CENT_MILLIONTHS), "f"),
    }


def cache_stats(*, api_key_id: int | None, since: datetime | None) -> dict[str, Any]:
    """Cache results of successful requests, overall and per model. `api_key_id` None means
    every key (staff); a key sees only its own requests."""
    rows = QueryMetric.objects.filter(status=QueryMetric.Status.OK)
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    counts = {
        "hits": Count("id", filter=Q(cache_status="hit")),
        "semantic_hits": Count("id", filter=Q(cache_status="semantic_hit")),
        "misses": Count("id", filter=Q(cache_status="miss")),
        "saved": Sum("cost_saved_usd"),
    }
    per_model = [
        {"model": row["model"], **_figures(row["hits"], row["semantic_hits"], row["misses"], row["saved"])}
        for row in rows.values("model").annotate(**counts).order_by("model")
    ]
    total = rows.aggregate(**counts)
    return {
        "overall": _figures(total["hits"], total["semantic_hits"], total["misses"], total["saved"]),
        "models": per_model,
    }
