"""GET /api/metrics/summary, /api/metrics/timeseries and /api/metrics/models: a window's
figures from the rollups, for a signed-in staff member (everyone's traffic, or one key's
with `api_key`) and for an API key (its own traffic only)."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llmops.api.openapi import ERROR_HEADERS, error_responses
from llmops.auth import ApiKeyAuthentication, ApiKeyPrincipal, KeyOrStaff
from llmops.errors import GatewayError, InvalidRequest
from monitoring.figures import metrics_models, metrics_summary, metrics_timeseries, series_filter
from monitoring.windows import WINDOW_PATTERN, Window, window_resolve

WINDOW_FORMAT = RegexValidator(WINDOW_PATTERN, "Like 15m, 24h or 7d.")
STEPS = {"1m": 60, "1h": 3600, "1d": 86400}
MAX_POINTS = 2000


class MetricsQuerySerializer(serializers.Serializer):
    window = serializers.CharField(
        required=False, validators=[WINDOW_FORMAT], help_text="15m, 24h (the default), 7d: ending now."
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


class MetricsView(APIView):
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [KeyOrStaff]
    InputSerializer: type[serializers.Serializer] = MetricsQuerySerializer

    def parsed(self, request: Request) -> tuple[Window, dict[str, Any], Any, dict[str, Any]]:
        """The window, the filters, their Q and the other parameters; 4xx on anything else."""
        query = request.query_params
        known = self.InputSerializer().fields
        unknown = [name for name in query if name not in known]
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter {unknown[0]!r}: use {', '.join(known)}.", param=unknown[0], code="unknown_parameter"
            )
        repeated = [name for name in query if len(query.getlist(name)) > 1]
        if repeated:
            raise InvalidRequest("Give it once.", param=repeated[0])
        params = self.InputSerializer(data=query.dict())
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        window = window_resolve(
            window=data.pop("window", None), start=data.pop("start", None), end=data.pop("end", None)
        )
        own_key = request.auth.id if isinstance(request.user, ApiKeyPrincipal) else None
        if own_key is not None and data.get("api_key") not in (None, own_key):
            raise GatewayError(
                "An API key sees only its own traffic: leave api_key out, or name this key's own id.",
                param="api_key",
                code="not_your_key",
                status=403,
                error_type="permission_error",
            )
        filters = {name: data.pop(name) for name in ("model", "route", "prompt", "provider", "api_key") if name in data}
        return window, filters, series_filter(filters, api_key_id=own_key), data

    @staticmethod
    def head(kind: str, window: Window, filters: dict[str, Any]) -> dict[str, Any]:
        return {"object": kind, "window": window.dump(), "filters": filters}


ERRORS = error_responses(
    400,
    401,
    403,
    405,
    500,
    e400="A malformed window or date, an unknown parameter, or a window reaching past retention.",
    e403="Not staff, or an API key asking for another key's traffic.",
)


class MetricsSummaryView(MetricsView):
    @extend_schema(
        operation_id="metrics_summary",
        summary="A window's requests, errors, latency and TTFT percentiles, tokens, cost, cache and quality",
        parameters=[MetricsQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        window, filters, where, _ = self.parsed(request)
        body = metrics_summary(window=window, where=where)
        return Response({**self.head("metrics.summary", window, filters), **body})


class MetricsModelsView(MetricsView):
    @extend_schema(
        operation_id="metrics_models",
        summary="The same figures per model named, busiest first",
        parameters=[MetricsQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        window, filters, where, _ = self.parsed(request)
        return Response({**self.head("list", window, filters), "data": metrics_models(window=window, where=where)})


class MetricsTimeseriesView(MetricsView):
    InputSerializer = TimeseriesQuerySerializer

    @extend_schema(
        operation_id="metrics_timeseries",
        summary="The same figures per minute, hour or day of the window",
        parameters=[TimeseriesQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        window, filters, where, rest = self.parsed(request)
        step = STEPS.get(rest.get("step", ""))
        if step is not None and window.seconds / step > MAX_POINTS:
            raise InvalidRequest(f"That is more than {MAX_POINTS} points: use a longer step.", param="step")
        body = metrics_timeseries(window=window, where=where, step=step)
        return Response({**self.head("metrics.timeseries", window, filters), **body})
