"""The one provider interface: every provider module implements `complete` and `stream`,
and optionally `embed`; and the rules every provider follows for keys and upstream errors."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from django.conf import settings

from llmops.models import provider_key_env_refusal
from llmops.per_loop import PerLoop
from llmops.usage import Usage, estimate_tokens  # noqa: F401  (part of the provider interface)

if TYPE_CHECKING:
    from llmops.catalog import EndpointConfig


@dataclass(slots=True)
class ProviderCall:
    """What a provider is asked: chat messages in OpenAI's shape and sampling params."""

    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, Any] | None = None
    # Ask the provider to cache the static prefix (system prompt, earlier turns) where it
    # can: Anthropic's cache_control. A cache policy turns it on.
    prompt_cache: bool = False
    # Ask for the answer's token log-probabilities (Completion.logprobs), for quality
    # checks that score confidence. Whole answers only: streams do not carry them.
    logprobs: bool = False
    # A batch item: it waits behind interactive requests for its model's slots, holds at most
    # the batch share of them, and waits out the model's rate limits instead of falling back.
    batch: bool = False


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    simulated: bool = False
    # The natural-log probability of each generated token of the answer, in order, when the
    # call asked for them and the provider reports them (Anthropic never does); else None.
    logprobs: list[float] | None = None


@dataclass(slots=True)
class StreamDelta:
    """One piece of a streamed answer: text, and on the last pieces the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class UpstreamError(Exception):
    """A provider failed. `status` is what the gateway answers its client with; `kind` is
    what the attempt loop decides on: "invalid" (the request's fault: neither retried nor
    fallen back from), "credentials" (this model cannot be called: fall back, no retry),
    and the transient ones it retries: "rate_limited", "timeout", "unreachable", "error"."""

    TRANSIENT = frozenset({"rate_limited", "timeout", "unreachable", "error"})

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        error_type: str = "upstream_error",
        retry_after: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        if kind is None:
            if status == 429:
                kind = "rate_limited"
            elif error_type == "upstream_timeout":
                kind = "timeout"
            elif status < 500:
                kind = "invalid"
            else:
                kind = "error"
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind in self.TRANSIENT


@dataclass(slots=True)
class Embeddings:
    """One vector per text, in the order of the texts."""

    vectors: list[list[float]]
    usage: Usage


class ChatProvider(Protocol):
    name: str

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion: ...

    def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]: ...


@runtime_checkable
class EmbeddingProvider(ChatProvider, Protocol):
    """A provider that also computes embeddings (`isinstance(provider, EmbeddingProvider)`)."""

    async def embed(self, endpoint: EndpointConfig, texts: list[str]) -> Embeddings: ...


# What of an upstream's error text reaches a client: enough to act on, never a page of HTML.
MAX_UPSTREAM_MESSAGE_CHARS = 500
REDACTED = "[redacted]"
# Shorter values are left alone: redacting every "ab" would garble messages and hide nothing.
MIN_SECRET_CHARS = 4


def _url_password(url: str | None) -> list[str]:
    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def _gateway_secrets() -> list[str]:
    """Every secret the gateway holds that an upstream might echo back: provider keys (the
    values of every variable a catalog entry may name), SECRET_KEY, and the passwords in
    the database, Redis and broker URLs. Read at each error (errors are rare, and tests and
    operators change the environment), longest first so that no part of one survives."""
    secrets = [value for name, value in os.environ.items() if value and provider_key_env_refusal(name) is None]
    secrets.append(settings.SECRET_KEY)
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "LLMOPS_LIMITS_REDIS_URL"):
        secrets += _url_password(getattr(settings, name, None))
    return sorted({secret for secret in secrets if len(secret) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def upstream_text_scrubbed(text: str) -> str:
    """Upstream error text as a client may see it: secrets replaced (before trimming, so a
    secret cut in two cannot leave half of itself), then at most MAX_UPSTREAM_MESSAGE_CHARS."""
    for secret in _gateway_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    if len(text) > MAX_UPSTREAM_MESSAGE_CHARS:
        text = text[: MAX_UPSTREAM_MESSAGE_CHARS - 1] + "…"
    return text


@functools.lru_cache(maxsize=256)
def is_official_url(base_url: str, official_base_url: str) -> bool:
    """Whether `base_url` is the provider's own API: https, exactly its host, the default port."""
    url, official = urlsplit(base_url), urlsplit(official_base_url)
    try:
        port = url.port
    except ValueError:
        return False
    return (
        url.scheme == "https"
        and url.hostname == official.hostname
        and port in (None, 443)
        and url.username is None
        and url.password is None
    )


def provider_key(endpoint: EndpointConfig, *, default_env: str, official_base_url: str) -> str | None:
    """The key to send with a call to `endpoint`, or None to send none.

    A key variable the catalog names is sent to the entry's host, if it names a provider key
    (checked here too: a row written around the admin, by a queryset update or a fixture,
    skips ModelEndpoint.clean). The provider's default key goes only to the provider's own
    API; a server of one's own named without a key variable gets no key at all."""
    env_name = endpoint.api_key_env
    if env_name:
        if provider_key_env_refusal(env_name):
            # The message names the model, not the variable: it reaches the client.
            raise UpstreamError(
                f"{endpoint.name} cannot be called: its catalog entry names a key variable that is not a "
                "provider key (see api_key_env in the admin).",
                kind="credentials",
            )
    elif endpoint.base_url and not is_official_url(endpoint.base_url, official_base_url):
        return None
    else:
        env_name = default_env
    key = provider_secret(env_name)
    if not key:
        # A variable that is meant to be set: sending no key would only turn a config mistake
        # into a misleading upstream 401.
        raise UpstreamError(
            f"{env_name} is not set on the gateway, so {endpoint.name} cannot be called.", kind="credentials"
        )
    return key


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
        return UpstreamError("The upstream model could not be reached.", status=502, kind="unreachable")
    if isinstance(exc, status_error):
        status = exc.status_code  # type: ignore[attr-defined]
        return upstream_error_from_status(
            status,
            f"Upstream error {status}: {exc.message}",  # type: ignore[attr-defined]
            exc.response.headers.get("retry-after"),  # type: ignore[attr-defined]
        )
    return UpstreamError(upstream_text_scrubbed(f"Upstream error: {exc}"), status=502)


def upstream_error_from_status(status: int, message: str, retry_after: str | None) -> UpstreamError:
    """Map an upstream HTTP status onto what the gateway answers (OpenAI's error types).
    `message` is the upstream's own text: it is scrubbed of secrets and trimmed here."""
    message = upstream_text_scrubbed(message)
    if status == 429:
        return UpstreamError(message, status=429, error_type="rate_limit_exceeded", retry_after=retry_after)
    if status in (400, 404, 413, 422):
        return UpstreamError(message, status=400, error_type="upstream_invalid_request")
    if status in (401, 403):
        # The gateway's provider credentials are wrong: the client can do nothing about it.
        return UpstreamError(
            "The upstream provider rejected the gateway's credentials.", status=502, kind="credentials"
        )
    if status in (408, 504):
        return UpstreamError(message, status=504, error_type="upstream_timeout")
    return UpstreamError(message, status=502, error_type="upstream_error")


_CLIENTS: PerLoop[Any] = PerLoop()


def client_for(key: tuple, factory: Callable[[], Any]) -> Any:
    """One SDK client per event loop and configuration, reused so connections are pooled.
    (An httpx pool is bound to the loop that opened it, hence the per-loop registry.)"""
    return _CLIENTS.get(key, factory)


def provider_secret(env_name: str) -> str:
    """Provider keys live in the environment only, never in the database."""
    return os.environ.get(env_name, "")
