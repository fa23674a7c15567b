"""The pipeline's cache step: plan (which policy, which key), look up (exact, then
semantic), store. Nothing here waits on the database: records go through the buffered
writer, and the semantic index of a group is loaded once, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.utils import timezone

from caching.keys import answer_keys
from caching.models import CacheEntry
from caching.policies import PolicyConfig
from caching.store import CachedAnswer, entry_record, hit_record, hot_get, hot_set
from llmops.fail_open import FailOpen
from llmops.usage import Usage

logger = logging.getLogger(__name__)

MODES = ("use", "bypass", "refresh")
HIT, SEMANTIC_HIT, MISS, BYPASS = "hit", "semantic_hit", "miss", "bypass"


@dataclass(slots=True)
class CachePlan:
    policy: PolicyConfig
    key: str
    group: str
    query: str
    scope: str
    model: str
    prompt: str
    lookup: bool  # False when the request asked for a refresh
    api_key_id: int | None = None  # whose request: an embedding call is metered to it
    embedding: Any = None  # the query's vector, once the semantic lookup computed it
    stored: bool = field(default=False)


def cache_plan(
    *,
    policy: PolicyConfig | None,
    model: str,
    target: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    prompt: str,
    api_key_id: int,
    mode: str,
) -> CachePlan | None:
    """How this request uses the cache, or None when it does not."""
    if policy is None or not policy.enabled or mode == "bypass" or not messages:
        return None
    temperature = params.get("temperature", 1.0)
    if temperature > policy.max_temperature and not policy.cache_above_max_temperature:
        return None
    scope = "shared" if policy.scope == "shared" else f"key:{api_key_id}"
    key, group, query = answer_keys(
        model=model,
        target=target,
        messages=messages,
        params=params,
        prompt=prompt,
        scope=scope,
        normalisation=policy.normalisation,
    )
    return CachePlan(policy, key, group, query, scope, model, prompt, lookup=mode != "refresh", api_key_id=api_key_id)


async def cache_lookup(plan: CachePlan) -> tuple[CachedAnswer, str] | None:
    """A stored answer and how it was found (hit, semantic_hit), or None. Never raises:
    the cache is an optimisation, so whatever fails in it is a miss."""
    answer = await hot_get(plan.key)
    if answer is not None:
        return answer, HIT
    if plan.policy.semantic and SemanticHealth.usable():
        try:
            answer = await _semantic_lookup(plan)
        except Exception as exc:
            SemanticHealth.failed(exc)
            return None
        SemanticHealth.succeeded()
        if answer is not None:
            return answer, SEMANTIC_HIT
    return None


@dataclass(slots=True)
class CacheHit:
    answer: CachedAnswer
    status: str  # HIT or SEMANTIC_HIT


class CacheSlot:
    """A request that asks the model: the pipeline fills the slot with the answer (which
    stores it and hands it to identical requests waiting for it) or abandons it (they ask
    for themselves). Either, once; whichever comes first wins."""

    __slots__ = ("_lead", "plan", "status")

    def __init__(self, plan: CachePlan | None, lead: asyncio.Future[CachedAnswer | None] | None) -> None:
        self.plan = plan
        self.status = MISS if plan is not None else BYPASS
        self._lead = lead

    async def fill(self, *, text: str, finish_reason: str, usage: Usage, cost: Decimal) -> None:
        """Store the answer. Shielded: a client that leaves now does not cost the others the
        answer it already paid for."""
        plan = self.plan
        if plan is None:
            return
        self.plan = None
        await asyncio.shield(self._store(plan, text=text, finish_reason=finish_reason, usage=usage, cost=cost))

    async def _store(self, plan: CachePlan, **answer: Any) -> None:
        stored = None
        try:
            stored = await cache_store(plan, **answer)
        except Exception:
            logger.exception("Storing an answer for %s failed", plan.model)
        finally:
            self._done(plan, stored)

    def abandon(self) -> None:
        plan, self.plan = self.plan, None
        if plan is not None:
            self._done(plan, None)

    def _done(self, plan: CachePlan, answer: CachedAnswer | None) -> None:
        lead, self._lead = self._lead, None
        if lead is None:
            return
        leads = _leads()
        if leads.get(plan.key) is lead:
            del leads[plan.key]
        if not lead.done():
            lead.set_result(answer)


# Identical requests in flight at once: the first asks the model, the others wait for its
# answer and are served it as a hit (as if it had been stored a moment earlier), instead of
# paying for the same answer again. Per event loop, since the futures belong to one.
_leading: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[CachedAnswer | None]]] = (
    weakref.WeakKeyDictionary()
)


def _leads() -> dict[str, asyncio.Future[CachedAnswer | None]]:
    loop = asyncio.get_running_loop()
    leads = _leading.get(loop)
    if leads is None:
        leads = _leading[loop] = {}
    return leads


async def cache_step(plan: CachePlan | None) -> CacheHit | CacheSlot:
    """The pipeline's cache step: a stored answer (the hit is counted), or a slot for the
    answer this request will ask the model for.

    A request identical to one already asking the model waits for that answer, at most
    LLMOPS_CACHE_JOIN_TIMEOUT_S (a first request that dies between its answer and storing
    it must not hold the others forever); then, or when the first one failed, it asks for
    itself, leading the ones that came after it."""
    if plan is None:
        return CacheSlot(None, None)
    if not plan.lookup:
        return CacheSlot(plan, None)  # a refresh asks the model whatever is stored or in flight
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.LLMOPS_CACHE_JOIN_TIMEOUT_S
    while True:
        found = await cache_lookup(plan)
        if found is not None:
            return _hit(*found)
        leads = _leads()
        lead = leads.get(plan.key)
        if lead is None:
            lead = leads[plan.key] = loop.create_future()
            return CacheSlot(plan, lead)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return CacheSlot(plan, None)
        try:
            async with asyncio.timeout(remaining):
                answer = await asyncio.shield(lead)
        except TimeoutError:
            logger.warning("Waited %.1f s for an identical request's answer; asking the model", remaining)
            return CacheSlot(plan, None)
        if answer is not None:
            return _hit(answer, HIT)


def _hit(answer: CachedAnswer, status: str) -> CacheHit:
    hit_record(answer.key, answer.cost_usd, timezone.now())
    return CacheHit(answer, status)


async def cache_store(plan: CachePlan, *, text: str, finish_reason: str, usage: Usage, cost: Decimal) -> CachedAnswer:
    """Keep a fresh answer: in the hot layer now, in the records and the index soon."""
    answer = CachedAnswer(plan.key, text, finish_reason, usage, cost)
    await hot_set(answer, plan.policy.ttl_seconds)
    if plan.policy.semantic and plan.embedding is None and SemanticHealth.usable():
        # A refresh skipped the lookup that embeds the query: embed it now, so the entry
        # keeps (or gets) its vector.
        try:
            plan.embedding = await _embed(plan)
            SemanticHealth.succeeded()
        except Exception as exc:
            SemanticHealth.failed(exc)
    now = timezone.now()
    vector = plan.embedding
    entry_record(
        {
            "key_hash": plan.key,
            "model": plan.model,
            "scope": plan.scope,
            "prompt": plan.prompt,
            "group": plan.group,
            "query": plan.query,
            "response": answer.dump(),
            "cost_usd": cost,
            "embedding": _pack(vector) if vector is not None else None,
            "embedder": (plan.policy.embedder or "local") if vector is not None else "",
            "created_at": now,
            "expires_at": now + timedelta(seconds=plan.policy.ttl_seconds),
        }
    )
    if vector is not None:
        group = _groups.get(_group_id(plan, vector))
        if group is not None:
            group.add(plan.key, vector, time.time() + plan.policy.ttl_seconds)
    plan.stored = True
    return answer


# The semantic cache: one in-process index per group of requests that differ only in
# their last turn, embedded by the policy's embedder, loaded from the records at first use.


class _Group:
    def __init__(self, dimensions: int) -> None:
        from caching.semantic import VectorIndex

        self.index = VectorIndex(dimensions, capacity=4)
        self.expires: dict[str, float] = {}
        self.loaded_at = time.monotonic()

    def add(self, key: str, vector: Any, expires: float) -> None:
        self.index.remove(key)
        self.index.add(key, vector)
        self.expires[key] = expires

    def drop(self, key: str) -> None:
        self.index.remove(key)
        self.expires.pop(key, None)


GroupId = tuple[str, str, int]  # the group's digest, the embedder, the vectors' dimensions

# Most recently used groups last; the least recently used are dropped past the limit (a
# dropped group is reloaded from the records when asked again).
_groups: OrderedDict[GroupId, _Group] = OrderedDict()
_group_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[GroupId, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
SemanticHealth = FailOpen("The semantic cache failed", "requests go on without it", logger)


def _group_id(plan: CachePlan, vector: Any) -> GroupId:
    return plan.group, plan.policy.embedder or "local", len(vector)


def _pack(vector: Any) -> bytes:
    from caching.semantic import pack

    return pack(vector)


async def _embed(plan: CachePlan) -> Any:
    from caching.semantic import embedder_get

    embedder = await embedder_get(plan.policy.embedder or "local")
    ready = getattr(embedder, "ready", None)
    if ready is not None:
        await ready()  # a model loading in process is not a slow embedder
    # A slow embedder must not hold the request up for long: past this it is a miss.
    vectors = await asyncio.wait_for(
        embedder.embed([plan.query], api_key_id=plan.api_key_id), settings.LLMOPS_EMBED_TIMEOUT_S
    )
    return vectors[0]


def _load_group(group: str, embedder: str, dimensions: int) -> list[tuple[str, bytes, float]]:
    try:
        rows = CacheEntry.objects.filter(
            group=group, embedder=embedder, expires_at__gt=timezone.now(), embedding__isnull=False
        ).values_list("key_hash", "embedding", "expires_at")
        size = dimensions * 4  # float32
        return [(key, bytes(blob), expires.timestamp()) for key, blob, expires in rows if len(blob) == size]
    finally:
        if not connection.in_atomic_block:
            connection.close()


async def _group_for(gid: GroupId) -> _Group:
    from caching.semantic import unpack

    group = _groups.get(gid)
    if group is not None and time.monotonic() - group.loaded_at < settings.LLMOPS_SEMANTIC_REFRESH_S:
        _groups.move_to_end(gid)
        return group
    locks = _group_locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(gid, asyncio.Lock())
    try:
        async with lock:
            group = _groups.get(gid)
            if group is None or time.monotonic() - group.loaded_at >= settings.LLMOPS_SEMANTIC_REFRESH_S:
                # Other processes add entries too: reload the group from the records now and then.
                rows = await sync_to_async(_load_group, thread_sensitive=False)(*gid)
                group = _Group(gid[2])
                for key, blob, expires in rows:
                    group.add(key, unpack(blob), expires)
                _groups[gid] = group
            _groups.move_to_end(gid)
            while len(_groups) > settings.LLMOPS_SEMANTIC_MAX_GROUPS:
                _groups.popitem(last=False)
    finally:
        if not lock.locked():
            locks.pop(gid, None)
    return group


async def _semantic_lookup(plan: CachePlan) -> CachedAnswer | None:
    plan.embedding = await _embed(plan)
    group = await _group_for(_group_id(plan, plan.embedding))
    match = group.index.search(plan.embedding)
    if match is None:
        return None
    key, similarity = match
    if similarity < plan.policy.similarity_threshold:
        return None
    if group.expires.get(key, 0) < time.time():
        group.drop(key)
        return None
    answer = await hot_get(key)
    if answer is None:
        answer = await sync_to_async(_stored_answer, thread_sensitive=False)(key)
    if answer is None:  # purged meanwhile
        group.drop(key)
    return answer


def _stored_answer(key: str) -> CachedAnswer | None:
    try:
        row = CacheEntry.objects.filter(key_hash=key, expires_at__gt=timezone.now()).values("response").first()
        return CachedAnswer.load(key, row["response"]) if row else None
    finally:
        if not connection.in_atomic_block:
            connection.close()


def cache_forget(keys: list[str]) -> None:
    """Drop purged entries from this process's semantic index."""
    wanted = set(keys)
    for group in _groups.values():
        for key in [k for k in group.expires if k in wanted]:
            group.drop(key)
