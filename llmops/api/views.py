"""The OpenAI-compatible API. Views are async end to end and thin: parse, call the
pipeline, shape the answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse, StreamingHttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.views import APIView

from llmops import catalog
from llmops.api.chat import chat_request_data, completion_body, gateway_body, inference_request, usage_body, usd
from llmops.api.openapi import (
    CACHE_MODE_HEADER,
    CHAT_HEADERS,
    ERROR_HEADERS,
    EVENT_STREAM,
    ChatCompletionSerializer,
    ModelListSerializer,
    ModelSerializer,
    error_responses,
)
from llmops.api.serializers import ChatCompletionRequestSerializer
from llmops.auth import ApiKeyAuthentication, authorize
from llmops.catalog import ApiKeyInfo, EndpointConfig
from llmops.errors import GatewayError, InvalidRequest, NotFound, error_body, error_response
from llmops.pipeline import Inference, InferenceRequest, infer, request_rejected, upstream_calls
from llmops.providers import local as local_provider
from llmops.providers.base import UpstreamError

logger = logging.getLogger(__name__)

# Every error answer a view can give, in OpenAI's error shape: the document lists them all.
ERROR_RESPONSES = error_responses(400, 401, 404, 405, 409, 413, 422, 429, 500, 502, 503, 504)


API_METHODS = ("get", "post")


class GatewayAPIView(APIView):
    """A DRF view (so the schema documents it) with a lean async dispatch: no thread hop
    for authentication, the gateway's own key check, and OpenAI's error shape for all."""

    authentication_classes = [ApiKeyAuthentication]  # documents the scheme; dispatch calls `authorize`
    permission_classes: list[Any] = []
    api_methods = API_METHODS

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        self.args, self.kwargs, self.request = args, kwargs, request
        method = (request.method or "").lower()
        handler = getattr(self, method, None) if method in self.api_methods else None
        if not inspect.iscoroutinefunction(handler):
            allowed = ", ".join(
                m.upper() for m in self.api_methods if inspect.iscoroutinefunction(getattr(self, m, None))
            )
            return error_response(
                GatewayError(
                    f"{request.method} is not allowed here (use {allowed}).",
                    status=405,
                    code="method_not_allowed",
                    headers={"Allow": allowed},
                )
            )
        try:
            # The API handler already checked the key of a POST before reading its body.
            api_key = getattr(request, "llmops_api_key", None) or await authorize(request)
            return await handler(request, api_key, *args, **kwargs)
        except GatewayError as exc:
            return error_response(exc)
        except UpstreamError as exc:
            return upstream_error_response(exc)
        except Exception:
            logger.exception("Unhandled error in %s", type(self).__name__)
            return JsonResponse(error_body("The gateway failed to handle this request.", "server_error"), status=500)


def upstream_error_response(exc: UpstreamError) -> JsonResponse:
    response = JsonResponse(error_body(exc.message, exc.error_type), status=exc.status)
    if exc.retry_after:
        response["Retry-After"] = exc.retry_after
    return response


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    limit = settings.LLMOPS_MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > limit:
        raise GatewayError(f"The body is larger than {limit} bytes.", status=413, code="request_too_large")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise GatewayError(f"The body is larger than {limit} bytes.", status=413, code="request_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return data


def gateway_headers(
    response: HttpResponse,
    *,
    request_id: str,
    model: str,
    provider: str,
    attempts: int | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Which model answered (a fallback when the one asked for failed) and how many upstream
    attempts it took (0: a cache hit), with the key's rate-limit headers."""
    response["x-llmops-request-id"] = request_id
    response["x-llmops-model"] = model
    response["x-llmops-provider"] = provider
    if attempts is not None:
        response["x-llmops-attempts"] = str(attempts)
    if provider == "simulated":
        response["x-llmops-simulated"] = "true"
    for name, value in (extra or {}).items():
        response[name] = value


def cache_mode(request: HttpRequest, data: dict[str, Any]) -> str:
    """The body's `cache.mode`, else the x-llmops-cache-mode header, else `use`."""
    if "cache" in data:
        return data["cache"]["mode"]
    header = request.headers.get("x-llmops-cache-mode", "use").strip().lower()
    if header not in ("use", "bypass", "refresh"):
        raise InvalidRequest(
            "The x-llmops-cache-mode header must be use, bypass or refresh.", param="x-llmops-cache-mode"
        )
    return header


class ChatCompletionsView(GatewayAPIView):
    @extend_schema(
        operation_id="chat_completions_create",
        summary="Create a chat completion (OpenAI-compatible, streams with stream=true)",
        description=(
            "OpenAI's chat completion, through the gateway's routing, answer cache, retries and "
            "fallbacks. Fields the gateway cannot honour yet (tools, JSON modes, logprobs, audio) "
            "are refused with 400 rather than ignored."
        ),
        request=ChatCompletionRequestSerializer,
        parameters=[CACHE_MODE_HEADER, *CHAT_HEADERS, *ERROR_HEADERS],
        responses={
            (200, "application/json"): OpenApiResponse(
                ChatCompletionSerializer,
                description="A chat.completion; with stream=true, an SSE stream of chat.completion.chunk.",
            ),
            (200, "text/event-stream"): EVENT_STREAM,
            **ERROR_RESPONSES,
        },
    )
    async def post(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        started = time.perf_counter()
        payload: dict[str, Any] = {}
        try:
            payload = read_json_object(request)
            data = chat_request_data(payload)
            mode = cache_mode(request, data)
        except GatewayError as exc:
            model = payload.get("model")
            rejected = InferenceRequest(
                api_key=api_key, model=model[:200] if isinstance(model, str) else "", messages=[], started=started
            )
            request_rejected(rejected, exc)
            raise
        inference = inference_request(data, api_key=api_key, cache_mode=mode)
        inference.started = started
        if data["stream"]:
            options = data.get("stream_options") or {}
            return await stream_response(inference, include_usage=options.get("include_usage", False))
        result = await infer(inference)
        response = HttpResponse(json.dumps(completion_body(result)), content_type="application/json")
        gateway_headers(
            response,
            request_id=result.request_id,
            model=result.model,
            provider=result.provider,
            attempts=result.upstream_calls,
            extra=result.headers,
        )
        response["x-llmops-cache"] = result.cache
        response["x-llmops-cost-usd"] = usd(result.cost_usd)
        return response


async def stream_response(inference: InferenceRequest, *, include_usage: bool) -> HttpResponse:
    """Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`."""
    stream = Inference(inference, stream=True)
    await stream.open()  # bad input and refusals get their own status
    # A first token within the grace period comes with the headers, so that an upstream
    # failing at once still gets its own status (429, 502...). A slower one gets the headers
    # at once and keep-alive comments meanwhile, so proxies with idle timeouts keep the
    # connection; a failure after that ends the stream with an error event.
    first = asyncio.ensure_future(stream.first())
    try:
        await asyncio.wait({first}, timeout=settings.LLMOPS_SSE_KEEPALIVE_S)
    except asyncio.CancelledError:
        # The client left while the first token was awaited: stop the attempt, give back
        # its slot and reservation, and record the request as cancelled.
        await _close_stream(first, stream)
        raise
    if first.done():
        first.result()
    endpoint = stream.endpoint
    attempts: int | None = upstream_calls(stream.attempts) if first.done() else None
    chunk_id = f"chatcmpl-{inference.request_id}"
    created = int(time.time())

    def chunk_head() -> str:
        # Built once the first piece came: after a fallback the chunks name the model that
        # answered (the headers may have left before it, naming the one asked for).
        model = stream.endpoint.name
        return json.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model})[:-1]

    async def events():
        try:
            while not first.done():
                yield ": keep-alive\n\n"
                await asyncio.wait({first}, timeout=settings.LLMOPS_SSE_KEEPALIVE_S)
            first.result()
            head = chunk_head()
            # Every token chunk is this prefix + the JSON string of the text + this suffix.
            token_prefix = f'data: {head}, "choices": [{{"index": 0, "delta": {{"content": '
            token_suffix = '}, "finish_reason": null}]}\n\n'

            def event(payload: dict[str, Any]) -> str:
                return f"data: {head}, {json.dumps(payload)[1:]}\n\n"

            yield event(
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            )
            async for text in stream:
                yield token_prefix + json.dumps(text) + token_suffix
            result = stream.result
            final: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": result.finish_reason}]}
            if not include_usage:
                final["llmops"] = gateway_body(result)
            yield event(final)
            if include_usage:
                yield event({"choices": [], "usage": usage_body(result), "llmops": gateway_body(result)})
            yield "data: [DONE]\n\n"
        except (GatewayError, UpstreamError) as exc:
            # Mid-stream failure: say so in the stream (the SDKs raise it), never end silently.
            yield f"data: {json.dumps(error_body(exc.message, exc.error_type))}\n\n"
        except Exception:
            logger.exception("Stream %s failed", inference.request_id)
            yield f"data: {json.dumps(error_body('The gateway failed while streaming.', 'server_error'))}\n\n"
        finally:
            await _close_stream(first, stream)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    gateway_headers(
        response,
        request_id=inference.request_id,
        model=endpoint.name,
        provider=endpoint.provider,
        attempts=attempts,
        extra=stream.headers,
    )
    response["x-llmops-cache"] = stream.cache_status
    # The handler calls this once the response is over, however it ended: a client that left
    # before the first chunk was sent must still free the upstream call.
    response.llmops_close = functools.partial(_close_stream, first, stream)
    return response


async def _close_stream(first: asyncio.Future[None], stream: Inference) -> None:
    first.cancel()
    with contextlib.suppress(BaseException):
        await first  # its own cleanup runs before the stream is closed
    await stream.aclose()


def model_body(endpoint: EndpointConfig) -> dict[str, Any]:
    unavailable = local_provider.unavailable() if endpoint.provider == "local" else None
    return {
        "id": endpoint.name,
        "object": "model",
        "created": 0,
        "owned_by": endpoint.provider,
        "llmops": {
            "context_window": endpoint.context_window,
            "input_price_per_mtok": str(endpoint.input_price_per_mtok),
            "output_price_per_mtok": str(endpoint.output_price_per_mtok),
            "simulated": endpoint.provider == "simulated",
            "available": unavailable is None,
            "unavailable_reason": unavailable,
        },
    }


class ModelListView(GatewayAPIView):
    @extend_schema(
        operation_id="models_list",
        summary="List the enabled models",
        description="The catalog's enabled models, in OpenAI's list shape, with their prices.",
        parameters=ERROR_HEADERS,
        responses={200: ModelListSerializer, **error_responses(401, 405, 500)},
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        endpoints = await catalog.endpoint_list_enabled()
        return JsonResponse({"object": "list", "data": [model_body(e) for e in endpoints]})


class ModelDetailView(GatewayAPIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="Describe one enabled model",
        description="One enabled model of the catalog, with its prices.",
        parameters=[OpenApiParameter("model", str, OpenApiParameter.PATH), *ERROR_HEADERS],
        responses={200: ModelSerializer, **error_responses(401, 404, 405, 500)},
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo, model: str) -> HttpResponse:
        endpoint = await catalog.endpoint_get(model)
        if endpoint is None or not endpoint.enabled:
            raise NotFound(
                f"The model {model!r} does not exist or is not enabled.", param="model", code="model_not_found"
            )
        return JsonResponse(model_body(endpoint))


@csrf_exempt
async def api_path_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any method on a path under /v1/ or /api/ that names nothing: a JSON 404, not Django's
    HTML page. A known path missing its slash is redirected, as APPEND_SLASH would."""
    path = request.path_info
    if request.method in ("GET", "HEAD") and not path.endswith("/"):
        try:
            match = resolve(path + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != "api-not-found":
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return error_response(NotFound(f"There is nothing at {path}.", code="unknown_path"))
