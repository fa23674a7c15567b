"""The one provider interface: every provider module implements `complete` and `stream`."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmops.catalog import EndpointConfig


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # input tokens written to the provider's prompt cache


@dataclass(slots=True)
class ProviderCall:
    """What a provider is asked: chat messages in OpenAI's shape and sampling params."""

    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, Any] | None = None
    # Ask the provider to cache the static prefix (system prompt, earlier turns) where it
    # can: Anthropic's cache_control. A cache policy turns it on.
    prompt_cache: bool = False


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    simulated: bool = False


@dataclass(slots=True)
class StreamDelta:
    """One piece of a streamed answer: text, and on the last pieces the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class UpstreamError(Exception):
    """A provider failed. `status` is what the gateway answers its client with."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        error_type: str = "upstream_error",
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after


class ChatProvider(Protocol):
    name: str

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion: ...

    def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]: ...


def estimate_tokens(text: str) -> int:
    """Rough count for providers that report none (about four characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0


def upstream_error_from_sdk(
    exc: Exception,
    *,
    timeouts: tuple[type[Exception], ...],
    unreachable: tuple[type[Exception], ...],
    status_error: type[Exception],
) -> UpstreamError:
    """Both official SDKs raise the same kinds of error (timeout, connection, HTTP status)."""
    if isinstance(exc, timeouts):
        return UpstreamError("The upstream model did not answer in time.", status=504, error_type="upstream_timeout")
    if isinstance(exc, unreachable):
        return UpstreamError("The upstream model could not be reached.", status=502)
    if isinstance(exc, status_error):
        status = exc.status_code  # type: ignore[attr-defined]
        return upstream_error_from_status(
            status,
            f"Upstream error {status}: {exc.message}",  # type: ignore[attr-defined]
            exc.response.headers.get("retry-after"),  # type: ignore[attr-defined]
        )
    return UpstreamError(f"Upstream error: {exc}", status=502)


def upstream_error_from_status(status: int, message: str, retry_after: str | None) -> UpstreamError:
    """Map an upstream HTTP status onto what the gateway answers (OpenAI's error types)."""
    if status == 429:
        return UpstreamError(message, status=429, error_type="rate_limit_exceeded", retry_after=retry_after)
    if status in (400, 404, 413, 422):
        return UpstreamError(message, status=400, error_type="upstream_invalid_request")
    if status in (401, 403):
        # The gateway's provider credentials are wrong: the client can do nothing about it.
        return UpstreamError("The upstream provider rejected the gateway's credentials.", status=502)
    if status in (408, 504):
        return UpstreamError(message, status=504, error_type="upstream_timeout")
    return UpstreamError(message, status=502, error_type="upstream_error")


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def client_for(key: tuple, factory: Callable[[], Any]) -> Any:
    """One SDK client per event loop and configuration, reused so connections are pooled.
    (An httpx pool is bound to the loop that opened it, hence the per-loop registry.)"""
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = factory()
    return client


def provider_secret(env_name: str) -> str:
    """Provider keys live in the environment only, never in the database."""
    return os.environ.get(env_name, "")
