"""A circuit breaker per catalog model.

Closed, it lets every call through and counts outcomes in a window of
LLMOPS_BREAKER_WINDOW_S seconds. It opens for LLMOPS_BREAKER_COOLDOWN_S when the window
holds at least LLMOPS_BREAKER_MIN_CALLS calls of which at least LLMOPS_BREAKER_FAILURES
failed and they are at least LLMOPS_BREAKER_FAILURE_RATE of them (0 makes it a plain
count), or at once after LLMOPS_BREAKER_CONSECUTIVE_FAILURES failures in a row (a model
that died while it was busy would otherwise need as many failures as the window holds
successes). While open, calls skip the model at once and go to its fallback. After the
cool-down one call is let through as a probe (half-open): its success closes the breaker,
its failure opens it again; a call let through before it opened that fails later does not
push the cool-down further. Only failures that say the model is
unwell count: 429, 5xx, timeouts and connection errors; a 400-class answer is the
request's fault.

With REDIS_URL set the state is shared by every process: a failure goes to Redis in one
script call (with this process's successes since its last report, for the rate), which
opens the breaker for all; each process reads the state again at most every
LLMOPS_BREAKER_SYNC_S, and one probe is chosen across processes with SET NX. Successes
cost no Redis call. Redis failing never fails a request: the breaker goes on in process,
the error is counted and logged at most once a minute."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from llmops.fail_open import FailOpen
from llmops.shared_redis import redis_for
from monitoring.prometheus import breaker_open_set

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PREFIX = "llmops:breaker:"

# KEYS: window hash, state key. ARGV: now_ms, window_ms, failures, rate, successes,
# cooldown_ms, min_calls. Returns the time (ms) until which the breaker is open, or 0.
FAILURE_SCRIPT = """
local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
local s = redis.call('HINCRBY', KEYS[1], 's', tonumber(ARGV[5]))
if f == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local current = redis.call('GET', KEYS[2])
if current then return tonumber(current) end
if f >= tonumber(ARGV[3]) and f + s >= tonumber(ARGV[7]) and f >= tonumber(ARGV[4]) * (f + s) then
  local opened_until = tonumber(ARGV[1]) + tonumber(ARGV[6])
  redis.call('SET', KEYS[2], opened_until, 'PX', tonumber(ARGV[6]) * 20)
  redis.call('DEL', KEYS[1])
  return opened_until
end
return 0
"""


# Redis errors met by the breakers (each one means the breakers went on in process).
SharedStateHealth = FailOpen("Circuit breakers could not reach Redis", "they go on in this process", logger)


def _shared_url() -> str:
    """REDIS_URL, or "" while Redis is set aside after an error (a hung Redis must not add
    its timeout to request after request). No probing here: the breakers' calls are few."""
    if not settings.REDIS_URL or time.monotonic() < SharedStateHealth.down_until:
        return ""
    return settings.REDIS_URL


@dataclass(slots=True)
class Permit:
    """Leave to call a model; a probe's outcome decides whether its breaker closes."""

    breaker: ModelBreaker
    probe: bool = False


class _Window:
    """Outcomes per second over the last `seconds` seconds."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = {}

    def add(self, failed: bool) -> None:
        second = int(time.monotonic())
        bucket = self.buckets.get(second)
        if bucket is None:
            horizon = second - int(settings.LLMOPS_BREAKER_WINDOW_S)
            for old in [s for s in self.buckets if s <= horizon]:
                del self.buckets[old]
            bucket = self.buckets[second] = [0, 0]
        bucket[failed] += 1

    def counts(self) -> tuple[int, int]:
        horizon = int(time.monotonic()) - int(settings.LLMOPS_BREAKER_WINDOW_S)
        ok = failed = 0
        for second, (good, bad) in self.buckets.items():
            if second > horizon:
                ok += good
                failed += bad
        return ok, failed

    def clear(self) -> None:
        self.buckets.clear()


class ModelBreaker:
    def __init__(self, model: str) -> None:
        self.model = model
        self.window = _Window()
        self.opened_until = 0.0  # wall-clock seconds; 0 when closed
        self.probing = False
        self.unreported_successes = 0
        self.synced_at = 0.0
        self.opened_count = 0
        self.consecutive = 0  # failures since the last success, in this process
        breaker_open_set(model, False)

    # -- the attempt loop's calls ---------------------------------------------------------

    async def allow(self) -> Permit | None:
        """A permit to call the model, or None while the breaker is open."""
        url = _shared_url()
        if url and time.monotonic() - self.synced_at >= settings.LLMOPS_BREAKER_SYNC_S:
            await self._sync(url)
        if not self.opened_until:
            return Permit(self)
        if time.time() < self.opened_until or self.probing:
            return None
        if url and not await self._claim_probe(url):
            return None
        self.probing = True
        return Permit(self, probe=True)

    def retry_after_s(self) -> float:
        return max(0.0, self.opened_until - time.time()) if self.opened_until else 0.0

    async def succeeded(self, permit: Permit) -> None:
        self.window.add(False)
        self.consecutive = 0
        self.unreported_successes += 1
        if permit.probe:
            self.probing = False
            self._close()
            url = _shared_url()
            if url:
                try:
                    await redis_for(url).delete(*self._keys(), PREFIX + "probe:" + self.model)
                except Exception as exc:
                    SharedStateHealth.failed(exc)

    async def failed(self, permit: Permit) -> None:
        self.window.add(True)
        self.consecutive += 1
        if permit.probe:
            self.probing = False
            self._open(time.time() + settings.LLMOPS_BREAKER_COOLDOWN_S, again=True)
            url = _shared_url()
            if url:
                await self._share_open(url)
            return
        if self.opened_until:
            return  # a call let through before it opened: neither extends the cool-down
        url = _shared_url()
        if url:
            try:
                opened_until = await self._report_failure(url)
            except Exception as exc:
                SharedStateHealth.failed(exc)
            else:
                if opened_until:
                    self._open(opened_until)
                elif self.consecutive >= settings.LLMOPS_BREAKER_CONSECUTIVE_FAILURES:
                    self._open(time.time() + settings.LLMOPS_BREAKER_COOLDOWN_S)
                    await self._share_open(url)
                return
        ok, failed = self.window.counts()
        if self.consecutive >= settings.LLMOPS_BREAKER_CONSECUTIVE_FAILURES or (
            failed >= settings.LLMOPS_BREAKER_FAILURES
            and ok + failed >= settings.LLMOPS_BREAKER_MIN_CALLS
            and failed >= settings.LLMOPS_BREAKER_FAILURE_RATE * (ok + failed)
        ):
            self._open(time.time() + settings.LLMOPS_BREAKER_COOLDOWN_S)

    def abandoned(self, permit: Permit) -> None:
        """The call ended without telling (the client left): a probe may be tried again, by
        this process or, once its claim in Redis is dropped, by any other."""
        if permit.probe:
            self.probing = False
            url = _shared_url()
            if url:
                task = asyncio.get_running_loop().create_task(self._drop_probe_claim(url))
                _background.add(task)
                task.add_done_callback(_background.discard)

    async def _drop_probe_claim(self, url: str) -> None:
        try:
            await redis_for(url).delete(PREFIX + "probe:" + self.model)
        except Exception as exc:
            SharedStateHealth.failed(exc)

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if not self.opened_until:
            return CLOSED
        return OPEN if time.time() < self.opened_until or not self.probing else HALF_OPEN

    def describe(self) -> dict[str, Any]:
        ok, failed = self.window.counts()
        state = self.state
        if state == OPEN and time.time() >= self.opened_until:
            state = HALF_OPEN  # the next call will be its probe
        return {
            "state": state,
            "retry_after_s": round(self.retry_after_s(), 3),
            "calls_in_window": ok + failed,
            "failures_in_window": failed,
            "times_opened": self.opened_count,
        }

    def _open(self, until: float, *, again: bool = False) -> None:
        """Open until then; an open breaker is only pushed further by a failed probe."""
        if not self.opened_until or (again and until > self.opened_until):
            if not self.opened_until:
                self.opened_count += 1
                logger.warning("Circuit breaker for %s opened until %.0f", self.model, until)
                breaker_open_set(self.model, True)
            self.opened_until = until
        self.window.clear()

    def _close(self) -> None:
        if self.opened_until:
            logger.info("Circuit breaker for %s closed", self.model)
            breaker_open_set(self.model, False)
        self.opened_until = 0.0
        self.window.clear()

    # -- Redis ------------------------------------------------------------------------------

    def _keys(self) -> tuple[str, str]:
        return PREFIX + "window:" + self.model, PREFIX + "state:" + self.model

    async def _sync(self, url: str) -> None:
        self.synced_at = time.monotonic()
        try:
            raw = await redis_for(url).get(self._keys()[1])
        except Exception as exc:
            SharedStateHealth.failed(exc)
            return
        # No state in Redis while this process holds the breaker open: another process's
        # probe closed it, or this process opened it while Redis was down. Either way this
        # process keeps its own view until its cool-down ends, then probes for itself.
        if raw is not None:
            until = float(raw) / 1000
            if until > self.opened_until:
                self._open(until, again=True)

    async def _report_failure(self, url: str) -> float:
        client = redis_for(url)
        successes, self.unreported_successes = self.unreported_successes, 0
        result = await client.eval(
            FAILURE_SCRIPT,
            2,
            *self._keys(),
            int(time.time() * 1000),
            int(settings.LLMOPS_BREAKER_WINDOW_S * 1000),
            settings.LLMOPS_BREAKER_FAILURES,
            settings.LLMOPS_BREAKER_FAILURE_RATE,
            successes,
            int(settings.LLMOPS_BREAKER_COOLDOWN_S * 1000),
            settings.LLMOPS_BREAKER_MIN_CALLS,
        )
        return float(result) / 1000 if result else 0.0

    async def _share_open(self, url: str) -> None:
        try:
            until_ms = int(self.opened_until * 1000)
            ttl_ms = int(settings.LLMOPS_BREAKER_COOLDOWN_S * 20_000) or 1
            client = redis_for(url)
            await client.set(self._keys()[1], until_ms, px=ttl_ms)
            await client.delete(PREFIX + "probe:" + self.model)
        except Exception as exc:
            SharedStateHealth.failed(exc)

    async def _claim_probe(self, url: str) -> bool:
        ttl_ms = int(settings.LLMOPS_UPSTREAM_TIMEOUT_S * 1000) + 1000
        try:
            return bool(await redis_for(url).set(PREFIX + "probe:" + self.model, "1", nx=True, px=ttl_ms))
        except Exception as exc:
            SharedStateHealth.failed(exc)
            return True  # in process, this process's own flag decides


_breakers: dict[str, ModelBreaker] = {}
_background: set[asyncio.Task[None]] = set()  # claims being dropped: kept until done


def breaker_for(model: str) -> ModelBreaker:
    breaker = _breakers.get(model)
    if breaker is None:
        breaker = _breakers[model] = ModelBreaker(model)
    return breaker


def breaker_states(models: list[str]) -> dict[str, dict[str, Any]]:
    """Each model's breaker as this process sees it (for /healthz and the admin)."""
    return {model: breaker_for(model).describe() for model in models}


def known_breakers() -> list[str]:
    return sorted(_breakers)


def breakers_reset() -> None:
    """Forget every breaker in this process (tests, and a catalog reload is not one)."""
    for model, breaker in _breakers.items():
        if breaker.opened_until:
            breaker_open_set(model, False)
    _breakers.clear()
