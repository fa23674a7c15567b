"""The provider adapters of provider-native batches: OpenAI's Files and Batches, Anthropic's
Message Batches, each on its provider module's client; a request's custom id, a catalog
entry's snapshot, and the same-origin check on the results a provider names."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx2
import openai

from llmops.catalog import EndpointConfig
from llmops.providers import anthropic as anthropic_provider
from llmops.providers import openai as openai_provider
from llmops.providers.base import (
    Completion,
    ProviderCall,
    UpstreamError,
    upstream_error_from_status,
    upstream_text_scrubbed,
)

CHAT = "/v1/chat/completions"
# What of a catalog entry a provider batch keeps: it is polled and priced as it was sent.
SNAPSHOT = ("name", "provider", "upstream_model", "base_url", "api_key_env")
PRICES = (
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cached_input_price_per_mtok",
    "cache_write_price_per_mtok",
    "batch_discount",
)
ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "overloaded_error": 529,
}
# A result that is not an answer: the request never ran (cancelled or expired at the provider).
CANCELLED, EXPIRED = "cancelled", "expired"

Calls = list[tuple[int, ProviderCall]]
Result = Completion | UpstreamError | str  # a provider's result: str when the request never ran


def _custom_id(line: int) -> str:
    # Anthropic allows [a-zA-Z0-9_-]{1,64}; a client's custom_id may be anything.
    return f"line-{line}"


def _line_of(custom_id: Any) -> int | None:
    text = custom_id.removeprefix("line-") if isinstance(custom_id, str) else ""
    return int(text) if text.isdigit() else None


def _snapshot(endpoint: EndpointConfig) -> dict[str, str]:
    return {name: str(getattr(endpoint, name)) for name in (*SNAPSHOT, *PRICES)}


def _endpoint(kept: dict[str, str]) -> EndpointConfig:
    return EndpointConfig(
        **{name: kept[name] for name in SNAPSHOT},
        **{name: Decimal(kept[name]) for name in PRICES},
        context_window=0,
        max_concurrency=0,
        simulation={},
        enabled=True,
    )


def _same_origin(url: str | None, base_url: str) -> bool:
    try:
        found, base = urlsplit(url or ""), urlsplit(base_url)
        ports = {"http": 80, "https": 443}
        return (found.scheme, found.hostname, found.port or ports.get(found.scheme)) == (
            base.scheme,
            base.hostname,
            base.port or ports.get(base.scheme),
        )
    except ValueError:
        return False


class OpenAIBatches:
    """OpenAI's Files and Batches API, on the provider module's client (its key rules)."""

    @staticmethod
    async def _call(coro: Any) -> Any:
        try:
            return await coro
        except openai.OpenAIError as exc:
            raise openai_provider._translate(exc) from exc

    async def submit(self, endpoint: EndpointConfig, batch_id: str, calls: Calls) -> tuple[str, str]:
        client = openai_provider._client(endpoint)
        lines = b"".join(
            json.dumps(
                {
                    "custom_id": _custom_id(line),
                    "method": "POST",
                    "url": CHAT,
                    "body": openai_provider._arguments(endpoint, call),
                }
            ).encode()
            + b"\n"
            for line, call in calls
        )
        upload = (f"{batch_id}-{endpoint.name}.jsonl", lines, "application/jsonl")
        uploaded = await self._call(client.files.create(file=upload, purpose="batch"))
        created = await self._call(
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint=CHAT,
                completion_window="24h",
                metadata={"llmops_batch_id": batch_id, "llmops_model": endpoint.name},
            )
        )
        return created.id, created.status

    async def retrieve(self, endpoint: EndpointConfig, provider_id: str) -> tuple[str, bool, Any]:
        found = await self._call(openai_provider._client(endpoint).batches.retrieve(provider_id))
        return found.status, found.status in ("completed", "failed", "expired", "cancelled"), found

    async def cancel(self, endpoint: EndpointConfig, provider_id: str) -> str:
        return (await self._call(openai_provider._client(endpoint).batches.cancel(provider_id))).status

    def unanswered(self, found: Any) -> str | None:
        """Why a request without a result got none: a message to fail it with, EXPIRED, or None."""
        if found.status == "expired":
            return EXPIRED
        if found.status == "failed":
            errors = [error.message or "" for error in (found.errors.data or [])] if found.errors else []
            return upstream_text_scrubbed(f"The provider refused the batch: {'; '.join(errors)}")
        return None

    async def results(self, endpoint: EndpointConfig, found: Any) -> AsyncIterator[tuple[int, Result]]:
        client = openai_provider._client(endpoint)
        for file_id in (found.output_file_id, found.error_file_id):
            if not file_id:
                continue
            content = await self._call(client.files.content(file_id))
            for raw in content.text.splitlines():
                row = json.loads(raw) if raw.strip() else {}
                line = _line_of(row.get("custom_id"))
                if line is not None:
                    yield line, self._result(row)

    @staticmethod
    def _result(row: dict[str, Any]) -> Result:
        response, error = row.get("response") or {}, row.get("error") or {}
        status, body = response.get("status_code"), response.get("body")
        if status == 200 and isinstance(body, dict) and body.get("choices"):
            try:
                return openai_provider.completion_from(body)
            except UpstreamError as exc:
                return exc
        if error.get("code") == "batch_expired":
            return EXPIRED
        if error.get("code") == "batch_cancelled":
            return CANCELLED
        detail = body.get("error") if isinstance(body, dict) else None
        message = (detail or {}).get("message") or error.get("message") or "no answer"
        return upstream_error_from_status(status or 502, f"Upstream error {status or ''}: {message}", None)


class AnthropicBatches:
    """Anthropic's Message Batches API, on the provider module's client (its key rules)."""

    @staticmethod
    async def _call(coro: Any) -> Any:
        try:
            return await coro
        except (anthropic.AnthropicError, httpx2.TransportError) as exc:
            raise anthropic_provider._translate(exc) from exc

    async def submit(self, endpoint: EndpointConfig, batch_id: str, calls: Calls) -> tuple[str, str]:
        requests = [
            {"custom_id": _custom_id(line), "params": anthropic_provider._arguments(endpoint, call)}
            for line, call in calls
        ]
        created = await self._call(anthropic_provider._client(endpoint).messages.batches.create(requests=requests))
        return created.id, created.processing_status

    async def retrieve(self, endpoint: EndpointConfig, provider_id: str) -> tuple[str, bool, Any]:
        found = await self._call(anthropic_provider._client(endpoint).messages.batches.retrieve(provider_id))
        return found.processing_status, found.processing_status == "ended", found

    async def cancel(self, endpoint: EndpointConfig, provider_id: str) -> str:
        found = await self._call(anthropic_provider._client(endpoint).messages.batches.cancel(provider_id))
        return found.processing_status

    def unanswered(self, found: Any) -> str | None:
        return None

    async def results(self, endpoint: EndpointConfig, found: Any) -> AsyncIterator[tuple[int, Result]]:
        # The SDK fetches the results_url the API names, with the key: only from the host
        # the key is for.
        if not _same_origin(found.results_url, endpoint.base_url or anthropic_provider.OFFICIAL_BASE_URL):
            raise UpstreamError(
                f"The provider named its results of batch {found.id} on another host; they were not fetched.",
                kind="invalid",
            )
        client = anthropic_provider._client(endpoint)
        decoder = await self._call(client.messages.batches.results(found.id))
        try:
            async for row in decoder:
                line = _line_of(row.custom_id)
                if line is not None:
                    yield line, self._result(row.result)
        except (anthropic.AnthropicError, httpx2.TransportError) as exc:
            raise anthropic_provider._translate(exc) from exc
        finally:
            await decoder.close()

    @staticmethod
    def _result(result: Any) -> Result:
        if result.type == "succeeded":
            message = result.message
            return Completion(
                text="".join(block.text for block in message.content if block.type == "text"),
                finish_reason=anthropic_provider.STOP_REASONS.get(message.stop_reason or "", "stop"),
                usage=anthropic_provider._usage(message.usage),
            )
        if result.type == "errored":
            error = result.error.error
            status = ANTHROPIC_STATUS.get(error.type, 500)
            return upstream_error_from_status(status, f"Upstream error {status}: {error.message}", None)
        return EXPIRED if result.type == "expired" else CANCELLED


ADAPTERS: dict[str, OpenAIBatches | AnthropicBatches] = {"openai": OpenAIBatches(), "anthropic": AnthropicBatches()}
