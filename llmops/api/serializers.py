from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import SkipField, empty, get_error_detail

from llmops.providers.simulated import ANSWER_CHOICES_MAX, ANSWER_MAX_CHARS, LIMITS, validate_overrides

ROLES = ("system", "developer", "user", "assistant")

# DRF's CharField refuses null characters, and when blank is not allowed, text that is
# blank once trimmed. These say so in the OpenAPI document too (drf-spectacular turns a
# RegexValidator into `pattern`), so that a body built from the schema is accepted.
# The whitespace is spelled out as what str.strip() removes (DRF trims with it): the
# schema's regex dialect, ECMA-262, has another idea of \s. Both patterns are linear: no
# nested repetition to backtrack through on a long value.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NULL_CHARACTER = RegexValidator(r"\A[^\x00]+\Z", "Null characters are not allowed.")
NOT_BLANK = RegexValidator(
    rf"\A[{WHITESPACE}]*[^{WHITESPACE}\x00][^\x00]*\Z", "This field may not be blank or contain null characters."
)

# A template's name is a slug; a version a whole number.
PROMPT_REFERENCE = RegexValidator(r"\A[-a-zA-Z0-9_]+(?:@[0-9]+)?\Z", "Must be a prompt's name, or name@version.")

TEXT_PART = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}]})
class MessageContentField(serializers.JSONField):
    pass


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}], "nullable": True}
)
class StopField(serializers.JSONField):
    pass


# Exactly what validate_overrides takes: any string (null characters too) for the text.
@extend_schema_field(
    {
        "type": "object",
        "properties": {
            **{name: {"type": "number", "minimum": low, "maximum": high} for name, (low, high) in LIMITS.items()},
            "answer": {"type": "string", "maxLength": ANSWER_MAX_CHARS},
            "answer_choices": {
                "type": "array",
                "items": {"type": "string", "maxLength": ANSWER_MAX_CHARS},
                "maxItems": ANSWER_CHOICES_MAX,
            },
        },
        "additionalProperties": False,
    }
)
class SimulateField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "propertyNames": {"maxLength": 64},
        "additionalProperties": {"type": "string", "maxLength": 512},
        "maxProperties": 16,
    }
)
class MetadataField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "max_latency_ms": {"type": "number", "minimum": 0},
            "max_cost_per_1k": {"type": "number", "minimum": 0},
            "min_quality": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "additionalProperties": False,
    }
)
class LimitsField(serializers.JSONField):
    pass


class PresentFieldsSerializer(serializers.Serializer):
    """A serializer that visits only the fields a body holds, and those whose absence means
    something (required ones, ones with a default): DRF visits all of them for every request,
    which for the chat request's 27 optional fields was most of its validation's CPU. What
    it accepts, refuses and returns is DRF's own: an absent optional field without a default
    is skipped there too."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            return super().to_internal_value(data)  # DRF's own refusal
        ret: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for field in self._fields_to_visit:
            name = field.field_name
            if name not in data and not (field.required or field.default is not empty):
                continue
            primitive = field.get_value(data)
            try:
                value = field.run_validation(primitive)
                validate = getattr(self, f"validate_{name}", None)
                if validate is not None:
                    value = validate(value)
            except serializers.ValidationError as exc:
                errors[name] = exc.detail
            except DjangoValidationError as exc:
                errors[name] = get_error_detail(exc)
            except SkipField:
                pass
            else:
                self.set_value(ret, field.source_attrs, value)
        if errors:
            raise serializers.ValidationError(errors)
        return ret

    @cached_property
    def _fields_to_visit(self) -> list[Any]:
        return list(self._writable_fields)

    def _read_only_defaults(self) -> dict[str, Any]:
        return {}  # no field of these serializers is read-only


class MessageSerializer(PresentFieldsSerializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = MessageContentField(help_text="A string, or a list of text parts.")
    name = serializers.CharField(required=False, max_length=64, validators=[NOT_BLANK])

    def validate_content(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            parts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise serializers.ValidationError(
                        'Only text content parts ({"type": "text", "text": ...}) are supported.'
                    )
                parts.append(part["text"])
            return "".join(parts)
        if value is None:
            return ""
        raise serializers.ValidationError("Must be a string or a list of text parts.")


class CacheOptionsSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=("use", "bypass", "refresh"),
        default="use",
        help_text="bypass: neither read nor write the answer cache; refresh: ask the model and store its answer.",
    )


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(PresentFieldsSerializer):
    """OpenAI's chat completion request, plus the gateway's own fields (`prompt`,
    `variables`, `simulate`), which the OpenAI SDK sends through `extra_body`."""

    model = serializers.CharField(max_length=200, validators=[NOT_BLANK])
    messages = MessageSerializer(many=True, required=False)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256, validators=[NO_NULL_CHARACTER])
    prompt = serializers.CharField(
        required=False,
        max_length=120,
        validators=[PROMPT_REFERENCE],
        help_text="A prompt template: name or name@version.",
    )
    variables = serializers.DictField(required=False, help_text="Values for the prompt template's variables.")
    cache = CacheOptionsSerializer(required=False, help_text="Per-request answer cache control.")
    simulate = SimulateField(
        required=False,
        help_text=(
            "Simulated models only: latency_ms, ttft_ms, tokens_per_s, output_tokens, error_rate, token_prob "
            "(each token's reported probability); answer, answer_accuracy, answer_choices (a stand-in told the "
            "correct answer: it gives it answer_accuracy of the time, otherwise another choice)."
        ),
    )

    task_type = serializers.CharField(
        required=False,
        max_length=50,
        validators=[NOT_BLANK],
        help_text="What the request is for (classification, extraction, ...): with model=auto, picks the route "
        "mapped to it; routes' rules can match it.",
    )
    complexity = serializers.CharField(
        required=False,
        max_length=20,
        validators=[NOT_BLANK],
        help_text="low, medium, high (routes' rules can match it).",
    )
    metadata = MetadataField(required=False, help_text="Up to 16 string pairs; routes' rules can match them.")
    limits = LimitsField(
        required=False,
        help_text="Routing limits (any subset): max_latency_ms, max_cost_per_1k (USD per 1,000 requests), "
        "min_quality (0 to 1). The route picks the cheapest option that meets them, or answers 422.",
    )

    def validate_metadata(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or len(value) > 16:
            raise serializers.ValidationError("Must be an object of at most 16 string values.")
        for key, item in value.items():
            if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
                raise serializers.ValidationError(
                    "Keys must be strings of up to 64 characters, values strings of up to 512."
                )
        return value

    def validate_stop(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) for v in value):
            return value
        raise serializers.ValidationError("Must be a string or a list of up to 4 strings.")

    def validate_simulate(self, value: Any) -> dict[str, Any]:
        try:
            return validate_overrides(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("messages") and not attrs.get("prompt"):
            raise serializers.ValidationError({"messages": "Must be a non-empty list of messages (or name a prompt)."})
        return attrs


# OpenAI fields the gateway cannot honour yet: answering while ignoring them would be
# silently wrong (a tool call never made, JSON mode not enforced), so they are refused.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "audio", "modalities")


def unsupported_field(data: dict[str, Any]) -> str | None:
    for name in UNSUPPORTED:
        if data.get(name) not in (None, False, []):
            return name
    response_format = data.get("response_format")
    if response_format not in (None, {"type": "text"}):
        return "response_format"
    return None


PARAMS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


def provider_params(data: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters a provider receives, with `max_tokens` as the one name."""
    params = {name: data[name] for name in PARAMS if data.get(name) is not None}
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    if max_tokens:
        params["max_tokens"] = max_tokens
    return params


def normalised_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]
