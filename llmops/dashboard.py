"""The staff dashboard at /dashboard/: a window's figures, their time series, the per-model
table, the open alerts and a route's Pareto chart. The first view is drawn here from monitoring's
figures (the same functions /api/metrics/* answer from); the page's script then polls those
endpoints and draws again, and asks this page for the parts no metrics API answers
(`?part=alerts`, `?part=pareto`). The script formats figures as `shown` formats them: change
one, change the other."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlencode

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render
from django.utils.safestring import mark_safe

from llmops.api.chat import validated
from llmops.errors import GatewayError, InvalidRequest, error_response
from llmops.models import ApiKey
from monitoring.alerts import alerts_open
from monitoring.figures import FILTERS
from monitoring.models import MetricSeries
from monitoring.query import MetricsQuerySerializer, metrics_query, models_body, summary_body, timeseries_body
from monitoring.windows import Window, window_seconds
from routing.config import routing_config_read
from routing.pareto_chart import pareto_svg
from routing.selectors import pareto_options

WINDOWS = ("15m", "1h", "24h", "7d")
DEFAULT_WINDOW = "1h"
CUSTOM = "custom"
PARETO_DEFAULT_WINDOW = "24h"  # the Pareto's figures run up to now: a custom window has no length of its own
POLL_MS = 5000
PARETO_EVERY = 6  # polls: the Pareto reads raw rows, and its figures move slowly
API_PARAMS = ("window", "start", "end", *FILTERS)
MICRODOLLARS = Decimal("0.000001")
DASH = "—"

# (group, label, figure, format): the summary's tiles, in the order they are drawn.
TILES = (
    ("Traffic", "Requests", "requests", "count"),
    ("Traffic", "Rate", "requests_per_s", "rate"),
    ("Traffic", "Errors", "errors", "count"),
    ("Traffic", "Error rate", "error_rate", "percent"),
    ("Latency", "p50", "latency_ms.p50", "ms"),
    ("Latency", "p95", "latency_ms.p95", "ms"),
    ("Latency", "p99", "latency_ms.p99", "ms"),
    ("Time to first token", "p50", "ttft_ms.p50", "ms"),
    ("Time to first token", "p95", "ttft_ms.p95", "ms"),
    ("Time to first token", "Streams", "ttft_ms.streams", "count"),
    ("Tokens", "Input", "tokens.input", "count"),
    ("Tokens", "Output", "tokens.output", "count"),
    ("Tokens", "Cached input", "tokens.cached", "count"),
    ("Cost", "Total", "cost_usd", "usd"),
    ("Cost", "Per 1,000 requests", "cost_per_1k_requests_usd", "usd"),
    ("Cache", "Hit rate", "cache.hit_rate", "percent"),
    ("Cache", "Exact", "cache.exact_hit_rate", "percent"),
    ("Cache", "Semantic", "cache.semantic_hit_rate", "percent"),
    ("Cache", "Saved", "cache.saved_usd", "usd"),
    ("Quality", "Mean check score", "quality.mean", "score"),
    ("Quality", "Scored", "quality.scored", "count"),
    ("Quality", "Escalation rate", "quality.escalation_rate", "percent"),
)
# (label, figure, format): the per-model table's columns after the model's name.
MODEL_COLUMNS = (
    ("Requests", "requests", "count"),
    ("Rate", "requests_per_s", "rate"),
    ("Error rate", "error_rate", "percent"),
    ("p50", "latency_ms.p50", "ms"),
    ("p95", "latency_ms.p95", "ms"),
    ("p99", "latency_ms.p99", "ms"),
    ("TTFT p95", "ttft_ms.p95", "ms"),
    ("Input tokens", "tokens.input", "count"),
    ("Output tokens", "tokens.output", "count"),
    ("Cost", "cost_usd", "usd"),
    ("Per 1,000", "cost_per_1k_requests_usd", "usd"),
    ("Hit rate", "cache.hit_rate", "percent"),
    ("Quality", "quality.mean", "score"),
)


def figure(found: dict[str, Any], path: str) -> Any:
    for name in path.split("."):
        found = found.get(name) if isinstance(found, dict) else None
    return found


def shown(fmt: str, value: Any) -> str:
    """A figure as the page shows it; None (nothing measured) as a dash, never NaN."""
    if value is None:
        return DASH
    if fmt == "count":
        return f"{value:,}"
    if fmt == "rate":
        return f"{value:,.4f}/s"
    if fmt == "percent":
        return f"{value * 100:.2f}%"
    if fmt == "ms":
        return f"{value:,.2f} ms"
    if fmt == "usd":
        # Half up on the decimal string, as the script rounds it (a float would not).
        return f"${Decimal(value).quantize(MICRODOLLARS, rounding=ROUND_HALF_UP):,}"
    if fmt == "score":
        return f"{value:.4f}"
    raise ValueError(f"unknown format {fmt!r}")


def api_query(query: QueryDict) -> dict[str, str]:
    """The page's query string as the metrics API's: blanks dropped, and either a window
    (`custom` means start and end) or start and end, not both, as a form without a script
    sends them."""
    given = {name: query.get(name, "").strip() for name in API_PARAMS}
    given = {name: value for name, value in given.items() if value}
    window = given.get("window")
    if window == CUSTOM or (window is None and "start" in given):
        given.pop("window", None)
        if "start" not in given:
            raise InvalidRequest("A custom window needs a start (and an end, or it runs to now).", param="start")
    else:
        given.pop("start", None)
        given.pop("end", None)
        given["window"] = window or DEFAULT_WINDOW
    return {name: given[name] for name in API_PARAMS if name in given}


def metrics_read(params: dict[str, str]) -> tuple[Window, dict[str, dict[str, Any]]]:
    """What /api/metrics/* answer for these parameters (staff: every key's traffic), as
    their bodies; raises GatewayError with the API's message for a bad window or filter."""
    query = metrics_query(validated(MetricsQuerySerializer(), params), own_key=None)
    bodies = {"summary": summary_body(query), "timeseries": timeseries_body(query), "models": models_body(query)}
    return query.window, bodies


def filter_choices(params: dict[str, str]) -> list[dict[str, Any]]:
    """Each filter's choices as (value, label): what the metric series hold, and every API
    key; the value asked for is kept even when nothing holds it, so the form shows it."""
    found = []
    for name in FILTERS:
        if name == "api_key":
            keys = ApiKey.objects.order_by("name", "id").values_list("id", "name", "prefix")
            options = [(str(pk), f"{label} ({prefix}…)") for pk, label, prefix in keys]
        else:
            values = MetricSeries.objects.exclude(**{name: ""}).order_by(name).values_list(name, flat=True).distinct()
            options = [(value, value) for value in values]
        asked = params.get(name, "")
        if asked and asked not in {value for value, _ in options}:
            options.append((asked, asked))
        label = "API key" if name == "api_key" else name.capitalize()
        found.append({"name": name, "label": label, "options": options, "selected": asked})
    return found


def pareto_part(route: str, window: str) -> dict[str, Any]:
    """The route's Pareto chart as routing draws it, or why there is none."""
    if not route:
        return {"error": "No route is enabled: add or enable one in the admin to see its Pareto chart."}
    try:
        found = pareto_options(route_name=route, window_s=window_seconds(window))
    except GatewayError as error:
        return {"error": error.message}
    # pareto_svg escapes every text it draws.
    return {"chart": mark_safe(pareto_svg(found["options"])), "min_samples": found["min_samples"]}


def _pareto_route(query: QueryDict, routes: list[str]) -> str:
    """The route asked for; else the route filter's, when it is one; else the first."""
    asked = query.get("pareto", "").strip()
    if asked:
        return asked
    filtered = query.get("route", "").strip()
    return filtered if filtered in routes else (routes[0] if routes else "")


def _pareto_window(params: dict[str, str]) -> str:
    """The page's window when it is one that ends now; else the default (a bad window is
    said once, above the figures)."""
    window = params.get("window", "")
    try:
        window_seconds(window)
    except GatewayError:
        return PARETO_DEFAULT_WINDOW
    return window or PARETO_DEFAULT_WINDOW


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tiles(summary: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for group, label, path, fmt in TILES:
        groups.setdefault(group, []).append(
            {"label": label, "figure": path, "format": fmt, "text": shown(fmt, figure(summary, path))}
        )
    return [{"name": name, "tiles": tiles} for name, tiles in groups.items()]


def _model_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": row["model"],
        "cells": [{"figure": path, "text": shown(fmt, figure(row, path))} for _, path, fmt in MODEL_COLUMNS],
    }


@staff_member_required
def dashboard_page(request: HttpRequest) -> HttpResponse:
    query = request.GET
    routes = sorted(routing_config_read().routes)
    pareto_route = _pareto_route(query, routes)
    failed: GatewayError | None = None
    try:
        params = api_query(query)
    except GatewayError as error:
        params, failed = {name: query[name] for name in API_PARAMS if query.get(name)}, error
    pareto_window = _pareto_window(params)
    # The page's script asking for one part again: the parts no metrics API answers.
    if query.get("part") == "pareto":
        part = pareto_part(pareto_route, pareto_window)
        if "error" in part:
            return error_response(InvalidRequest(part["error"], param="pareto"))
        return HttpResponse(part["chart"], content_type="image/svg+xml; charset=utf-8")
    if query.get("part") == "alerts":
        return JsonResponse({"object": "list", "data": alerts_open()})
    windows = WINDOWS if params.get("window") in (None, CUSTOM, *WINDOWS) else (*WINDOWS, params["window"])
    context: dict[str, Any] = {
        "windows": windows,  # with any other window the API takes, such as 30m
        "window": params.get("window", CUSTOM),
        "start": params.get("start", ""),
        "end": params.get("end", ""),
        "params": params,
        "choices": filter_choices(params),
        "routes": routes,
        "pareto_route": pareto_route,
        "pareto_window": pareto_window,
        "alerts": alerts_open(),
        "poll_ms": POLL_MS,
        "pareto_every": PARETO_EVERY,
        "columns": [{"label": label, "figure": path, "format": fmt} for label, path, fmt in MODEL_COLUMNS],
    }
    if failed is None:
        try:
            window, bodies = metrics_read(params)
        except GatewayError as error:
            failed = error
        else:
            if "window" in params:
                # In the custom fields, so that switching to custom starts from this window.
                context.update(start=_iso(window.start), end=_iso(window.end))
            context.update(
                query=urlencode(params),
                bodies=bodies,
                summary=bodies["summary"],
                tiles=_tiles(bodies["summary"]),
                models=[_model_row(row) for row in bodies["models"]["data"]],
            )
    # Last: routing's read of the measurements closes the thread's connection.
    context["pareto"] = pareto_part(pareto_route, pareto_window)
    status = 200
    if failed is not None:
        context["error"], status = failed.message, failed.status
    return render(request, "monitoring/dashboard.html", context, status=status)
