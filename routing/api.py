"""GET /api/routing/preview: what routing would do with a request, calling no model.
GET /api/routing/pareto: every option of a route with what it measured, the frontier marked."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llmops.api.chat import chat_request_data, inference_request, validated
from llmops.api.openapi import ERROR_HEADERS, error_responses
from llmops.api.serializers import NO_NULL_CHARACTER, NOT_BLANK, PROMPT_REFERENCE, ChatCompletionRequestSerializer
from llmops.api.views import GatewayAPIView, read_json_object
from llmops.auth import ApiKeyAuthentication, KeyOrStaff
from llmops.catalog import ApiKeyInfo, EndpointConfig
from llmops.errors import InvalidRequest
from llmops.pipeline import route_preview
from monitoring.windows import WINDOW_PATTERN
from routing.checks import CheckSpec
from routing.selectors import pareto_options, window_parsed
from routing.services import RoutePlan
from routing.types import LIMIT_NAMES


def _endpoint(endpoint: EndpointConfig) -> dict[str, Any]:
    return {"model": endpoint.name, "provider": endpoint.provider, "simulated": endpoint.provider == "simulated"}


def _checks(checks: CheckSpec) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if checks.labels:
        found["labels"] = list(checks.labels)
    if checks.pattern is not None:
        found["pattern"] = checks.pattern.pattern
    if checks.json_schema is not None:
        found["json_schema"] = checks.json_schema
    if checks.confidence:
        found["confidence"] = checks.confidence
    if checks.judge_model:
        found["judge_model"] = checks.judge_model
    return found


def preview_body(model: str, plan: RoutePlan) -> dict[str, Any]:
    features = plan.features
    return {
        "object": "routing.preview",
        "model": model,
        "route": plan.route or None,
        "rule": plan.rule or None,
        "option": plan.option,
        "reason": plan.reason,
        "candidates": [_endpoint(e) for e in plan.candidates],
        "cascade": None
        if plan.cascade is None
        else {
            "name": plan.cascade.name,
            "steps": [
                {
                    **_endpoint(step.candidates[0]),
                    "fallbacks": [e.name for e in step.candidates[1:]],
                    "checks": _checks(step.step.checks),
                    "threshold": step.step.threshold,
                }
                for step in plan.cascade_steps
            ],
        },
        "considered": plan.considered,
        "features": None
        if features is None
        else {
            "task_type": features.task_type or None,
            "complexity": features.complexity or None,
            "prompt": features.prompt or None,
            "input_tokens": features.input_tokens,
            "metadata": features.metadata,
        },
    }


class PreviewQuerySerializer(serializers.Serializer):
    """A preview's query string: the parts of a chat request routing looks at."""

    model = serializers.CharField(max_length=200, validators=[NOT_BLANK], help_text="route:<name>, auto, or a model.")
    content = serializers.CharField(
        required=False, allow_blank=True, validators=[NO_NULL_CHARACTER], help_text="The last user turn."
    )
    task_type = serializers.CharField(required=False, max_length=50, validators=[NOT_BLANK])
    complexity = serializers.CharField(required=False, max_length=20, validators=[NOT_BLANK])
    prompt = serializers.CharField(required=False, max_length=120, validators=[PROMPT_REFERENCE])
    max_latency_ms = serializers.FloatField(required=False, min_value=0, max_value=1e9)
    max_cost_per_1k = serializers.FloatField(required=False, min_value=0, max_value=1e9)
    min_quality = serializers.FloatField(required=False, min_value=0, max_value=1)


PREVIEW_QUERY = PreviewQuerySerializer()


def preview_payload(request: HttpRequest) -> dict[str, Any]:
    """A chat request from the query string (GET) or the body (POST)."""
    if request.method == "POST":
        return read_json_object(request)
    query = request.GET
    repeated = [name for name in query if len(query.getlist(name)) > 1]
    if repeated:
        raise InvalidRequest(f"{repeated[0]}: give it once.", param=repeated[0])
    unknown = [name for name in query if name not in PREVIEW_QUERY.fields]
    if unknown:
        raise InvalidRequest(
            f"{unknown[0]} is not a preview parameter (use {', '.join(PREVIEW_QUERY.fields)}; POST a chat body "
            "for metadata and variables).",
            param=unknown[0],
        )
    data = validated(PREVIEW_QUERY, query.dict())
    payload: dict[str, Any] = {k: v for k, v in data.items() if k in ("model", "task_type", "complexity", "prompt")}
    limits = {name: data[name] for name in LIMIT_NAMES if name in data}
    if limits:
        payload["limits"] = limits
    if "content" in data or "prompt" not in data:
        # No last turn given: the rules that look at one see it empty.
        payload["messages"] = [{"role": "user", "content": data.get("content", "")}]
    return payload


class RoutePreviewView(GatewayAPIView):
    @extend_schema(
        operation_id="routing_preview",
        summary="Dry run: the candidates routing would try for a request, and why",
        description=(
            "GET with the query parameters below (the limits as max_latency_ms, max_cost_per_1k, min_quality), "
            "or POST a chat completion body (for metadata and prompt variables too). No model is called, nothing "
            "is counted against the key's limits."
        ),
        parameters=[PreviewQuerySerializer, *ERROR_HEADERS],
        responses={200: dict, **error_responses(400, 401, 404, 405, 409, 422, 500)},
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        return await self._preview(request, api_key)

    @extend_schema(
        operation_id="routing_preview_body",
        summary="Dry run for a whole chat completion body",
        description="The same as GET, for a chat completion body (metadata and prompt variables included).",
        request=ChatCompletionRequestSerializer,
        parameters=ERROR_HEADERS,
        responses={200: dict, **error_responses(400, 401, 404, 405, 409, 413, 422, 500)},
    )
    async def post(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        return await self._preview(request, api_key)

    async def _preview(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        data = chat_request_data(preview_payload(request))
        inference = inference_request(data, api_key=api_key, cache_mode="bypass")
        plan = await route_preview(inference)
        return JsonResponse(preview_body(data["model"], plan))


WINDOW_FORMAT = RegexValidator(WINDOW_PATTERN, "Like 15m, 24h or 7d.")


class ParetoView(APIView):
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [KeyOrStaff]

    class InputSerializer(serializers.Serializer):
        route = serializers.CharField(max_length=100, validators=[NOT_BLANK])
        window = serializers.CharField(
            required=False,
            validators=[WINDOW_FORMAT],
            help_text="15m, 24h (the default), 7d: a whole number of s, m, h or d.",
        )

    @extend_schema(
        operation_id="routing_pareto",
        summary="A route's options with measured p95 latency, cost per 1,000 requests and quality",
        description=(
            "Each model and cascade the route can use, with figures measured over the window (gateway-wide; the "
            "catalog's priors where fewer than LLMOPS_ROUTING_MIN_SAMPLES requests were measured) and quality from "
            "the latest `manage.py evaluate`; `pareto` marks the options no other beats on all three."
        ),
        parameters=[InputSerializer, *ERROR_HEADERS],
        responses={200: dict, **error_responses(400, 401, 403, 404, 405, 500)},
    )
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        window_s = window_parsed(params.validated_data.get("window"))
        body = pareto_options(route_name=params.validated_data["route"], window_s=window_s)
        return Response(body)
