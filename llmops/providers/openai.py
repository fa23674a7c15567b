"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp server...) at the
catalog entry's base_url. Chat completions, whole and streamed, go over the lean client of
`llmops.providers.wire` (aiohttp, plain JSON); embeddings through the official SDK's
AsyncOpenAI."""

from __future__ import annotations

import contextlib
import json
import os
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
from llmops.providers.wire import post_events, post_json, stream_error, unreadable

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


def _translate(exc: openai.OpenAIError) -> UpstreamError:
    return upstream_error_from_sdk(
        exc,
        timeouts=(openai.APITimeoutError,),
        unreachable=(openai.APIConnectionError,),
        status_error=openai.APIStatusError,
    )


def _headers(endpoint: EndpointConfig) -> tuple[str, dict[str, str]]:
    """The chat completions URL and the headers of a call: the key where provider_key sends
    one (none at all to a server of one's own named without a key variable), and the
    gateway's OpenAI organisation and project only to OpenAI's own API."""
    key = provider_key(endpoint, default_env=DEFAULT_KEY_ENV, official_base_url=OFFICIAL_BASE_URL)
    base_url = endpoint.base_url or OFFICIAL_BASE_URL
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if is_official_url(base_url, OFFICIAL_BASE_URL):
        for header, env_name in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if value := os.environ.get(env_name):
                headers[header] = value
    return base_url.rstrip("/") + "/chat/completions", headers


def usage_from(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details")
    return Usage(
        input_tokens=raw.get("prompt_tokens") or 0,
        output_tokens=raw.get("completion_tokens") or 0,
        cached_tokens=(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )


def _dict_logprobs(choice: dict[str, Any]) -> list[float] | None:
    content = (choice.get("logprobs") or {}).get("content")
    return None if content is None else [token["logprob"] for token in content]


def completion_from(answer: dict[str, Any], *, logprobs: bool = False) -> Completion:
    """A `chat.completion` body (JSON, as the API and its Batch API's results send it)."""
    try:
        choice = answer["choices"][0]
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_from(answer.get("usage")),
            logprobs=_dict_logprobs(choice) if logprobs else None,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise unreadable("a chat completion") from exc


class OpenAIProvider:
    name = "openai"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        url, headers = _headers(endpoint)
        args = _arguments(endpoint, call)
        if call.logprobs:
            # Only when asked: a request without it stays exactly what it was.
            args["logprobs"] = True
        answer = await post_json(url, headers, args, settings.LLMOPS_UPSTREAM_TIMEOUT_S)
        return completion_from(answer, logprobs=call.logprobs)

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        url, headers = _headers(endpoint)
        args = {**_arguments(endpoint, call), "stream": True, "stream_options": {"include_usage": True}}
        finish_reason = None
        usage = Usage()
        # Closed here, not when the collector finds it: the upstream response is given back at
        # once on every way out ([DONE], an error, the caller closing this stream).
        async with contextlib.aclosing(post_events(url, headers, args, settings.LLMOPS_UPSTREAM_TIMEOUT_S)) as events:
            async for _, data in events:
                if data.startswith("[DONE]"):
                    break
                try:
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise stream_error(chunk["error"])
                    if chunk.get("usage") is not None:
                        usage = usage_from(chunk["usage"])
                    choices = chunk.get("choices")
                    if choices:
                        choice = choices[0]
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield StreamDelta(text=text)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise unreadable("a stream chunk") from exc
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
