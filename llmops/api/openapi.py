"""The OpenAPI document's view of the API: the bodies and headers of its answers, every
error it can give, and the request rules drf-spectacular cannot read off a serializer.

The views build their bodies as plain dicts (llmops/api/chat.py), for speed: these
serializers describe them for the schema only, and tests/test_openapi.py checks real
answers against the schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from llmops.api.serializers import UNSUPPORTED
from llmops.errors import ErrorSerializer


class ConstantField(serializers.CharField):
    """A string that is always `value`, like a body's `"object": "chat.completion"`."""

    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value
        super().__init__(**kwargs)


class ConstantFieldScheme(OpenApiSerializerFieldExtension):
    target_class = ConstantField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {"type": "string", "enum": [self.target.value]}


class ChatCompletionRequestScheme(OpenApiSerializerExtension):
    """What `chat_request_data` checks beyond the serializer's fields: messages or a
    prompt, and the OpenAI fields the gateway refuses unless they are empty."""

    target_class = "llmops.api.serializers.ChatCompletionRequestSerializer"

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        refused = "Not supported by this gateway yet: any value but null, false or [] is refused with 400."
        for name in UNSUPPORTED:
            schema["properties"][name] = {
                "oneOf": [{"type": "boolean", "enum": [False]}, {"type": "array", "maxItems": 0}],
                "nullable": True,
                "description": refused,
            }
        schema["properties"]["response_format"] = {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": ["text"]}},
            "required": ["type"],
            "additionalProperties": False,
            "nullable": True,
            "description": 'Only {"type": "text"} (the default); JSON modes are refused with 400.',
        }
        schema["anyOf"] = [
            {"required": ["messages"], "properties": {"messages": {"minItems": 1}}},
            {"required": ["prompt"]},
        ]
        return schema


class CachedTokensSerializer(serializers.Serializer):
    cached_tokens = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    prompt_tokens_details = CachedTokensSerializer()


class GatewayReportSerializer(serializers.Serializer):
    """The answer's `llmops` field: what the gateway did."""

    request_id = serializers.CharField()
    provider = serializers.CharField()
    cost_usd = serializers.CharField(help_text="US dollars, as plain digits.")
    cache = serializers.CharField(help_text="The answer cache's result: hit, semantic_hit, miss or bypass.")
    saved_usd = serializers.CharField(help_text="What a cache hit saved, in US dollars.")
    latency_ms = serializers.FloatField()
    ttft_ms = serializers.FloatField(allow_null=True)
    simulated = serializers.BooleanField()
    cache_write_tokens = serializers.IntegerField()


class AssistantMessageSerializer(serializers.Serializer):
    role = ConstantField("assistant")
    content = serializers.CharField()
    refusal = serializers.CharField(allow_null=True)


class ChatCompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AssistantMessageSerializer()
    finish_reason = serializers.CharField(help_text="stop, or length when max_tokens cut the answer.")
    logprobs = serializers.JSONField(allow_null=True)


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = ConstantField("chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatCompletionChoiceSerializer(many=True)
    usage = UsageSerializer()
    system_fingerprint = serializers.CharField(allow_null=True)
    llmops = GatewayReportSerializer()


class ModelFactsSerializer(serializers.Serializer):
    context_window = serializers.IntegerField()
    input_price_per_mtok = serializers.CharField(help_text="US dollars per million input tokens.")
    output_price_per_mtok = serializers.CharField(help_text="US dollars per million output tokens.")
    simulated = serializers.BooleanField()
    available = serializers.BooleanField(
        help_text="False when this gateway cannot run the model: a local model whose runtime "
        "(llama-cpp-python) is not installed. Calling it answers 503 model_unavailable."
    )
    unavailable_reason = serializers.CharField(allow_null=True, help_text="Why it is unavailable, or null.")


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = ConstantField("model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField(help_text="The provider: openai, anthropic, local or simulated.")
    llmops = ModelFactsSerializer()


class ModelListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = ModelSerializer(many=True)


# One Server-Sent Event, as tools that read the stream see each.
EVENT_STREAM = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
    "description": (
        "Server-Sent Events: each event's data is a chat.completion.chunk (`choices[0].delta` carries "
        "the text), the last one's is `[DONE]`. Comment lines (`: keep-alive`) come while the first "
        "token is awaited. A failure after the first event is sent as an event holding an error body."
    ),
}


def header(name: str, description: str, *, statuses: list[int], required: bool = False) -> OpenApiParameter:
    """A response header, documented on the answers with these statuses."""
    return OpenApiParameter(
        name, str, OpenApiParameter.HEADER, description=description, response=statuses, required=required
    )


CACHE_MODE_HEADER = OpenApiParameter(
    "x-llmops-cache-mode",
    str,
    OpenApiParameter.HEADER,
    enum=["use", "bypass", "refresh"],
    description="The answer cache's mode when the body has no `cache.mode`: use (the default), bypass or refresh.",
)

CHAT_HEADERS = [
    header("x-llmops-request-id", "The gateway's id for this request.", statuses=[200], required=True),
    header("x-llmops-model", "The catalog model that answered.", statuses=[200], required=True),
    header("x-llmops-provider", "That model's provider.", statuses=[200], required=True),
    header(
        "x-llmops-cache", "The answer cache's result: hit, semantic_hit, miss or bypass.", statuses=[200], required=True
    ),
    header("x-llmops-attempts", "How many provider calls (retries and fallbacks included) it took.", statuses=[200]),
    header("x-llmops-cost-usd", "What the answer cost, in US dollars (whole answers only).", statuses=[200]),
    header("x-llmops-simulated", "`true` when a simulated model answered.", statuses=[200]),
    header("x-llmops-route", "The route the request went through (model=route:<name> or auto).", statuses=[200]),
    header("x-llmops-route-reason", "Why routing chose what it chose: the rule, or the limits.", statuses=[200]),
    header("Retry-After", "Seconds to wait before trying again.", statuses=[429, 503]),
    *(
        header(
            f"x-ratelimit-{kind}-{unit}",
            f"The API key's {unit} rate limit ({kind}), when it has one.",
            statuses=[200, 429],
        )
        for kind in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    ),
]

ERROR_HEADERS = [
    header("WWW-Authenticate", "`Bearer`: the scheme to authenticate with.", statuses=[401], required=True),
    header("Allow", "The methods this path accepts.", statuses=[405], required=True),
]

ERRORS = {
    400: "Bad input: a body that is not a JSON object, a field out of its range, or a field the gateway does not "
    "support yet. `param` names the field.",
    401: "Missing, wrong or revoked API key (`Authorization: Bearer <key>`).",
    403: "Signed in, but not staff.",
    404: "No enabled model, route or prompt by that name (`code`: model_not_found, route_not_found, prompt_not_found).",
    409: "The route's target names a model that is missing or disabled in the catalog "
    "(`code`: route_target_unavailable).",
    405: "A method this path does not accept; `Allow` lists those it does.",
    413: "The body is larger than LLMOPS_MAX_BODY_BYTES (`code`: request_too_large).",
    422: "No option of the route meets the request's limits; the message names the closest and by how much it "
    "misses each (`code`: limits_unmet).",
    429: "Too many requests or tokens for the API key's limits (`type`: rate_limit_exceeded, with Retry-After), "
    "its budget is spent (`code`: insufficient_quota), or the upstream provider is rate limiting.",
    500: "The gateway failed (`type`: server_error).",
    502: "The upstream provider failed or could not be reached, on every candidate model.",
    503: "Every candidate model's circuit breaker is open; Retry-After says when to try again.",
    504: "The upstream provider did not answer in time.",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """The error answers with these statuses, in OpenAI's error shape; `descriptions`
    (`e404="..."`) replace the general ones."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=descriptions.get(f"e{status}", ERRORS[status]))
        for status in statuses
    }
