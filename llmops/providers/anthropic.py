"""Claude models. OpenAI-style messages are mapped to Anthropic's `system` + alternating
`messages` shape, and the answer back. Messages, whole and streamed, go through the lean
client (llmops/providers/wire.py) with the API version and headers the official SDK sends;
the SDK's AsyncAnthropic serves the native batches (llmops/batches/native)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic.types import CacheControlEphemeralParam, TextBlockParam
from django.conf import settings

from llmops.catalog import EndpointConfig
from llmops.providers.base import (
    Completion,
    ProviderCall,
    StreamDelta,
    UpstreamError,
    Usage,
    client_for,
    estimate_tokens,
    provider_key,
    upstream_error_from_sdk,
)
from llmops.providers.wire import post_events, post_json, stream_error, unreadable

DEFAULT_MAX_TOKENS = 1024
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}

# Prompt caching. Anthropic caches a prefix only from a model's minimum length on (1,024
# tokens for most Claude models; 2,048 or 4,096 for some Haiku and Opus generations); a
# shorter prefix marked with cache_control is simply processed uncached: no error, no write
# charge. So a mark costs nothing when it is too short, while a missing mark forfeits the
# 90% read discount. Hence a prefix is left unmarked only when it is obviously too short:
# under half the smallest minimum (1,024) by the rough four-characters-a-token estimate,
# which undercounts Claude's tokenizer on code, JSON and non-Latin text (it runs about 3.5
# characters a token on English prose, fewer on the rest). One floor for every model, not
# a per-model table that would go stale with each model generation or alias.
CACHE_MIN_ESTIMATED_TOKENS = 512


DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
# Passed explicitly when the catalog names no base_url, so that ANTHROPIC_BASE_URL in the
# gateway's environment cannot send the Anthropic key elsewhere.
OFFICIAL_BASE_URL = "https://api.anthropic.com"
# A server called without a key gets no credential header at all. The api_key placeholder
# only stops the SDK from looking for credentials of its own (ANTHROPIC_API_KEY,
# ANTHROPIC_AUTH_TOKEN, profiles on disk); these omissions keep it off the wire.
NO_KEY = "none"
NO_KEY_HEADERS = {"Authorization": anthropic.Omit(), "X-Api-Key": anthropic.Omit()}


def _client(endpoint: EndpointConfig) -> anthropic.AsyncAnthropic:
    key = provider_key(endpoint, default_env=DEFAULT_KEY_ENV, official_base_url=OFFICIAL_BASE_URL)
    base_url = endpoint.base_url or OFFICIAL_BASE_URL
    timeout = settings.LLMOPS_UPSTREAM_TIMEOUT_S
    return client_for(
        ("anthropic", base_url, key, timeout),
        lambda: anthropic.AsyncAnthropic(
            api_key=key or NO_KEY,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,  # the gateway's attempt loop retries, with its own backoff and deadline
            default_headers=None if key else NO_KEY_HEADERS,  # type: ignore[arg-type]
        ),
    )


def to_anthropic(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """System and developer messages become `system`; consecutive turns of one role merge,
    since Anthropic wants user and assistant to alternate, starting with the user."""
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role in ("system", "developer"):
            system_parts.append(content)
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + content}
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(continue)"})
    return "\n\n".join(system_parts), turns


def _cached_text(text: str) -> list[TextBlockParam]:
    """One text block carrying a cache breakpoint: Anthropic caches everything up to and
    including it (tools, then system, then messages, in that order). The default TTL (five
    minutes, refreshed on each hit) is the one the catalog's cache-write price is for."""
    return [TextBlockParam(type="text", text=text, cache_control=CacheControlEphemeralParam(type="ephemeral"))]


def with_cache_breakpoints(
    system: str, turns: list[dict[str, str]]
) -> tuple[str | list[TextBlockParam], list[dict[str, Any]]]:
    """Mark the static prefix of a request for Anthropic's prompt cache: the system prompt,
    and the conversation up to the turn before the final user turn (on the conversation's
    next turn, Anthropic finds that breakpoint again by looking back from the new one).
    A prefix under CACHE_MIN_ESTIMATED_TOKENS is left unmarked, and so is an empty turn
    (Anthropic refuses cache_control on an empty text block). No text changes. Two
    breakpoints at most, within Anthropic's limit of four a request."""
    marked_system: str | list[TextBlockParam] = system
    marked_turns: list[dict[str, Any]] = list(turns)
    prefix_tokens = estimate_tokens(system)
    if system.strip() and prefix_tokens >= CACHE_MIN_ESTIMATED_TOKENS:
        marked_system = _cached_text(system)
    last_user = max((i for i, turn in enumerate(turns) if turn["role"] == "user"), default=0)
    if last_user > 0:
        anchor = turns[last_user - 1]
        prefix_tokens += sum(estimate_tokens(turn["content"]) for turn in turns[:last_user])
        if anchor["content"].strip() and prefix_tokens >= CACHE_MIN_ESTIMATED_TOKENS:
            marked_turns[last_user - 1] = {"role": anchor["role"], "content": _cached_text(anchor["content"])}
    return marked_system, marked_turns


def _arguments(endpoint: EndpointConfig, call: ProviderCall) -> dict[str, Any]:
    system, turns = to_anthropic(call.messages)
    marked_system: str | list[TextBlockParam] = system
    messages: list[Any] = turns
    if call.prompt_cache:
        marked_system, messages = with_cache_breakpoints(system, turns)
    args: dict[str, Any] = {
        "model": endpoint.upstream_model or endpoint.name,
        "messages": messages,
        "max_tokens": call.params.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        args["system"] = marked_system
    # No temperature or top_p: the SDK (2.x) dropped them and the API version it sends
    # (2026-10-21) answers 400 to any sampling parameter, so they are not passed on.
    stop = call.params.get("stop")
    if stop:
        args["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return args


def _usage(raw: Any, output_tokens: int | None = None) -> Usage:
    """Usage from Anthropic's `usage` (a JSON object, or the SDK's model in native batches)."""
    get = raw.get if isinstance(raw, dict) else lambda name, default=None: getattr(raw, name, default)
    read = get("cache_read_input_tokens", 0) or 0
    written = get("cache_creation_input_tokens", 0) or 0
    # Anthropic's input_tokens leaves out cache reads and writes; ours counts every input token.
    return Usage(
        input_tokens=(get("input_tokens", 0) or 0) + read + written,
        output_tokens=output_tokens if output_tokens is not None else (get("output_tokens", 0) or 0),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def _translate(exc: anthropic.AnthropicError | httpx2.TransportError) -> UpstreamError:
    return upstream_error_from_sdk(
        exc,
        timeouts=(anthropic.APITimeoutError, httpx2.TimeoutException),
        unreachable=(anthropic.APIConnectionError, httpx2.TransportError),
        status_error=anthropic.APIStatusError,
    )


def _request(endpoint: EndpointConfig) -> tuple[str, dict[str, str]]:
    """The Messages URL and the headers of a call: the API version the SDK is written for,
    and the key where provider_key sends one (as the SDK does, `Authorization: Bearer`)."""
    key = provider_key(endpoint, default_env=DEFAULT_KEY_ENV, official_base_url=OFFICIAL_BASE_URL)
    base_url = endpoint.base_url or OFFICIAL_BASE_URL
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "anthropic-version": ANTHROPIC_API_VERSION,
    }
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return base_url.rstrip("/") + "/v1/messages", headers


class AnthropicProvider:
    name = "anthropic"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        url, headers = _request(endpoint)
        message = await post_json(url, headers, _arguments(endpoint, call), settings.LLMOPS_UPSTREAM_TIMEOUT_S)
        try:
            text = "".join(block["text"] for block in message["content"] if block.get("type") == "text")
            return Completion(
                text=text,
                finish_reason=STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
                usage=_usage(message.get("usage") or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise unreadable("a message") from exc

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        url, headers = _request(endpoint)
        start_usage: Any = {}
        output_tokens = 0
        finish_reason = "stop"
        args = {**_arguments(endpoint, call), "stream": True}
        # Closed here, not when the collector finds it: the upstream response is given back at
        # once on every way out (message_stop, an error, the caller closing this stream).
        async with contextlib.aclosing(post_events(url, headers, args, settings.LLMOPS_UPSTREAM_TIMEOUT_S)) as events:
            async for event, raw in events:
                try:
                    data = json.loads(raw)
                    kind = data.get("type") or event
                    if kind == "content_block_delta":
                        delta = data["delta"]
                        if delta.get("type") == "text_delta":
                            yield StreamDelta(text=delta["text"])
                    elif kind == "message_start":
                        start_usage = data["message"].get("usage") or {}
                        output_tokens = start_usage.get("output_tokens") or 0
                        # The input side (cache reads and writes included) is known now: pass it
                        # on, so a stream cut short is still billed at the right rates.
                        yield StreamDelta(usage=_usage(start_usage, output_tokens))
                    elif kind == "message_delta":
                        # Output tokens in message_delta are cumulative: take the last, never add.
                        output_tokens = (data.get("usage") or {}).get("output_tokens") or output_tokens
                        finish_reason = STOP_REASONS.get((data.get("delta") or {}).get("stop_reason") or "", "stop")
                    elif kind == "error":
                        raise stream_error(data.get("error"))
                    elif kind == "message_stop":
                        break
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise unreadable("a stream event") from exc
        yield StreamDelta(finish_reason=finish_reason, usage=_usage(start_usage, output_tokens))
