"""Per-key rate limits and spend budgets: the first step of the pipeline.

`limits_admit(key, tokens=..., cost=...)` checks, in one atomic step, the key's requests
per minute (RPM), tokens per minute (TPM: the request's estimated input + output tokens)
and its spend in the current budget period (a UTC day or month), and reserves the
estimate. `Admission.settle(tokens=..., cost=...)` replaces the reservation by what the
request really used. A key with no limits gets one shared Admission without any I/O.

RPM and TPM are GCRA (a token bucket kept as one "theoretical arrival time" per limit): a
key may spend its whole minute at once, then gets one request (or token) back every
60/limit seconds. Unlike a fixed window there is no boundary at which twice the limit can
pass. The x-ratelimit-remaining-* headers say what the bucket holds after the request,
x-ratelimit-reset-* when it is full again, Retry-After when the refused request would fit.

The budget is strict: a request is admitted only while the period's spend, reservations
of the requests in flight included, plus its own estimate stays within the budget. When
real costs do not exceed the estimates the budget is never exceeded; when they do (an
answer ran longer than estimated), the overshoot is at most that excess over the requests
that were in flight. Money is counted in integer nano-dollars.

With LLMOPS_LIMITS_REDIS_URL (REDIS_URL by default) the books are in Redis, shared by every
process, and an admission is one script call: one round trip. The admissions met in one
turn of the event loop share that round trip as one pipelined call, so a burst of
hundreds needs a connection or two rather than one each (the pool refuses more than 100,
which would open the limiter just when it matters). A settlement has no round trip of its
own: its correction is held in process and travels as arguments of the next
admission of the same key (so that admission already sees freed tokens), and whatever is
still held after FLUSH_DELAY_S is written for all keys in one pipelined call. Budget
counters (`llmops:budget:{id}:2026-12`) expire a day after their period ends, so spend
survives restarts; rate state (`llmops:rate:{id}`) expires once its buckets are full again.
Redis failing never fails a request: the admission is let through unchecked (fail open)
and counted, the error logged at most once a minute, and Redis skipped for
LLMOPS_CACHE_RETRY_AFTER_S; settlements wait in process meanwhile and are written once it
answers. A write that timed out may or may not have landed and is not repeated, so that
nothing is counted twice.

Without a Redis URL (the embedded default) the books are in this process, under a lock
(a sync view's event loop or a batch thread may admit too). The period's spend is not
seeded from earlier metrics: on the embedded profile a budget starts afresh with the
process."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any, NoReturn

from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.fail_open import FailOpen
from llmops.shared_redis import redis_for

logger = logging.getLogger(__name__)

WINDOW_US = 60_000_000  # the minute of RPM and TPM, in microseconds
FLUSH_DELAY_S = 0.05
NANO = Decimal(1_000_000_000)
NO_LIMIT = -1

# The books in Redis for one key, mirroring _judge below.
# KEYS[1]: rate hash {r: RPM arrival time, t: TPM arrival time} (µs since the epoch)
# KEYS[2]: the period's spend, reservations included (nano-dollars)
# ARGV: rpm, tpm, tokens, budget, cost, budget expiry (Unix s), tokens correction, cost
# correction; a limit of -1 is none.
# Returns {status, RPM arrival, TPM arrival, spent, retry (µs), now (µs)}.
ADMIT_SCRIPT = """
local window = 60000000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local fix_tokens, fix_cost = tonumber(ARGV[7]), tonumber(ARGV[8])
local rated = rpm >= 0 or tpm >= 0
local rtat, ttat = now, now
if rated then
  local saved = redis.call('HMGET', KEYS[1], 'r', 't')
  rtat = math.max(tonumber(saved[1]) or 0, now)
  ttat = tonumber(saved[2]) or 0
  if tpm > 0 then ttat = ttat + fix_tokens * window / tpm end
  ttat = math.max(ttat, now)
end
local spent = 0
if budget >= 0 or fix_cost ~= 0 then
  spent = math.max(0, tonumber(redis.call('GET', KEYS[2]) or '0') + fix_cost)
end
local function take(tat, limit, amount)
  if limit < 0 then return tat, 0 end
  if limit == 0 then return tat, window end
  local after = tat + amount * window / limit
  local late = after - now - window
  if late <= 1 then return after, 0 end
  return tat, late
end
local new_r, late_r = take(rtat, rpm, 1)
local new_t, late_t = take(ttat, tpm, tokens)
local status, retry = 0, 0
if budget >= 0 and (spent >= budget or spent + cost > budget) then
  status = 1
elseif late_r > 0 then
  status, retry = 2, math.max(late_r, late_t)
elseif late_t > 0 then
  status, retry = 3, late_t
else
  rtat, ttat = new_r, new_t
  if budget >= 0 then spent = spent + cost end
end
if rated and (status == 0 or fix_tokens ~= 0) then
  redis.call('HSET', KEYS[1], 'r', string.format('%.0f', rtat), 't', string.format('%.0f', ttat))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(rtat, ttat) - now) / 1000) + 1000)
end
if (status == 0 and budget >= 0 and cost ~= 0) or fix_cost ~= 0 then
  redis.call('SET', KEYS[2], string.format('%.0f', spent), 'EXAT', ARGV[6])
end
return {status, math.floor(rtat), math.floor(ttat), math.floor(spent), math.ceil(retry), now}
"""
ADMIT_SHA = hashlib.sha1(ADMIT_SCRIPT.encode()).hexdigest()

ADMITTED, OVER_BUDGET, OVER_RPM, OVER_TPM = 0, 1, 2, 3


class _NoHeaders(dict[str, str]):
    """The empty headers every unlimited admission shares: nobody may add to them."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("Admission.headers of an unlimited key are shared; copy them first.")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = __ior__ = _refuse  # type: ignore[assignment]


NO_HEADERS: dict[str, str] = _NoHeaders()


class _LimitsHealth(FailOpen):
    """Redis errors met by the limiter, and the admissions it let through unchecked."""

    def __init__(self) -> None:
        super().__init__("Key limits could not reach Redis", "requests are admitted unchecked", logger)
        self.failed_open = 0

    def reset(self) -> None:
        super().reset()
        self.failed_open = 0


LimitsHealth = _LimitsHealth()


def limits_health() -> dict[str, Any]:
    """For /healthz."""
    return {
        "backend": "redis" if settings.LLMOPS_LIMITS_REDIS_URL else "in-process",
        "errors": LimitsHealth.errors,
        "failed_open": LimitsHealth.failed_open,
        "pending_settlements": len(_PENDING.fixes),
    }


class Admission:
    """Leave to make one request; `settle` once it has ended, however it ended."""

    __slots__ = ("_cost", "_expires", "_key_id", "_period", "_remote", "_settled", "_tokens", "_tpm", "headers")

    def __init__(
        self,
        *,
        key_id: int = 0,
        tpm: int = NO_LIMIT,
        tokens: int = 0,
        period: str | None = None,
        cost: int = 0,
        expires: int = 0,
        remote: bool = False,
        headers: dict[str, str] = NO_HEADERS,
        settled: bool = False,
    ) -> None:
        self._key_id = key_id
        self._tpm = tpm
        self._tokens = tokens  # reserved against TPM
        self._period = period  # the budget period the cost was reserved in; None: no budget
        self._cost = cost  # reserved, nano-dollars
        self._expires = expires
        self._remote = remote
        self._settled = settled
        self.headers = headers

    async def settle(self, *, tokens: int, cost: Decimal) -> None:
        """Replace the reservation by what the request used. Idempotent and never raises;
        it does not wait for I/O, so a cancelled request can settle from its `finally`."""
        if self._settled:
            return
        self._settled = True
        try:
            fix_tokens = tokens - self._tokens if self._tpm > 0 else 0
            fix_cost = _nano(cost) - self._cost if self._period is not None else 0
            if not (fix_tokens or fix_cost):
                return
            if self._remote:
                _PENDING.add(self._key_id, self._tpm, fix_tokens, self._period, fix_cost, self._expires)
                _flush_soon(FLUSH_DELAY_S)
            else:
                _BOOKS.correct(self._key_id, self._tpm, fix_tokens, self._period, fix_cost)
        except Exception:
            logger.exception("Settling key %s's limits failed", self._key_id)


UNLIMITED = Admission(settled=True)


async def limits_admit(key: ApiKeyInfo, *, tokens: int, cost: Decimal) -> Admission:
    """Admit a request estimated at `tokens` (input + output) and `cost`, reserving both,
    or raise a 429 GatewayError (error type requests, tokens or insufficient_quota)."""
    if key.rpm is None and key.tpm is None and key.budget_usd is None:
        return UNLIMITED
    rpm = NO_LIMIT if key.rpm is None else key.rpm
    tpm = NO_LIMIT if key.tpm is None else key.tpm
    tokens = max(0, tokens)
    cost_nano = _nano(cost)
    if key.budget_usd is None:
        budget, period, expires = NO_LIMIT, None, 0
    else:
        budget = int(key.budget_usd * NANO)
        period, ends = _period(key.budget_period)
        expires = ends + 86_400  # a day past the period: late settlements still land
    url = settings.LLMOPS_LIMITS_REDIS_URL
    if not url:
        verdict = _BOOKS.admit(key.id, rpm, tpm, tokens, budget, cost_nano, period)
        return _decide(key, verdict, tokens, cost_nano, period, expires, remote=False)
    if not LimitsHealth.usable():
        return _unchecked(key, tpm, period, expires)
    fix_tokens, fix_cost = _PENDING.take(key.id, period)
    call = (
        f"llmops:rate:{{{key.id}}}",
        f"llmops:budget:{{{key.id}}}:{period or '-'}",
        *(rpm, tpm, tokens, budget, cost_nano, expires, fix_tokens, fix_cost),
    )
    answer = _enqueue(url, call)
    try:
        reply = await asyncio.shield(answer)
    except asyncio.CancelledError:
        # The script still runs: what it reserves for this request, nobody will settle.
        answer.add_done_callback(lambda done: _release(done, key.id, tpm, tokens, period, cost_nano, expires))
        raise
    except Exception as exc:
        if isinstance(exc, RedisConnectionError):  # never reached Redis: hold the settlements again
            _PENDING.add(key.id, tpm, fix_tokens, period, fix_cost, expires)
        return _unchecked(key, tpm, period, expires)
    verdict = (int(reply[0]), float(reply[1]), float(reply[2]), int(reply[3]), float(reply[4]), float(reply[5]))
    return _decide(key, verdict, tokens, cost_nano, period, expires, remote=True)


async def limits_flush() -> None:
    """Write the settlements held in process to Redis now, in one pipelined call."""
    url = settings.LLMOPS_LIMITS_REDIS_URL
    fixes = _PENDING.take_all()
    if not fixes or not url:
        return  # without Redis, settlements never wait
    wait = LimitsHealth.down_until - time.monotonic()
    if wait > 0:
        _PENDING.merge(fixes)
        _flush_soon(wait)
        return
    calls = []
    for key_id, (fix_tokens, tpm, costs) in fixes.items():
        rate_key = f"llmops:rate:{{{key_id}}}"
        for period, (fix_cost, expires) in costs.items() or {None: (0, 0)}.items():
            budget_key = f"llmops:budget:{{{key_id}}}:{period or '-'}"
            calls.append((rate_key, budget_key, NO_LIMIT, tpm, 0, NO_LIMIT, 0, expires, fix_tokens, fix_cost))
            fix_tokens = 0  # once per key, with its first period
    try:
        replies = await _pipelined(redis_for(url), calls)
        failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if failed is not None:
            raise failed
    except Exception as exc:
        if isinstance(exc, RedisConnectionError):
            _PENDING.merge(fixes)
            _flush_soon(settings.LLMOPS_CACHE_RETRY_AFTER_S or FLUSH_DELAY_S)
        LimitsHealth.failed(exc)
        return
    LimitsHealth.succeeded()


async def budget_spent(key: ApiKeyInfo) -> Decimal:
    """The key's spend in its current budget period, reservations of requests in flight
    included (what the next admission is checked against)."""
    period, _ = _period(key.budget_period)
    url = settings.LLMOPS_LIMITS_REDIS_URL
    if not url:
        return Decimal(_BOOKS.spent(key.id, period)) / NANO
    await limits_flush()
    raw = await redis_for(url).get(f"llmops:budget:{{{key.id}}}:{period}")
    return Decimal(int(raw or 0)) / NANO


def limits_reset() -> None:
    """Forget this process's books, held settlements and counts (tests)."""
    _BOOKS.clear()
    _PENDING.take_all()
    _periods.clear()
    LimitsHealth.reset()


# -- deciding ------------------------------------------------------------------------------

Verdict = tuple[int, float, float, int, float, float]  # status, RPM tat, TPM tat, spent, retry, now


def _take(tat: float, now: float, limit: int, amount: int) -> tuple[float, float]:
    """GCRA: the arrival time to keep and 0 when `amount` fits, else the old one and how
    long until it would fit (µs). As the script's `take`."""
    if limit < 0:
        return tat, 0.0
    if limit == 0:
        return tat, float(WINDOW_US)
    after = tat + amount * WINDOW_US / limit
    late = after - now - WINDOW_US
    if late <= 1:  # a microsecond of float rounding must not refuse the limit-th request
        return after, 0.0
    return tat, late


def _judge(
    now: float, rpm: int, tpm: int, tokens: int, budget: int, cost: int, rtat: float, ttat: float, spent: int
) -> Verdict:
    new_r, late_r = _take(rtat, now, rpm, 1)
    new_t, late_t = _take(ttat, now, tpm, tokens)
    if budget >= 0 and (spent >= budget or spent + cost > budget):
        return OVER_BUDGET, rtat, ttat, spent, 0.0, now
    if late_r > 0:
        return OVER_RPM, rtat, ttat, spent, max(late_r, late_t), now
    if late_t > 0:
        return OVER_TPM, rtat, ttat, spent, late_t, now
    return ADMITTED, new_r, new_t, spent + cost if budget >= 0 else spent, 0.0, now


def _left(tat: float, now: float, limit: int) -> int:
    if limit <= 0:
        return 0
    return max(0, int((now + WINDOW_US - tat) * limit / WINDOW_US + 1e-6))


REQUEST_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def _decide(
    key: ApiKeyInfo,
    verdict: Verdict,
    tokens: int,
    cost: int,
    period: str | None,
    expires: int,
    *,
    remote: bool,
) -> Admission:
    status, rtat, ttat, spent, retry, now = verdict
    headers: dict[str, str] = {}
    if key.rpm is not None:
        limit, left = key.rpm, _left(rtat, now, key.rpm)
        headers.update(zip(REQUEST_HEADERS, (str(limit), str(left), _duration(max(0.0, rtat - now))), strict=True))
    if key.tpm is not None:
        limit, left = key.tpm, _left(ttat, now, key.tpm)
        headers.update(zip(TOKEN_HEADERS, (str(limit), str(left), _duration(max(0.0, ttat - now))), strict=True))
    if status == ADMITTED:
        return Admission(
            key_id=key.id,
            tpm=NO_LIMIT if key.tpm is None else key.tpm,
            tokens=tokens,
            period=period,
            cost=cost if period is not None else 0,
            expires=expires,
            remote=remote,
            headers=headers or NO_HEADERS,
        )
    if status == OVER_BUDGET:
        assert key.budget_usd is not None
        _, ends = _period(key.budget_period)
        renews = datetime.fromtimestamp(ends, UTC).strftime("%Y-%m-%d %H:%M")
        raise GatewayError(
            f"You exceeded your current quota: this API key's budget of ${key.budget_usd:.2f} per "
            f"{key.budget_period} is spent (${Decimal(spent) / NANO:.4f} used or reserved, and this request "
            f"may cost ${Decimal(cost) / NANO:.4f}). It renews at {renews} UTC.",
            status=429,
            error_type="insufficient_quota",
            code="insufficient_quota",
            # Retrying cannot help before the period ends: the official SDKs honour this.
            headers={**headers, "x-should-retry": "false"},
        )
    if status == OVER_TPM and key.tpm is not None and tokens > key.tpm:
        raise GatewayError(
            f"Request too large for tokens per min (TPM) on this API key: Limit {key.tpm}, Requested {tokens}. "
            "The input or output tokens must be reduced in order to run successfully.",
            status=429,
            error_type="tokens",
            code="rate_limit_exceeded",
            headers={**headers, "x-should-retry": "false"},
        )
    if status == OVER_RPM:
        kind, what, limit, left, requested = (
            "requests",
            "requests per min (RPM)",
            key.rpm,
            _left(rtat, now, key.rpm or 0),
            1,
        )
    else:
        kind, what, limit, left, requested = (
            "tokens",
            "tokens per min (TPM)",
            key.tpm,
            _left(ttat, now, key.tpm or 0),
            tokens,
        )
    headers["retry-after"] = str(max(1, math.ceil(retry / 1_000_000)))
    headers["retry-after-ms"] = str(max(1, math.ceil(retry / 1000)))
    raise GatewayError(
        f"Rate limit reached for {what} on this API key: Limit {limit}, Used {(limit or 0) - left}, "
        f"Requested {requested}. Please try again in {_duration(retry)}.",
        status=429,
        error_type=kind,
        code="rate_limit_exceeded",
        headers=headers,
    )


def _unchecked(key: ApiKeyInfo, tpm: int, period: str | None, expires: int) -> Admission:
    # Failed open: nothing was reserved, so the settlement will add the real figures.
    LimitsHealth.failed_open += 1
    return Admission(key_id=key.id, tpm=tpm, period=period, expires=expires, remote=True)


def _duration(us: float) -> str:
    """As OpenAI writes its reset headers (Go's durations): 20ms, 8.64s, 1m0s, 1h2m3s."""
    ms = math.ceil(us / 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _nano(amount: Decimal) -> int:
    return int((amount * NANO).to_integral_value(ROUND_CEILING))


_periods: dict[str, tuple[str, int]] = {}


def _period(kind: str) -> tuple[str, int]:
    """The current budget period (UTC): its label and when it ends (Unix seconds)."""
    now = time.time()
    cached = _periods.get(kind)
    if cached is not None and now < cached[1]:
        return cached
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        label, end = today.strftime("%Y-%m-%d"), today + timedelta(days=1)
    else:
        start = today.replace(day=1)
        label, end = start.strftime("%Y-%m"), (start + timedelta(days=32)).replace(day=1)
    cached = _periods[kind] = (label, int(end.timestamp()))
    return cached


# -- the books in process (no Redis URL) ---------------------------------------------------


class _Books:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rates: dict[int, list[float]] = {}  # key id -> [RPM arrival, TPM arrival] (µs, monotonic)
        self.spend: dict[int, tuple[str, int]] = {}  # key id -> (period, nano-dollars spent and reserved)

    def admit(
        self, key_id: int, rpm: int, tpm: int, tokens: int, budget: int, cost: int, period: str | None
    ) -> Verdict:
        now = time.monotonic() * 1_000_000
        with self.lock:
            rate = self.rates.get(key_id)
            if rate is None:
                rate = self.rates[key_id] = [0.0, 0.0]
            spent = 0
            if period is not None:
                held = self.spend.get(key_id)
                spent = held[1] if held is not None and held[0] == period else 0
            verdict = _judge(now, rpm, tpm, tokens, budget, cost, max(rate[0], now), max(rate[1], now), spent)
            if verdict[0] == ADMITTED:
                rate[0], rate[1] = verdict[1], verdict[2]
                if period is not None:
                    self.spend[key_id] = (period, verdict[3])
            return verdict

    def correct(self, key_id: int, tpm: int, tokens: int, period: str | None, cost: int) -> None:
        now = time.monotonic() * 1_000_000
        with self.lock:
            rate = self.rates.get(key_id)
            if tokens and tpm > 0 and rate is not None:
                rate[1] = max(rate[1] + tokens * WINDOW_US / tpm, now)
            held = self.spend.get(key_id)
            if cost and held is not None and held[0] == period:
                self.spend[key_id] = (period, max(0, held[1] + cost))

    def spent(self, key_id: int, period: str) -> int:
        held = self.spend.get(key_id)
        return held[1] if held is not None and held[0] == period else 0

    def clear(self) -> None:
        with self.lock:
            self.rates.clear()
            self.spend.clear()


_BOOKS = _Books()


# -- settlements waiting for Redis ---------------------------------------------------------

Fix = tuple[int, int, dict[str | None, tuple[int, int]]]  # tokens, TPM, {period: (nano-dollars, expiry)}


class _Pending:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fixes: dict[int, Fix] = {}

    def add(self, key_id: int, tpm: int, tokens: int, period: str | None, cost: int, expires: int) -> None:
        if not (tokens or cost):
            return
        with self.lock:
            self._add(key_id, tpm, tokens, period, cost, expires)

    def _add(self, key_id: int, tpm: int, tokens: int, period: str | None, cost: int, expires: int) -> None:
        held_tokens, _, costs = self.fixes.get(key_id) or (0, tpm, {})
        if cost:
            held_cost, _ = costs.get(period, (0, 0))
            costs[period] = (held_cost + cost, expires)
        self.fixes[key_id] = (held_tokens + tokens, tpm, costs)

    def take(self, key_id: int, period: str | None) -> tuple[int, int]:
        """What the next admission of a key carries: its tokens, and its cost in `period`."""
        if not self.fixes:
            return 0, 0
        with self.lock:
            held = self.fixes.pop(key_id, None)
            if held is None:
                return 0, 0
            tokens, tpm, costs = held
            cost, _ = costs.pop(period, (0, 0)) if period is not None else (0, 0)
            if costs:  # another period's, for the flush
                self.fixes[key_id] = (0, tpm, costs)
            return tokens, cost

    def take_all(self) -> dict[int, Fix]:
        with self.lock:
            fixes, self.fixes = self.fixes, {}
            return fixes

    def merge(self, fixes: dict[int, Fix]) -> None:
        with self.lock:
            for key_id, (tokens, tpm, costs) in fixes.items():
                self._add(key_id, tpm, tokens, None, 0, 0)
                for period, (cost, expires) in costs.items():
                    self._add(key_id, tpm, 0, period, cost, expires)


_PENDING = _Pending()


# -- talking to Redis ----------------------------------------------------------------------


class _Batch:
    """The admissions met in one turn of an event loop: sent to Redis in one pipelined call,
    so that a burst needs one or two connections, not one per request in flight (the pool
    refuses more than 100), and Redis reads one packet for the lot."""

    __slots__ = ("calls", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []


_gathering: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batch] = weakref.WeakKeyDictionary()
_sending: set[asyncio.Task[None]] = set()


def _enqueue(url: str, call: tuple[Any, ...]) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    batch = _gathering.get(loop)
    if batch is None or batch.url != url:
        batch = _gathering[loop] = _Batch(url)
        loop.call_soon(_send, loop, batch)
    answer: asyncio.Future[Any] = loop.create_future()
    batch.calls.append((call, answer))
    return answer


def _send(loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
    if _gathering.get(loop) is batch:
        del _gathering[loop]  # admissions from now on gather for the next call
    task = loop.create_task(_execute(batch))
    _sending.add(task)
    task.add_done_callback(_sending.discard)


async def _execute(batch: _Batch) -> None:
    try:
        replies = await _pipelined(redis_for(batch.url), [call for call, _ in batch.calls])
    except Exception as exc:
        LimitsHealth.failed(exc)
        for _, answer in batch.calls:
            if not answer.done():
                answer.set_exception(exc)
        return
    LimitsHealth.succeeded()
    for (_, answer), reply in zip(batch.calls, replies, strict=True):
        if answer.done():
            continue
        if isinstance(reply, Exception):
            answer.set_exception(reply)
        else:
            answer.set_result(reply)


async def _pipelined(client: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
    """The script's replies to `calls` (an exception in place of a reply that failed)."""
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(ADMIT_SHA, 2, *call)
        replies = await pipe.execute(raise_on_error=False)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        # Redis does not have the script (first use, or it restarted): those calls did not
        # run. Load it and send them again.
        await client.script_load(ADMIT_SCRIPT)
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                pipe.evalsha(ADMIT_SHA, 2, *calls[i])
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
    return replies


def _release(
    answer: asyncio.Future[Any], key_id: int, tpm: int, tokens: int, period: str | None, cost: int, expires: int
) -> None:
    # An admission whose caller was cancelled while Redis decided: take back its reservation.
    if answer.cancelled() or answer.exception() is not None or int(answer.result()[0]) != ADMITTED:
        return
    _PENDING.add(key_id, tpm, -tokens if tpm > 0 else 0, period, -cost if period is not None else 0, expires)
    _flush_soon(FLUSH_DELAY_S)


_flush_due: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_flushes: set[asyncio.Task[None]] = set()


def _flush_soon(delay: float) -> None:
    # One flush scheduled per event loop; a loop that ends first leaves the settlements
    # held for the next admission or flush on another.
    loop = asyncio.get_running_loop()
    if loop in _flush_due:
        return
    _flush_due.add(loop)
    loop.call_later(delay, _start_flush, loop)


def _start_flush(loop: asyncio.AbstractEventLoop) -> None:
    _flush_due.discard(loop)
    task = loop.create_task(limits_flush())
    _flushes.add(task)
    task.add_done_callback(_flushes.discard)
