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
    Embeddings,
    ProviderCall,
    StreamDelta,
    UpstreamError,
    Usage,
    client_for,
    is_official_url,
    provider_key,
    upstream_error_from_sdk,
)

PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Passed explicitly when the catalog names no base_url, so that OPENAI_BASE_URL in the
# gateway's environment cannot send the OpenAI key elsewhere.
OFFICIAL_BASE_URL = "https://api.openai.com/v1"
# The SDK refuses an empty key on the client, so a server called without one gets this
# placeholder (plainly not a secret) as its bearer token.
NO_KEY = "none"
# The gateway's OpenAI organisation and project (OPENAI_ORG_ID, OPENAI_PROJECT_ID, which the
# SDK reads itself) are OpenAI's business only.
NOT_OPENAI_HEADERS = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}


def _client(endpoint: EndpointConfig) -> openai.AsyncOpenAI:
    key = provider_key(endpoint, default_env=DEFAULT_KEY_ENV, official_base_url=OFFICIAL_BASE_URL)
    base_url = endpoint.base_url or OFFICIAL_BASE_URL
    official = is_official_url(base_url, OFFICIAL_BASE_URL)
    timeout = settings.LLMOPS_UPSTREAM_TIMEOUT_S
    return client_for(
        ("openai", base_url, key, timeout),
        lambda: openai.AsyncOpenAI(
            api_key=key or NO_KEY,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,  # the gateway's attempt loop retries, with its own backoff and deadline
            default_headers=None if official else NOT_OPENAI_HEADERS,  # type: ignore[arg-type]
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


def _token_logprobs(choice: Any) -> list[float] | None:
    content = choice.logprobs.content if choice.logprobs is not None else None
    return None if content is None else [token.logprob for token in content]


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
        args = _arguments(endpoint, call)
        if call.logprobs:
            # Only when asked: a request without it stays exactly what it was.
            args["logprobs"] = True
        try:
            response = await _client(endpoint).chat.completions.create(**args)
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        choice = response.choices[0]
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            usage=_usage(response.usage),
            logprobs=_token_logprobs(choice) if call.logprobs else None,
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

    async def embed(self, endpoint: EndpointConfig, texts: list[str]) -> Embeddings:
        if not texts:
            return Embeddings(vectors=[], usage=Usage())
        try:
            # No encoding_format: the SDK asks for base64 (a quarter of the bytes of JSON
            # floats) and decodes it, and takes floats from servers that ignore the format.
            response = await _client(endpoint).embeddings.create(
                model=endpoint.upstream_model or endpoint.name, input=list(texts)
            )
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        rows = sorted(response.data, key=lambda row: row.index)
        if len(rows) != len(texts):
            raise UpstreamError(f"{endpoint.name} returned {len(rows)} embeddings for {len(texts)} texts.")
        usage = response.usage
        return Embeddings(
            vectors=[list(row.embedding) for row in rows],
            usage=Usage(input_tokens=(usage.prompt_tokens or 0) if usage else 0),
        )
