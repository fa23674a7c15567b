"""What the metric reads are asked: the parameters of /api/metrics/* (and of the dashboard,
which reads the same), checked once, and the bodies those reads answer with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from llmops.errors import GatewayError, InvalidRequest
from monitoring.figures import FILTERS, Scope, metrics_models, metrics_summary, metrics_timeseries, series_filter
from monitoring.windows import WINDOW_PATTERN, Window, window_resolve

WINDOW_FORMAT = RegexValidator(WINDOW_PATTERN, "Like 15m, 1h, 24h or 7d.")
STEPS = {"1m": 60, "1h": 3600, "1d": 86400}
MAX_POINTS = 2000


class MetricsQuerySerializer(serializers.Serializer):
    window = serializers.CharField(
        required=False, validators=[WINDOW_FORMAT], help_text="15m, 1h, 24h (the default), 7d: ending now."
    )
    start = serializers.DateTimeField(
        required=False, help_text="ISO 8601, instead of window; within LLMOPS_METRICS_RETENTION_DAYS."
    )
    end = serializers.DateTimeField(required=False, help_text="ISO 8601 (default: now).")
    model = serializers.CharField(required=False, max_length=200, help_text="The model or route requests named.")
    route = serializers.CharField(required=False, max_length=100)
    prompt = serializers.CharField(required=False, max_length=120, help_text="name@version")
    provider = serializers.CharField(required=False, max_length=20)
    api_key = serializers.IntegerField(
        required=False, min_value=1, help_text="A key's id (staff); a key may name only itself."
    )


class TimeseriesQuerySerializer(MetricsQuerySerializer):
    step = serializers.ChoiceField(
        choices=list(STEPS), required=False, help_text="1m, 1h or 1d (default: by the window's length)."
    )


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    window: Window
    filters: dict[str, Any]
    where: Scope
    step: int | None = None

    def head(self, kind: str) -> dict[str, Any]:
        return {"object": kind, "window": self.window.dump(), "filters": self.filters}


def metrics_query(data: dict[str, Any], *, own_key: int | None) -> MetricsQuery:
    """The validated parameters as a query. `own_key` is the calling key's id (None for
    staff): a key reads only its own traffic, and naming another key is a 403."""
    window = window_resolve(window=data.get("window"), start=data.get("start"), end=data.get("end"))
    if own_key is not None and data.get("api_key") not in (None, own_key):
        raise GatewayError(
            "An API key sees only its own traffic: leave api_key out, or name this key's own id.",
            param="api_key",
            code="not_your_key",
            status=403,
            error_type="permission_error",
        )
    filters = {name: data[name] for name in FILTERS if name in data}
    step = STEPS.get(data.get("step", ""))
    if step is not None and window.seconds / step > MAX_POINTS:
        raise InvalidRequest(f"That is more than {MAX_POINTS} points: use a longer step.", param="step")
    return MetricsQuery(window=window, filters=filters, where=series_filter(filters, api_key_id=own_key), step=step)


def summary_body(query: MetricsQuery) -> dict[str, Any]:
    return {**query.head("metrics.summary"), **metrics_summary(window=query.window, where=query.where)}


def timeseries_body(query: MetricsQuery) -> dict[str, Any]:
    series = metrics_timeseries(window=query.window, where=query.where, step=query.step)
    return {**query.head("metrics.timeseries"), **series}


def models_body(query: MetricsQuery) -> dict[str, Any]:
    return {**query.head("list"), "data": metrics_models(window=query.window, where=query.where)}
