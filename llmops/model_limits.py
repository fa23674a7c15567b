"""The provider's own limits per model: requests and tokens per minute, as set in the
catalog, kept by every gateway process and batch worker together.

`model_rate_take(endpoint, tokens)` takes one request and `tokens` (the call's estimated
input and output) from the model's two buckets at once, and answers 0, or how many seconds
until both would hold them (then nothing is taken). The buckets are GCRA, as the key limits
(llmops.limits): a model's whole minute may go at once, then it refills steadily. With a
Redis URL (LLMOPS_LIMITS_REDIS_URL) they live in Redis, one script call per upstream call;
without, in this process. Models without limits cost nothing. Redis failing never fails a
call: it is let through (fail open) and counted."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time

from django.conf import settings
from redis.exceptions import NoScriptError

from llmops.catalog import EndpointConfig
from llmops.fail_open import FailOpen
from llmops.per_loop import PerLoop
from llmops.shared_redis import redis_for

logger = logging.getLogger(__name__)

WINDOW_US = 60_000_000

# KEYS[1]: the model's hash {r: requests' arrival time, t: tokens'} in µs since the epoch.
# ARGV: rpm, tpm (-1: none), tokens, the share of the minute the caller may fill (batch
# items leave the rest to interactive requests). Returns the wait in µs (0: taken).
TAKE_SCRIPT = """
local window = 60000000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local usable = window * tonumber(ARGV[4])
local saved = redis.call('HMGET', KEYS[1], 'r', 't')
local rtat = math.max(tonumber(saved[1]) or 0, now)
local ttat = math.max(tonumber(saved[2]) or 0, now)
local wait = 0
local new_r, new_t = rtat, ttat
if rpm >= 0 then
  new_r = rtat + window / math.max(rpm, 1)
  wait = math.max(wait, new_r - now - usable)
end
if tpm >= 0 then
  new_t = ttat + math.min(tokens, math.max(tpm, 1)) * window / math.max(tpm, 1)
  wait = math.max(wait, new_t - now - usable)
end
if wait > 0 then return math.ceil(wait) end
redis.call('HSET', KEYS[1], 'r', string.format('%.0f', new_r), 't', string.format('%.0f', new_t))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(new_r, new_t) - now) / 1000) + 1000)
return 0
"""
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()

ModelLimitsHealth = FailOpen("Model rate limits could not reach Redis", "upstream calls go unpaced", logger)


class _Local:
    """The buckets of this process, for the embedded default (several threads may call)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, tuple[float, float]] = {}

    def take(self, name: str, rpm: int, tpm: int, tokens: int, share: float) -> float:
        now = time.time() * 1_000_000
        usable = WINDOW_US * share
        with self.lock:
            rtat, ttat = self.tats.get(name, (now, now))
            rtat, ttat = max(rtat, now), max(ttat, now)
            wait = 0.0
            new_r, new_t = rtat, ttat
            if rpm >= 0:
                new_r = rtat + WINDOW_US / max(rpm, 1)
                wait = max(wait, new_r - now - usable)
            if tpm >= 0:
                # A call larger than the whole minute is let through once the bucket is full.
                new_t = ttat + min(tokens, max(tpm, 1)) * WINDOW_US / max(tpm, 1)
                wait = max(wait, new_t - now - usable)
            if wait > 0:
                return wait / 1_000_000
            self.tats[name] = (new_r, new_t)
            return 0.0


_LOCAL = _Local()


def limited(endpoint: EndpointConfig) -> bool:
    return bool(endpoint.rpm or endpoint.tpm)


_GATES: PerLoop[asyncio.Lock] = PerLoop()


def batch_gate(model: str) -> asyncio.Lock:
    """The batch items of one event loop wait for a model's limits in a line: only the first
    asks the buckets (a Redis call each time) while the others wait behind it."""
    return _GATES.get(model, asyncio.Lock)


async def model_rate_take(endpoint: EndpointConfig, tokens: int, *, batch: bool = False) -> float:
    """Take one call of `tokens` from the model's limits: 0, or the seconds to wait first. A
    batch item may fill the minute only up to LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE short of
    it: that much of every minute is kept for interactive requests."""
    rpm = endpoint.rpm if endpoint.rpm else -1
    tpm = endpoint.tpm if endpoint.tpm else -1
    share = 1.0 - settings.LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE if batch else 1.0
    url = settings.LLMOPS_LIMITS_REDIS_URL
    if not url:
        return _LOCAL.take(endpoint.name, rpm, tpm, tokens, share)
    if not ModelLimitsHealth.usable():
        return 0.0
    client = redis_for(url)
    key = f"llmops:model-rate:{endpoint.name}"
    try:
        try:
            wait_us = await client.evalsha(TAKE_SHA, 1, key, rpm, tpm, tokens, share)
        except NoScriptError:
            await client.script_load(TAKE_SCRIPT)
            wait_us = await client.evalsha(TAKE_SHA, 1, key, rpm, tpm, tokens, share)
    except Exception as exc:  # Redis down or slow: pace nothing rather than fail the call
        ModelLimitsHealth.failed(exc)
        return 0.0
    ModelLimitsHealth.succeeded()
    return int(wait_us) / 1_000_000


def model_limits_reset() -> None:
    with _LOCAL.lock:
        _LOCAL.tats.clear()
    ModelLimitsHealth.reset()
