"""The gateway's own configuration as the hot path reads it: model endpoints, prompts and
API keys, in one snapshot (llmops.config) reloaded when they change. Other apps keep
snapshots of their own models (cache policies in caching.policies)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from django.utils import timezone

from llmops.config import ConfigSnapshot, config_changed, config_reset, config_watch
from llmops.models import ApiKey, ModelEndpoint, PromptTemplate

__all__ = ["config_changed"]


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    name: str
    provider: str
    upstream_model: str
    base_url: str
    api_key_env: str
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    cached_input_price_per_mtok: Decimal
    cache_write_price_per_mtok: Decimal
    batch_discount: Decimal
    context_window: int
    max_concurrency: int
    simulation: dict[str, Any]
    enabled: bool
    fallbacks: tuple[str, ...] = ()
    latency_prior_ms: float | None = None
    quality_prior: float | None = None
    rpm: int | None = None  # the provider's requests per minute for this model
    tpm: int | None = None  # and tokens per minute

    @classmethod
    def from_model(cls, row: ModelEndpoint) -> EndpointConfig:
        return cls(
            name=row.name,
            provider=row.provider,
            upstream_model=row.upstream_model,
            base_url=row.base_url,
            api_key_env=row.api_key_env,
            input_price_per_mtok=Decimal(row.input_price_per_mtok),
            output_price_per_mtok=Decimal(row.output_price_per_mtok),
            cached_input_price_per_mtok=Decimal(row.cached_input_price_per_mtok),
            cache_write_price_per_mtok=Decimal(row.cache_write_price_per_mtok),
            batch_discount=Decimal(row.batch_discount),
            context_window=row.context_window,
            max_concurrency=row.max_concurrency,
            simulation=dict(row.simulation or {}),
            enabled=row.enabled,
            fallbacks=tuple(row.fallback_names),
            latency_prior_ms=None if row.latency_prior_ms is None else float(row.latency_prior_ms),
            quality_prior=row.quality_prior,
            rpm=row.requests_per_minute,
            tpm=row.tokens_per_minute,
        )


@dataclass(frozen=True, slots=True)
class PromptConfig:
    name: str
    version: int
    messages: tuple[dict[str, str], ...]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    rpm: int | None = None  # requests per minute; None: no limit
    tpm: int | None = None  # input + output tokens per minute
    budget_usd: Decimal | None = None  # spend allowed per budget_period
    budget_period: str = "month"  # "day" or "month", UTC
    expires_at: datetime | None = None

    # The columns from_model reads.
    model_fields: ClassVar[tuple[str, ...]] = (
        "id",
        "name",
        "prefix",
        "requests_per_minute",
        "tokens_per_minute",
        "budget_usd",
        "budget_period",
        "expires_at",
    )

    @classmethod
    def from_model(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            rpm=row.requests_per_minute,
            tpm=row.tokens_per_minute,
            budget_usd=None if row.budget_usd is None else Decimal(row.budget_usd),
            budget_period=row.budget_period,
            expires_at=row.expires_at,
        )

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


@dataclass(slots=True)
class _Snapshot:
    endpoints: dict[str, EndpointConfig]
    prompts: dict[tuple[str, int], PromptConfig]
    latest_prompts: dict[str, PromptConfig]
    keys: dict[str, ApiKeyInfo]
    keys_by_id: dict[int, ApiKeyInfo] = field(init=False)

    def __post_init__(self) -> None:
        # For the re-check of a key that a long-lived socket or request already holds.
        self.keys_by_id = {info.id: info for info in self.keys.values()}


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _load() -> _Snapshot:
    endpoints = {row.name: EndpointConfig.from_model(row) for row in ModelEndpoint.objects.all()}
    prompts: dict[tuple[str, int], PromptConfig] = {}
    latest: dict[str, PromptConfig] = {}
    for row in PromptTemplate.objects.order_by("name", "version"):
        prompt = PromptConfig(name=row.name, version=row.version, messages=tuple(row.messages))
        prompts[(row.name, row.version)] = prompt
        if row.is_active:
            latest[row.name] = prompt
    keys = {
        row.key_hash: ApiKeyInfo.from_model(row)
        for row in ApiKey.objects.filter(is_active=True).only(*ApiKeyInfo.model_fields, "key_hash")
    }
    return _Snapshot(endpoints, prompts, latest, keys)


_snapshot = ConfigSnapshot(_load)


async def _current() -> _Snapshot:
    return await _snapshot.get()


async def endpoint_get(name: str) -> EndpointConfig | None:
    return (await _current()).endpoints.get(name)


async def endpoint_list_enabled() -> list[EndpointConfig]:
    return [e for e in (await _current()).endpoints.values() if e.enabled]


async def prompt_get(name: str, version: int | None) -> PromptConfig | None:
    snap = await _current()
    if version is None:
        return snap.latest_prompts.get(name)
    return snap.prompts.get((name, version))


async def api_key_get(raw_key: str) -> ApiKeyInfo | None:
    # Expiry is checked at each lookup: the snapshot outlives the moment a key expires.
    info = (await _current()).keys.get(hash_key(raw_key))
    return None if info is None or info.expired else info


async def api_key_by_id(key_id: int) -> ApiKeyInfo | None:
    """The key as configured now, or None once it is revoked or expired: for a socket or a
    request that authenticated earlier."""
    info = (await _current()).keys_by_id.get(key_id)
    return None if info is None or info.expired else info


def reset() -> None:
    """Drop this process's snapshots: the next read loads the configuration afresh."""
    config_reset()


def connect_invalidation() -> None:
    config_watch(ModelEndpoint, PromptTemplate, ApiKey)
