"""Reads for the cache's dashboards: hits, misses and dollars saved, from the metric rollups
through monitoring's figures (one place computes hit rates)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from monitoring.figures import Tally, cache_figures, series_filter, tallies
from monitoring.windows import MINUTE, Window

SHOWN = ("hits", "semantic_hits", "misses", "hit_rate", "saved_usd")


def _shown(figures: dict[str, Any]) -> dict[str, Any]:
    return {name: figures[name] for name in SHOWN}


def cache_stats(*, api_key_id: int | None, since: datetime | None) -> dict[str, Any]:
    """Cache results of successful requests, overall and per model. `api_key_id` None means
    every key (staff); a key sees only its own requests. Without `since`: everything kept."""
    now = int(timezone.now().timestamp())
    end = now - now % MINUTE + MINUTE
    if since is None:
        since = timezone.now() - timedelta(days=settings.LLMOPS_METRICS_ROLLUP_RETENTION_DAYS)
    start = int(since.timestamp())
    window = Window(start=datetime.fromtimestamp(start - start % MINUTE, UTC), end=datetime.fromtimestamp(end, UTC))
    where = series_filter({}, api_key_id=api_key_id)
    per_model = tallies(window, where, group="model", histograms=False)
    overall = tallies(window, where, histograms=False).get(None)
    return {
        "overall": _shown(cache_figures(overall or Tally())),
        "models": [
            {"model": model, **_shown(cache_figures(tally))}
            for model, tally in sorted(per_model.items())
            if tally.statuses["ok"]
        ],
    }
