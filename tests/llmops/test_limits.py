"""Per-key rate limits and budgets (llmops.limits), in process and against real Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from decimal import Decimal

import pytest
import redis
from django.conf import settings as django_settings

from llmops import limits
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.limits import LimitsHealth, budget_spent, limits_admit, limits_flush

ZERO = Decimal(0)
GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s|(\d+)ms)$")


def seconds(duration: str) -> float:
    """An x-ratelimit-reset-* value ("1m0s", "8.64s", "20ms", as OpenAI writes them) in seconds."""
    match = GO_DURATION.match(duration)
    assert match, f"not a duration as OpenAI writes them: {duration!r}"
    hours, minutes, secs, ms = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0) + int(ms or 0) / 1000


@pytest.fixture(autouse=True)
def _fresh_limits(settings):
    settings.LLMOPS_LIMITS_REDIS_URL = ""
    limits.limits_reset()
    yield
    limits.limits_reset()


@pytest.fixture
def key_with():
    """Make an ApiKeyInfo with limits; its books in any Redis are removed before and after."""
    made: list[int] = []

    def make(**limits_: object) -> ApiKeyInfo:
        key = ApiKeyInfo(id=10**9 + secrets.randbelow(10**9), name="limited", prefix="llmops-test", **limits_)
        made.append(key.id)
        _forget(key.id)
        return key

    yield make
    for key_id in made:
        _forget(key_id)


def _forget(key_id: int) -> None:
    url = django_settings.LLMOPS_LIMITS_REDIS_URL
    if url:
        client = redis.Redis.from_url(url, socket_timeout=1)
        try:
            for name in client.scan_iter(match=f"llmops:*{{{key_id}}}*"):
                client.delete(name)
        except redis.RedisError:
            pass  # a test that stopped its Redis
        finally:
            client.close()


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.services)])
def books(request, settings):
    """Where the limiter keeps its books: this process, or the services profile's Redis."""
    settings.LLMOPS_LIMITS_REDIS_URL = settings.REDIS_URL if request.param == "redis" else ""
    return request.param


@pytest.fixture
def private_redis(settings):
    """A redis-server of this test's own, on a free port, that the test may stop."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed, and CI must run the Redis outage tests")
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.02)
    client.close()
    settings.LLMOPS_LIMITS_REDIS_URL = url
    yield server
    if server.poll() is None:
        server.kill()
    server.wait()


async def refusal(key: ApiKeyInfo, *, tokens: int = 1, cost: Decimal = ZERO) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await limits_admit(key, tokens=tokens, cost=cost)
    return caught.value


async def test_a_key_without_limits_shares_one_admission_and_never_calls_redis(settings, key_with):
    settings.LLMOPS_LIMITS_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    key = key_with()
    first = await limits_admit(key, tokens=10_000, cost=Decimal("5"))
    second = await limits_admit(key, tokens=10_000, cost=Decimal("5"))
    assert first is second and first.headers == {}
    await first.settle(tokens=3, cost=Decimal("0.01"))
    assert LimitsHealth.errors == 0 and LimitsHealth.failed_open == 0
    with pytest.raises(TypeError):
        first.headers["x-leak"] = "to every other key"


async def test_the_request_after_the_rpm_limit_is_refused_with_retry_after_and_openai_headers(books, key_with):
    key = key_with(rpm=3)
    remaining = []
    for _ in range(3):
        admission = await limits_admit(key, tokens=10, cost=ZERO)
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
        assert seconds(admission.headers["x-ratelimit-reset-requests"]) <= 60
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    assert "x-ratelimit-limit-tokens" not in admission.headers  # the key has no TPM

    error = await refusal(key)
    assert error.status == 429
    assert error.body() == {
        "error": {"message": error.message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    assert error.message.startswith("Rate limit reached for requests per min (RPM)")
    assert "Limit 3, Used 3, Requested 1" in error.message
    # One request comes back every 60 / 3 = 20 seconds.
    assert 19 <= int(error.headers["retry-after"]) <= 20
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert 59 < seconds(error.headers["x-ratelimit-reset-requests"]) <= 60


async def test_tokens_over_the_tpm_limit_are_refused_likewise(books, key_with):
    key = key_with(tpm=1000)
    admission = await limits_admit(key, tokens=600, cost=ZERO)
    assert admission.headers["x-ratelimit-limit-tokens"] == "1000"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "400"
    assert admission.headers["x-ratelimit-reset-tokens"] == "36s"  # 600 tokens at 60 ms each

    error = await refusal(key, tokens=600)
    assert (error.status, error.error_type, error.code) == (429, "tokens", "rate_limit_exceeded")
    assert "tokens per min (TPM)" in error.message and "Limit 1000, Used 600, Requested 600" in error.message
    # 200 tokens short, at 60 ms a token.
    assert int(error.headers["retry-after"]) == 12
    assert error.headers["x-ratelimit-remaining-tokens"] == "400"
    assert await limits_admit(key, tokens=400, cost=ZERO)


async def test_a_request_larger_than_the_tpm_limit_is_told_it_can_never_fit(books, key_with):
    error = await refusal(key_with(tpm=1000), tokens=1500)
    assert (error.status, error.error_type) == (429, "tokens")
    assert error.message.startswith("Request too large for tokens per min (TPM)")
    assert error.headers["x-should-retry"] == "false" and "retry-after" not in error.headers


async def test_a_spent_budget_is_refused_with_insufficient_quota(books, key_with):
    key = key_with(budget_usd=Decimal("0.05"), budget_period="day")
    for _ in range(2):
        admission = await limits_admit(key, tokens=10, cost=Decimal("0.02"))
        assert admission.headers == {}  # no RPM or TPM: no rate-limit headers
    error = await refusal(key, cost=Decimal("0.02"))  # 0.04 reserved + 0.02 > 0.05
    assert error.status == 429
    assert error.body()["error"] | {"message": ""} == {
        "message": "",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert "$0.05 per day" in error.message and "renews at" in error.message
    assert error.headers["x-should-retry"] == "false" and "retry-after" not in error.headers
    assert await budget_spent(key) == Decimal("0.04")


async def test_settling_gives_the_unused_estimate_back_to_the_next_request(books, key_with):
    key = key_with(tpm=1000, budget_usd=Decimal("0.05"))
    admission = await limits_admit(key, tokens=1000, cost=Decimal("0.04"))
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"
    await admission.settle(tokens=10, cost=Decimal("0.001"))

    following = await limits_admit(key, tokens=900, cost=Decimal("0.04"))
    assert int(following.headers["x-ratelimit-remaining-tokens"]) in (90, 91)
    await following.settle(tokens=900, cost=Decimal("0.04"))
    assert await budget_spent(key) == Decimal("0.041")


async def test_settling_twice_counts_once(books, key_with):
    key = key_with(budget_usd=Decimal("1"))
    admission = await limits_admit(key, tokens=10, cost=Decimal("0.02"))
    await admission.settle(tokens=10, cost=Decimal("0.03"))
    await admission.settle(tokens=10, cost=Decimal("0.03"))
    assert await budget_spent(key) == Decimal("0.03")


async def test_a_request_cancelled_in_flight_settles_from_its_finally(books, key_with):
    key = key_with(tpm=1000, budget_usd=Decimal("1"))
    started = asyncio.Event()

    async def request() -> None:
        admission = await limits_admit(key, tokens=800, cost=Decimal("0.5"))
        try:
            started.set()
            await asyncio.sleep(3600)  # the upstream call
        finally:
            await admission.settle(tokens=5, cost=Decimal("0.001"))  # what it had used when cancelled

    task = asyncio.ensure_future(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await budget_spent(key) == Decimal("0.001")
    assert await limits_admit(key, tokens=990, cost=Decimal("0.9"))


@pytest.mark.parametrize("overrun", [Decimal("1"), Decimal("1.5")], ids=["as-estimated", "answers-ran-longer"])
async def test_two_hundred_concurrent_requests_overshoot_a_nearly_spent_budget_only_by_their_own_excess(
    books, key_with, overrun
):
    budget, estimate = Decimal("1.00"), Decimal("0.01")
    real = estimate * overrun
    key = key_with(budget_usd=budget)
    earlier = await limits_admit(key, tokens=0, cost=Decimal("0.965"))
    await earlier.settle(tokens=0, cost=Decimal("0.965"))  # $0.035 left: room for 3 estimates

    async def request() -> bool:
        try:
            admission = await limits_admit(key, tokens=100, cost=estimate)
        except GatewayError as exc:
            assert exc.error_type == "insufficient_quota"
            return False
        try:
            await asyncio.sleep(0.01)  # in flight while the others are admitted or refused
        finally:
            await admission.settle(tokens=100, cost=real)
        return True

    outcomes = await asyncio.gather(*(request() for _ in range(200)))
    admitted = sum(outcomes)
    # Each reservation counted against the budget before the next admission was decided.
    assert admitted == 3
    await limits_flush()
    spent = await budget_spent(key)
    assert spent == Decimal("0.965") + admitted * real  # every settlement counted, once
    # Over the budget only by what the admitted requests cost beyond their estimates.
    assert spent - budget <= admitted * (real - estimate)
    if real == estimate:
        assert spent <= budget
    error = await refusal(key, cost=estimate)
    assert error.error_type == "insufficient_quota"


async def test_budget_spend_survives_a_restart_in_redis(private_redis, key_with):
    key = key_with(budget_usd=Decimal("0.10"))
    admission = await limits_admit(key, tokens=10, cost=Decimal("0.05"))
    await admission.settle(tokens=10, cost=Decimal("0.07"))
    await limits_flush()

    limits.limits_reset()  # a new process: nothing of the old one's books in memory
    assert await budget_spent(key) == Decimal("0.07")
    error = await refusal(key, cost=Decimal("0.05"))
    assert error.error_type == "insufficient_quota"
    assert await limits_admit(key, tokens=10, cost=Decimal("0.03"))


async def test_a_settlement_travels_with_the_next_admission_of_its_key(private_redis, key_with):
    key = key_with(tpm=1000)
    admission = await limits_admit(key, tokens=1000, cost=ZERO)
    await admission.settle(tokens=10, cost=ZERO)
    # At once, before any flush: this admission carries the correction to Redis itself.
    following = await limits_admit(key, tokens=900, cost=ZERO)
    assert int(following.headers["x-ratelimit-remaining-tokens"]) in (90, 91)
    assert limits.limits_health()["pending_settlements"] == 0


async def test_with_redis_stopped_requests_are_admitted_a_warning_logged_once_and_healthz_counts(
    private_redis, key_with, settings, caplog, transactional_db, http
):
    settings.LLMOPS_CACHE_RETRY_AFTER_S = 0  # retry Redis on every request: the log must still stay quiet
    key = key_with(rpm=1000, budget_usd=Decimal("1"))
    for _ in range(3):
        admission = await limits_admit(key, tokens=10, cost=Decimal("0.01"))
        await admission.settle(tokens=10, cost=Decimal("0.01"))
    assert admission.headers["x-ratelimit-remaining-requests"] == "997"
    assert LimitsHealth.errors == 0

    private_redis.kill()
    private_redis.wait()
    caplog.set_level(logging.WARNING, logger="llmops.limits")
    started = time.perf_counter()
    for _ in range(5):
        admission = await limits_admit(key, tokens=10, cost=Decimal("0.01"))
        assert admission.headers == {}  # admitted unchecked: nothing to say about limits
        await admission.settle(tokens=10, cost=Decimal("0.01"))
    assert time.perf_counter() - started < 2  # a dead Redis costs little
    warnings = [r for r in caplog.records if r.name == "llmops.limits"]
    assert len(warnings) == 1 and "admitted unchecked" in warnings[0].getMessage()
    assert LimitsHealth.errors >= 5 and LimitsHealth.failed_open == 5

    health = (await http.get("/healthz")).json()["limits"]
    assert health["backend"] == "redis"
    assert health["failed_open"] == 5 and health["errors"] >= 5


async def test_after_a_redis_error_the_limiter_leaves_redis_alone_for_a_while(private_redis, key_with, settings):
    settings.LLMOPS_CACHE_RETRY_AFTER_S = 60
    key = key_with(rpm=10)
    private_redis.kill()
    private_redis.wait()
    for _ in range(20):
        await limits_admit(key, tokens=1, cost=ZERO)
    assert LimitsHealth.errors == 1 and LimitsHealth.failed_open == 20
