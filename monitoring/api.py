"""GET /api/metrics/summary, /api/metrics/timeseries and /api/metrics/models: a window's
figures from the rollups, for a signed-in staff member (everyone's traffic, or one key's
with `api_key`) and for an API key (its own traffic only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llmops.api.openapi import ERROR_HEADERS, error_responses
from llmops.auth import ApiKeyAuthentication, ApiKeyPrincipal, KeyOrStaff
from llmops.errors import InvalidRequest
from monitoring.query import (
    MetricsQuery,
    MetricsQuerySerializer,
    TimeseriesQuerySerializer,
    metrics_query,
    models_body,
    summary_body,
    timeseries_body,
)


class MetricsView(APIView):
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [KeyOrStaff]
    InputSerializer: type[serializers.Serializer] = MetricsQuerySerializer
    body: Callable[[MetricsQuery], dict[str, Any]]

    def get(self, request: Request) -> Response:
        query = request.query_params
        known = self.InputSerializer().fields
        unknown = [name for name in query if name not in known]
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter {unknown[0]!r}: use {', '.join(known)}.", param=unknown[0], code="unknown_parameter"
            )
        # A plain dict, not the QueryDict: DRF would read the last of repeated values.
        repeated = [name for name in query if len(query.getlist(name)) > 1]
        if repeated:
            raise InvalidRequest("Give it once.", param=repeated[0])
        params = self.InputSerializer(data=query.dict())
        params.is_valid(raise_exception=True)
        own_key = request.auth.id if isinstance(request.user, ApiKeyPrincipal) else None
        return Response(type(self).body(metrics_query(dict(params.validated_data), own_key=own_key)))


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
    body = summary_body

    @extend_schema(
        operation_id="metrics_summary",
        summary="A window's requests, errors, latency and TTFT percentiles, tokens, cost, cache and quality",
        parameters=[MetricsQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


class MetricsModelsView(MetricsView):
    body = models_body

    @extend_schema(
        operation_id="metrics_models",
        summary="The same figures per model named, busiest first",
        parameters=[MetricsQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


class MetricsTimeseriesView(MetricsView):
    InputSerializer = TimeseriesQuerySerializer
    body = timeseries_body

    @extend_schema(
        operation_id="metrics_timeseries",
        summary="The same figures per minute, hour or day of the window",
        parameters=[TimeseriesQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return super().get(request)
