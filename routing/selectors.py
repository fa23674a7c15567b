"""Reads for staff and apps: every option of a route with what it measured, and which are
on the cost-latency-quality Pareto frontier."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from llmops.catalog import EndpointConfig
from llmops.errors import NotFound
from llmops.models import ModelEndpoint
from monitoring.selectors import measured_load
from monitoring.windows import window_seconds
from routing.config import routing_config_read
from routing.services import options_figures
from routing.stats import pareto_optimal


def window_parsed(text: str | None) -> float:
    """`15m`, `24h`, `7d` (or seconds as `900s`) -> seconds; the default is 24h."""
    return window_seconds(text)


def pareto_options(*, route_name: str, window_s: float, input_tokens: int = 200) -> dict[str, Any]:
    """The route's options with p95 latency, cost per 1,000 requests and quality over the
    window (priors where too little was measured), the Pareto-optimal ones marked. Sync, and
    read from the database: sync views must not wait on the event loop's snapshots (a
    request holding a snapshot's lock may be waiting for this very thread)."""
    snapshot = routing_config_read()
    route = snapshot.routes.get(route_name)
    if route is None:
        raise NotFound(f"The route {route_name!r} does not exist or is not enabled.", param="route")
    enabled = {row.name: EndpointConfig.from_model(row) for row in ModelEndpoint.objects.filter(enabled=True)}
    measured = measured_load(route.options, window_s=window_s, max_rows=settings.LLMOPS_ROUTING_STATS_MAX_ROWS)
    judged = options_figures(route, snapshot, enabled=enabled, measured=measured, input_tokens=input_tokens)
    figures = [f for f, _ in judged]
    optimal = pareto_optimal(figures)
    options = [
        {**f.dump(), "kind": "cascade" if f.option.startswith("cascade:") else "model", "pareto": f.option in optimal}
        for f in figures
    ]
    return {
        "route": route.name,
        "window_s": window_s,
        "min_samples": settings.LLMOPS_ROUTING_MIN_SAMPLES,
        "options": options,
        "frontier": [o["option"] for o in options if o["pareto"]],
    }
