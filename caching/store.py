"""The answer cache's hot layer (Redis through django-redis, or local memory on the
embedded default) and the CacheEntry records written behind it, off the hot path.

Redis failing never fails a request: the error is counted, logged at most once a minute,
and the hot layer is skipped for LLMOPS_CACHE_RETRY_AFTER_S seconds, which are misses."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import transaction
from django.db.models import F

from caching.models import CacheEntry
from llmops.buffered import BufferedWriter
from llmops.providers.base import Usage

logger = logging.getLogger(__name__)

PREFIX = "llmops:answer:"
LOG_EVERY_S = 60.0


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


class HotLayerHealth:
    """This process's view of the hot layer: errors, requests that skipped it, and when
    to try it again."""

    errors = 0
    bypassed = 0
    down_until = 0.0
    last_logged = 0.0

    @classmethod
    def usable(cls) -> bool:
        if time.monotonic() < cls.down_until:
            cls.bypassed += 1
            return False
        return True

    @classmethod
    def failed(cls, exc: Exception) -> None:
        now = time.monotonic()
        cls.errors += 1
        cls.down_until = now + settings.LLMOPS_CACHE_RETRY_AFTER_S
        if now - cls.last_logged >= LOG_EVERY_S:
            cls.last_logged = now
            logger.warning(
                "The answer cache is unreachable (%s: %s); requests bypass it. %d errors so far.",
                type(exc).__name__,
                exc,
                cls.errors,
            )


def _answers() -> Any:
    return caches["answers"]


async def _call(method: str, *args: Any) -> Any:
    backend = _answers()
    function = getattr(backend, method)
    if isinstance(backend, LocMemCache):
        return function(*args)  # in memory: nothing to wait for
    # Redis I/O runs on the shared worker pool, not a thread made for this request.
    return await sync_to_async(function, thread_sensitive=False)(*args)


async def hot_get(key: str) -> CachedAnswer | None:
    if not HotLayerHealth.usable():
        return None
    try:
        data = await _call("get", PREFIX + key)
    except Exception as exc:
        HotLayerHealth.failed(exc)
        return None
    return CachedAnswer.load(key, data) if data else None


async def hot_set(answer: CachedAnswer, ttl_seconds: int) -> None:
    if not HotLayerHealth.usable():
        return
    try:
        await _call("set", PREFIX + answer.key, answer.dump(), ttl_seconds)
    except Exception as exc:
        HotLayerHealth.failed(exc)


def hot_delete(keys: list[str]) -> None:
    """Drop answers from the hot layer (admin purge and expiry); errors are the caller's."""
    if keys:
        _answers().delete_many([PREFIX + key for key in keys])


# CacheEntry rows: ("store", fields) creates or replaces an entry, ("hit", key, saved, when)
# counts a hit. Both are buffered and written in bulk.

ENTRY_FIELDS = [f.name for f in CacheEntry._meta.concrete_fields if f.name not in ("id", "key_hash")]
UPDATED_ON_REFRESH = [name for name in ENTRY_FIELDS if name not in ("hit_count", "cost_saved_usd", "last_hit_at")]


def _write(batch: list[tuple[Any, ...]]) -> int:
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
        if stores:
            CacheEntry.objects.bulk_create(
                [CacheEntry(**fields) for fields in stores.values()],
                update_conflicts=True,
                unique_fields=["key_hash"],
                update_fields=UPDATED_ON_REFRESH,
            )
        for key, (count, saved, when) in hits.items():
            CacheEntry.objects.filter(key_hash=key).update(
                hit_count=F("hit_count") + count, cost_saved_usd=F("cost_saved_usd") + saved, last_hit_at=when
            )
    return len(batch)


ENTRIES = BufferedWriter("cache-entry", _write)


def entry_record(fields: dict[str, Any]) -> None:
    ENTRIES.add(("store", fields))


def hit_record(key: str, saved: Decimal, when: datetime) -> None:
    ENTRIES.add(("hit", key, saved, when))
