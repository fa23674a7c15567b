"""Chat requests and answers in OpenAI's shapes, for every entry point that speaks them
(REST and the WebSocket): checked fields in, an InferenceRequest out, bodies back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.serializers import Serializer

from llmops.api.serializers import (
    ChatCompletionRequestSerializer,
    normalised_messages,
    provider_params,
    unsupported_field,
)
from llmops.catalog import ApiKeyInfo
from llmops.errors import InvalidRequest, first_validation_error
from llmops.pipeline import InferenceRequest, InferenceResult
from routing.types import limits_parsed

# DRF deep-copies a serializer's fields for every new instance, which measured as a
# seventh of a request's CPU. Validation is synchronous and runs only on the event loop's
# thread, so one unbound instance serves every request.
CHAT_REQUEST = ChatCompletionRequestSerializer()


def validated(serializer: Serializer, data: dict[str, Any]) -> dict[str, Any]:
    try:
        return serializer.run_validation(data)
    except ValidationError as exc:
        param, message = first_validation_error(exc.detail)
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param or None) from None


def usd(amount: Decimal) -> str:
    """Dollars as plain digits: str() of a small Decimal would say 7.000E-7."""
    return format(amount, "f")


def chat_request_data(payload: dict[str, Any]) -> dict[str, Any]:
    """A chat request's fields, checked: raises InvalidRequest naming the field."""
    refused = unsupported_field(payload)
    if refused:
        raise InvalidRequest(f"{refused} is not supported by this gateway yet.", param=refused, code="unsupported")
    data = validated(CHAT_REQUEST, payload)
    if "limits" in data:
        data["limits"] = limits_parsed(data["limits"])
    return data


def inference_request(
    data: dict[str, Any], *, api_key: ApiKeyInfo, cache_mode: str, endpoint_kind: str = "chat.completions"
) -> InferenceRequest:
    """What the pipeline is asked, from checked chat fields (REST and WebSocket alike)."""
    return InferenceRequest(
        api_key=api_key,
        model=data["model"],
        messages=normalised_messages(data.get("messages") or []),
        params=provider_params(data),
        prompt=data.get("prompt"),
        variables=data.get("variables") or {},
        simulate=data.get("simulate"),
        cache_mode=cache_mode,
        endpoint_kind=endpoint_kind,
        task_type=data.get("task_type", ""),
        complexity=data.get("complexity", ""),
        metadata=data.get("metadata") or {},
        limits=data.get("limits"),
    )


def usage_body(result: InferenceResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def gateway_body(result: InferenceResult) -> dict[str, Any]:
    """What the gateway did, in the answer's own `llmops` field."""
    return {
        "request_id": result.request_id,
        "model": result.model,
        "attempts": result.upstream_calls,
        "provider": result.provider,
        "cost_usd": usd(result.cost_usd),
        "cache": result.cache,
        "saved_usd": usd(result.saved_usd),
        "latency_ms": round(result.latency_ms, 3),
        "ttft_ms": None if result.ttft_ms is None else round(result.ttft_ms, 3),
        "simulated": result.simulated,
        "cache_write_tokens": result.usage.cache_write_tokens,
        **route_body(result),
    }


def route_body(result: InferenceResult) -> dict[str, Any]:
    """How routing chose, and for a cascade each step: its model, score, cost, and whether
    its answer was kept."""
    if not result.route:
        return {}
    found: dict[str, Any] = {"route": result.route, "route_reason": result.route_reason}
    if result.cascade:
        found["cascade"] = result.cascade
        found["quality"] = result.quality
    return found


def completion_body(result: InferenceResult) -> dict[str, Any]:
    """A whole answer as OpenAI's `chat.completion`."""
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_body(result),
        "system_fingerprint": None,
        "llmops": gateway_body(result),
    }
