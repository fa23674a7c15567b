"""The answer cache's hot layer (Redis, called on the gateway's asyncio client, or local
memory on the embedded default) and the CacheEntry records written behind it, off the hot
path.

Redis failing never fails a request: the error is counted, logged at most once a minute,
and the hot layer is skipped for LLMOPS_CACHE_RETRY_AFTER_S seconds, which are misses."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.dispatch import receiver
from django.test.signals import setting_changed

from caching.models import CacheEntry
from llmops.buffered import BufferedWriter
from llmops.bulk import rows_insert
from llmops.fail_open import FailOpen
from llmops.shared_redis import lean_redis_for
from llmops.usage import Usage

logger = logging.getLogger(__name__)

PREFIX = "llmops:answer:"


@dataclass(slots=True)
class CachedAnswer:
    key: str
    text: str
    finish_reason: str
    usage: Usage
    cost_usd: Decimal  # what the answer cost when it was generated: what each hit saves

    def dump(self) -> dict[str, Any]:
        u = self.usage
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": [u.input_tokens, u.output_tokens, u.cached_tokens, u.cache_write_tokens],
            "cost_usd": str(self.cost_usd),
        }

    @property
    def served_usage(self) -> Usage:
        """The usage a hit reports: the answer's tokens, none of them read from or written to
        a provider's prompt cache, since no provider was called."""
        return Usage(self.usage.input_tokens, self.usage.output_tokens)

    @classmethod
    def load(cls, key: str, data: dict[str, Any]) -> CachedAnswer:
        return cls(key, data["text"], data["finish_reason"], Usage(*data["usage"]), Decimal(data["cost_usd"]))


HotLayerHealth = FailOpen("The answer cache's hot layer failed", "requests go on without it", logger)


_backend: Any = None


def _answers() -> Any:
    # Once per process: `caches[...]` builds a new backend object for every async context,
    # that is for every request, and each one is garbage for the collector afterwards.
    global _backend
    if _backend is None:
        _backend = caches["answers"]
    return _backend


@receiver(setting_changed)
def _caches_changed(*, setting: str, **_: Any) -> None:
    global _backend
    if setting == "CACHES":
        _backend = None


def _redis() -> tuple[Any, Any] | None:
    """(the lean asyncio Redis client of this event loop, django-redis's client) for the
    answers alias on Redis, or None when it is in local memory."""
    backend = _answers()
    if isinstance(backend, LocMemCache):
        return None
    return lean_redis_for(settings.CACHES["answers"]["LOCATION"]), backend.client


async def hot_get(key: str) -> CachedAnswer | None:
    if not HotLayerHealth.usable():
        return None
    try:
        found = _redis()
        if found is None:
            data = _answers().get(PREFIX + key)  # in memory: nothing to wait for
        else:
            # No thread hop: the gateway's lean asyncio client, with django-redis's key and value
            # format (its serializer and compressor), so that the Django cache API (the
            # admin's purge, hot_delete) sees the same entries.
            connection, client = found
            raw = await connection.execute_command("GET", client.make_key(PREFIX + key))
            data = None if raw is None else client.decode(raw)
        answer = CachedAnswer.load(key, data) if data else None
    except Exception as exc:
        HotLayerHealth.failed(exc)
        return None
    HotLayerHealth.succeeded()
    return answer


async def hot_set(answer: CachedAnswer, ttl_seconds: int) -> None:
    if not HotLayerHealth.usable():
        return
    try:
        found = _redis()
        if found is None:
            _answers().set(PREFIX + answer.key, answer.dump(), ttl_seconds)
        elif ttl_seconds > 0:
            connection, client = found
            key, value = client.make_key(PREFIX + answer.key), client.encode(answer.dump())
            await connection.execute_command("SET", key, value, "PX", ttl_seconds * 1000)
    except Exception as exc:
        HotLayerHealth.failed(exc)
        return
    HotLayerHealth.succeeded()


def hot_delete(keys: list[str]) -> None:
    """Drop answers from the hot layer (admin purge and expiry); errors are the caller's."""
    if keys:
        _answers().delete_many([PREFIX + key for key in keys])


# CacheEntry rows: ("store", fields) creates or replaces an entry, ("hit", key, saved, when)
# counts a hit. Both are buffered and written in bulk.

ENTRY_FIELDS = [f.name for f in CacheEntry._meta.concrete_fields if f.name not in ("id", "key_hash")]
UPDATED_ON_REFRESH = [name for name in ENTRY_FIELDS if name not in ("hit_count", "cost_saved_usd", "last_hit_at")]
UPDATED_KEEPING_VECTOR = [name for name in UPDATED_ON_REFRESH if name not in ("embedding", "embedder")]


def _write(batch: list[tuple[Any, ...]]) -> int:
    try:
        _apply(batch)
        return len(batch)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        pass
    # One item the database refuses (a NUL byte in a query, say) must not take the rest of
    # the batch, other tenants' entries included, down with it: write them one by one.
    written = 0
    for item in batch:
        try:
            _apply([item])
            written += 1
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as exc:
            ENTRIES.dropped += 1
            logger.warning("Dropped a cache record the database refused: %s", exc)
    return written


def _apply(batch: list[tuple[Any, ...]]) -> None:
    stores: dict[str, dict[str, Any]] = {}
    hits: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0), None])
    for item in batch:
        if item[0] == "store":
            stores[item[1]["key_hash"]] = item[1]
        else:
            _, key, saved, when = item
            counted = hits[key]
            counted[0] += 1
            counted[1] += saved
            counted[2] = when
    with transaction.atomic():
        # A refresh that computed no vector keeps the one the entry had.
        for with_vector, update in ((True, UPDATED_ON_REFRESH), (False, UPDATED_KEEPING_VECTOR)):
            rows = [f for f in stores.values() if (f.get("embedding") is not None) == with_vector]
            rows_insert(CacheEntry, rows, conflict=("key_hash", update))
        for key, (count, saved, when) in hits.items():
            CacheEntry.objects.filter(key_hash=key).update(
                hit_count=F("hit_count") + count, cost_saved_usd=F("cost_saved_usd") + saved, last_hit_at=when
            )


ENTRIES = BufferedWriter("cache-entry", _write)


def entry_record(fields: dict[str, Any]) -> None:
    ENTRIES.add(("store", fields))


def hit_record(key: str, saved: Decimal, when: datetime) -> None:
    ENTRIES.add(("hit", key, saved, when))
