"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp server...), through
the official SDK's AsyncOpenAI with the catalog entry's base_url."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
from django.conf import settings

from llmops.catalog import EndpointConfig
from llmops.providers.base import (
    Completion,
    ProviderCall,
    StreamDelta,
    UpstreamError,
    Usage,
    client_for,
    provider_secret,
    upstream_error_from_sdk,
)

PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


def _client(endpoint: EndpointConfig) -> openai.AsyncOpenAI:
    env_name = endpoint.api_key_env or "OPENAI_API_KEY"
    key = provider_secret(env_name)
    if not key:
        # A variable the catalog names explicitly is one staff meant to set: sending no key
        # would only turn a config mistake into a misleading upstream 401.
        if endpoint.api_key_env or not endpoint.base_url:
            raise UpstreamError(f"{env_name} is not set on the gateway, so {endpoint.name} cannot be called.")
        key = "unused"  # local OpenAI-compatible servers often need no key
    timeout, retries = settings.LLMOPS_UPSTREAM_TIMEOUT_S, settings.LLMOPS_UPSTREAM_MAX_RETRIES
    return client_for(
        ("openai", endpoint.base_url, key, timeout, retries),
        lambda: openai.AsyncOpenAI(
            api_key=key, base_url=endpoint.base_url or None, timeout=timeout, max_retries=retries
        ),
    )


def _arguments(endpoint: EndpointConfig, call: ProviderCall) -> dict[str, Any]:
    args: dict[str, Any] = {"model": endpoint.upstream_model or endpoint.name, "messages": call.messages}
    for name in PASSTHROUGH:
        if name in call.params:
            args[name] = call.params[name]
    if "max_tokens" in call.params:
        # OpenAI's own API prefers the new name; compatible servers know the old one.
        args["max_tokens" if endpoint.base_url else "max_completion_tokens"] = call.params["max_tokens"]
    return args


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = getattr(raw, "prompt_tokens_details", None)
    return Usage(
        input_tokens=raw.prompt_tokens or 0,
        output_tokens=raw.completion_tokens or 0,
        cached_tokens=(getattr(details, "cached_tokens", 0) or 0) if details else 0,
    )


def _translate(exc: openai.OpenAIError) -> UpstreamError:
    return upstream_error_from_sdk(
        exc,
        timeouts=(openai.APITimeoutError,),
        unreachable=(openai.APIConnectionError,),
        status_error=openai.APIStatusError,
    )


class OpenAIProvider:
    name = "openai"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        try:
            response = await _client(endpoint).chat.completions.create(**_arguments(endpoint, call))
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        choice = response.choices[0]
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            usage=_usage(response.usage),
        )

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        try:
            stream = await _client(endpoint).chat.completions.create(
                **_arguments(endpoint, call), stream=True, stream_options={"include_usage": True}
            )
            finish_reason = None
            usage = Usage()
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    if chunk.choices:
                        choice = chunk.choices[0]
                        if choice.delta and choice.delta.content:
                            yield StreamDelta(text=choice.delta.content)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        yield StreamDelta(finish_reason=finish_reason or "stop", usage=usage)
