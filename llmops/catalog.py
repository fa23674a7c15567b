"""Configuration reads for the hot path: model endpoints, prompts, API keys and cache
policies, cached in process and reloaded when they change.

Every committed change to them bumps one version number in the database (ConfigVersion).
This process drops its snapshot at once; every other process (other daphne workers, and
a running server when `manage.py create_api_key` ran beside it) reads the version at most
once every LLMOPS_CONFIG_TTL_S seconds and reloads when it moved. So a request costs no
database query unless its process's check is due."""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save

from caching.models import CachePolicy
from caching.policies import PolicyConfig, policy_match
from llmops.models import ApiKey, ConfigVersion, ModelEndpoint, PromptTemplate


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


@dataclass(slots=True)
class _Snapshot:
    endpoints: dict[str, EndpointConfig]
    prompts: dict[tuple[str, int], PromptConfig]
    latest_prompts: dict[str, PromptConfig]
    keys: dict[str, ApiKeyInfo]
    policies: list[PolicyConfig]
    version: int
    checked_at: float


_snapshot: _Snapshot | None = None


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _refresh(known: int | None) -> _Snapshot | None:
    """The configuration as committed now, or None when its version is still `known`."""
    try:
        # The version is read first: a change committed meanwhile is then loaded under the
        # older number, and the next check loads it again, never the other way round.
        version = ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).values_list("version", flat=True).first()
        if known is not None and version == known:
            return None
        endpoints = {row.name: EndpointConfig.from_model(row) for row in ModelEndpoint.objects.all()}
        prompts: dict[tuple[str, int], PromptConfig] = {}
        latest: dict[str, PromptConfig] = {}
        for row in PromptTemplate.objects.order_by("name", "version"):
            prompt = PromptConfig(name=row.name, version=row.version, messages=tuple(row.messages))
            prompts[(row.name, row.version)] = prompt
            if row.is_active:
                latest[row.name] = prompt
        keys = {
            row.key_hash: ApiKeyInfo(id=row.id, name=row.name, prefix=row.prefix)
            for row in ApiKey.objects.filter(is_active=True).only("id", "name", "prefix", "key_hash")
        }
        policies = [PolicyConfig.from_model(row) for row in CachePolicy.objects.all()]
    finally:
        # API requests run without Django's request signals, so nothing else would hand
        # this connection back (to the pool, on PostgreSQL) once the request's thread ends.
        if not connection.in_atomic_block:
            connection.close()
    return _Snapshot(endpoints, prompts, latest, keys, policies, version or 0, time.monotonic())


_reload_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def _current() -> _Snapshot:
    global _snapshot
    snap = _snapshot
    if snap is not None and time.monotonic() - snap.checked_at < settings.LLMOPS_CONFIG_TTL_S:
        return snap
    loop = asyncio.get_running_loop()
    lock = _reload_locks.get(loop)
    if lock is None:
        lock = _reload_locks[loop] = asyncio.Lock()
    # One check at a time: the requests that arrive meanwhile wait for its result rather
    # than each taking a database connection to load the same rows.
    async with lock:
        snap = _snapshot
        if snap is not None and time.monotonic() - snap.checked_at < settings.LLMOPS_CONFIG_TTL_S:
            return snap
        fresh = await sync_to_async(_refresh)(snap.version if snap else None)
        if fresh is None:
            snap.checked_at = time.monotonic()
            return snap
        _snapshot = fresh
        return fresh


async def endpoint_get(name: str) -> EndpointConfig | None:
    return (await _current()).endpoints.get(name)


async def endpoint_list_enabled() -> list[EndpointConfig]:
    return [e for e in (await _current()).endpoints.values() if e.enabled]


async def prompt_get(name: str, version: int | None) -> PromptConfig | None:
    snap = await _current()
    if version is None:
        return snap.latest_prompts.get(name)
    return snap.prompts.get((name, version))


async def cache_policy_get(model: str) -> PolicyConfig | None:
    return policy_match((await _current()).policies, model)


async def api_key_get(raw_key: str) -> ApiKeyInfo | None:
    return (await _current()).keys.get(hash_key(raw_key))


def reset() -> None:
    """Drop this process's snapshot: the next read loads the configuration afresh."""
    global _snapshot
    _snapshot = None


def config_changed() -> None:
    """Drop this process's snapshot and move the shared version, so every process reloads."""
    reset()
    if not ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).update(version=F("version") + 1):
        ConfigVersion.objects.get_or_create(pk=ConfigVersion.SINGLETON, defaults={"version": 1})


def _on_change(**_: Any) -> None:
    # After the commit: bumping the version inside the admin's transaction would let a
    # request reload the old rows under the new number, and keep them.
    transaction.on_commit(config_changed)


def connect_invalidation() -> None:
    for model in (ModelEndpoint, PromptTemplate, ApiKey, CachePolicy):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"catalog-save-{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"catalog-delete-{model.__name__}")
