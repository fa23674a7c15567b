"""The attempt loop end to end: retries, fallbacks, the request deadline, circuit breakers
and what every request gives back, through the HTTP API (ASGI in process) to fake OpenAI
servers on loopback ports (real TCP, the real SDK). Nothing of the gateway is mocked.

`fo-primary` falls back to `fo-backup`; `fo-solo` has no fallback. Both fakes answer
unless a test scripts a failure; timeouts and backoffs are small so each test is quick."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from caching.models import CachePolicy
from llmops import catalog
from llmops.auth import api_key_create
from llmops.breakers import ModelBreaker, SharedStateHealth, breaker_for
from llmops.limits import budget_spent, limits_reset
from llmops.models import ApiKey, ModelEndpoint
from llmops.upstream import InFlight
from tests.conftest import add_endpoint, auth, flushed_metrics, sse_client_that_leaves, sse_events
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.upstream import running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("models")]

URL = "/v1/chat/completions"
PRIMARY, BACKUP, SOLO = "fo-primary", "fo-backup", "fo-solo"
PRIMARY_TEXT = "The primary model answers."
BACKUP_TEXT = "The fallback model answers."
HELLO = [{"role": "user", "content": "Hello there"}]


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def primary() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.reply(text=PRIMARY_TEXT)
    yield from running(fake)


@pytest.fixture
def backup() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.reply(text=BACKUP_TEXT)
    yield from running(fake)


@pytest.fixture(autouse=True)
def gateway(upstream_under_test, settings):
    """Retries on, quick: two retries with a backoff of at most 20 ms, a 1 s upstream
    timeout, a 5 s deadline, and breakers that stay out of the way unless a test asks."""
    settings.LLMOPS_RETRIES = 2
    settings.LLMOPS_RETRY_BASE_S = 0.01
    settings.LLMOPS_RETRY_MAX_BACKOFF_S = 0.02
    settings.LLMOPS_RETRY_AFTER_MAX_S = 1.0
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 1.0
    settings.LLMOPS_REQUEST_DEADLINE_S = 5.0
    settings.LLMOPS_BREAKER_FAILURES = 1000
    settings.LLMOPS_BREAKER_FAILURE_RATE = 0.5
    settings.LLMOPS_BREAKER_MIN_CALLS = 1
    settings.LLMOPS_BREAKER_CONSECUTIVE_FAILURES = 1000
    settings.LLMOPS_BREAKER_COOLDOWN_S = 0.3
    settings.LLMOPS_BREAKER_SYNC_S = 0.0
    saved = SharedStateHealth.errors, SharedStateHealth.last_logged, SharedStateHealth.down_until
    SharedStateHealth.errors, SharedStateHealth.last_logged, SharedStateHealth.down_until = 0, 0.0, 0.0
    limits_reset()
    yield
    SharedStateHealth.errors, SharedStateHealth.last_logged, SharedStateHealth.down_until = saved
    limits_reset()


@pytest.fixture
async def models(primary, backup, transactional_db) -> None:
    prices = {"input_price_per_mtok": Decimal("2.50"), "output_price_per_mtok": Decimal("10.00")}
    await add_endpoint(name=BACKUP, provider="openai", upstream_model="gpt-backup", base_url=backup.base_url, **prices)
    await add_endpoint(
        name=PRIMARY,
        provider="openai",
        upstream_model="gpt-primary",
        base_url=primary.base_url,
        fallbacks=BACKUP,
        **prices,
    )
    await add_endpoint(name=SOLO, provider="openai", upstream_model="gpt-solo", base_url=primary.base_url, **prices)
    catalog.reset()


async def catalog_update(names: list[str], **fields: Any) -> None:
    await ModelEndpoint.objects.filter(name__in=names).aupdate(**fields)
    catalog.reset()


async def chat(http, key: str, model: str = PRIMARY, **extra: Any):
    return await http.post(URL, json={"model": model, "messages": HELLO, **extra}, headers=auth(key))


def streamed_text(body: str) -> str:
    pieces = []
    for data in sse_events(body):
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        for choice in chunk.get("choices") or []:
            pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


def outcomes(metric) -> list[tuple[str, str]]:
    return [(attempt["model"], attempt["outcome"]) for attempt in metric.attempts]


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def eventually(condition: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def open_breaker(http, key: str, fake: FakeOpenAI, model: str = PRIMARY, failures: int = 3) -> None:
    """Fail `failures` calls of the model (LLMOPS_RETRIES=0: one call a request)."""
    fake.fail(500, times=failures)
    for _ in range(failures):
        await chat(http, key, model)
    assert breaker_for(model).state == "open"


@pytest.fixture
def breaker_settings(settings):
    settings.LLMOPS_BREAKER_FAILURES = 3
    settings.LLMOPS_BREAKER_FAILURE_RATE = 0.5
    settings.LLMOPS_RETRIES = 0
    return settings


async def healthz_breakers(http) -> dict[str, dict[str, Any]]:
    response = await http.get("/healthz")
    body = response.json()
    assert "breakers" in body, f"/healthz has no breakers key: {sorted(body)}"
    return body["breakers"]


def keep_alive_once(fake: FakeOpenAI) -> Callable[[list[dict]], bool]:
    """Leave at the first keep-alive comment sent once the upstream has the request (the
    SDK's first client of a test takes a moment to build)."""

    def leave(sent: list[dict]) -> bool:
        last = sent[-1]
        return (
            last["type"] == "http.response.body"
            and last.get("body", b"").startswith(b": keep-alive")
            and len(fake.requests) > 0
        )

    return leave


# -- retries on the same model ----------------------------------------------------------


async def test_a_429_with_retry_after_is_retried_on_the_same_model_after_that_wait(http, api_key, primary, backup):
    primary.fail(429, retry_after="0.3")
    response = await chat(http, api_key)
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == PRIMARY
    assert response.headers["x-llmops-attempts"] == "2"
    assert response.json()["choices"][0]["message"]["content"] == PRIMARY_TEXT
    first, second = primary.requests
    assert second.at - first.at >= 0.3  # the backoff alone is at most 20 ms
    assert backup.requests == []
    [metric] = await flushed_metrics()
    assert outcomes(metric) == [(PRIMARY, "rate_limited"), (PRIMARY, "ok")]
    assert InFlight.current == 0


async def test_a_retry_after_longer_than_the_gateway_waits_moves_to_the_fallback_at_once(
    http, api_key, primary, backup, settings
):
    settings.LLMOPS_RETRY_AFTER_MAX_S = 0.5
    primary.fail(429, retry_after="30")
    started = time.monotonic()
    response = await chat(http, api_key)
    assert time.monotonic() - started < 0.5
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == BACKUP
    assert response.headers["x-llmops-attempts"] == "2"
    assert (len(primary.requests), len(backup.requests)) == (1, 1)
    [metric] = await flushed_metrics()
    assert outcomes(metric) == [(PRIMARY, "rate_limited"), (BACKUP, "ok")]
    assert InFlight.current == 0


# -- falling back -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [("500", "error"), ("503", "error"), ("slow", "timeout"), ("refused", "unreachable")],
)
async def test_a_transient_failure_is_retried_then_the_fallback_answers(
    http, api_key, primary, backup, settings, failure, outcome
):
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 0.2
    if failure == "slow":
        primary.delay_s = 0.5
    elif failure == "refused":
        await catalog_update([PRIMARY], base_url=closed_port_url())
    else:
        primary.fail(int(failure), times=3)

    response = await chat(http, api_key)

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == BACKUP
    assert response.headers["x-llmops-attempts"] == "4"  # the first call and two retries, then the fallback
    assert response.json()["choices"][0]["message"]["content"] == BACKUP_TEXT
    assert len(primary.requests) == (0 if failure == "refused" else 3)
    assert len(backup.requests) == 1
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("ok", 200)
    assert (metric.model, metric.answered_by) == (PRIMARY, BACKUP)
    assert outcomes(metric) == [(PRIMARY, outcome)] * 3 + [(BACKUP, "ok")]
    assert all(isinstance(a["latency_ms"], (int, float)) and a["latency_ms"] >= 0 for a in metric.attempts)
    if failure == "slow":
        assert all(a["latency_ms"] >= 190 for a in metric.attempts[:3])  # each waited for the timeout
    assert InFlight.current == 0


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_400_class_upstream_error_is_neither_retried_nor_fallen_back_from(
    http, api_key, primary, backup, status
):
    primary.fail(status, "Your request is wrong.")
    response = await chat(http, api_key)
    assert response.status_code == 400, response.text
    assert "Your request is wrong." in response.json()["error"]["message"]
    assert len(primary.requests) == 1
    assert backup.requests == []
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.answered_by) == ("error", 400, "")
    assert outcomes(metric) == [(PRIMARY, "invalid")]
    assert InFlight.current == 0


async def test_400_class_errors_do_not_count_against_the_breaker(http, api_key, primary, breaker_settings):
    primary.fail(400, times=5)
    for _ in range(5):
        assert (await chat(http, api_key)).status_code == 400
    assert breaker_for(PRIMARY).state == "closed"
    assert (await chat(http, api_key)).headers["x-llmops-model"] == PRIMARY
    assert len(primary.requests) == 6


# -- the deadline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_timeout", "stream"), [(0.25, False), (5.0, False), (0.25, True)], ids=["retries", "one-call", "stream"]
)
async def test_the_request_deadline_is_never_exceeded_though_retries_and_a_fallback_remain(
    http, api_key, primary, backup, settings, upstream_timeout, stream
):
    settings.LLMOPS_REQUEST_DEADLINE_S = 0.6
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = upstream_timeout
    primary.delay_s = backup.delay_s = 3.0
    started = time.monotonic()
    response = await chat(http, api_key, stream=stream)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "upstream_timeout"
    assert elapsed < 0.6 + 0.15, f"answered after {elapsed:.2f} s"
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 504)
    assert InFlight.current == 0


async def test_a_request_waiting_for_a_concurrency_slot_still_answers_by_its_deadline(http, api_key, primary, settings):
    # A stream holds the model's only slot for ~1.2 s (the deadline covers only the wait
    # for its first token); a second request may wait for that slot, not past its deadline.
    settings.LLMOPS_REQUEST_DEADLINE_S = 0.6
    await catalog_update([PRIMARY, SOLO], max_concurrency=1)
    primary.reply(text="one two three four five")
    primary.event_delay_s = 0.2
    holder = asyncio.ensure_future(chat(http, api_key, SOLO, stream=True))
    assert await eventually(lambda: len(primary.requests) == 1)
    started = time.monotonic()
    response = await chat(http, api_key, SOLO)
    elapsed = time.monotonic() - started
    await holder
    assert elapsed < 0.6 + 0.25, f"answered after {elapsed:.2f} s (status {response.status_code})"
    assert response.status_code == 504
    assert InFlight.current == 0


# -- streams ----------------------------------------------------------------------------


async def test_a_stream_falls_back_before_its_first_token(http, api_key, primary, backup):
    primary.fail(500, times=3)
    response = await chat(http, api_key, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == BACKUP
    assert response.headers["x-llmops-attempts"] == "4"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["model"] == BACKUP
    assert streamed_text(response.text) == BACKUP_TEXT
    assert backup.last.body["stream"] is True
    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.model, metric.answered_by) == ("ok", True, PRIMARY, BACKUP)
    assert outcomes(metric) == [(PRIMARY, "error")] * 3 + [(BACKUP, "ok")]
    assert InFlight.current == 0


@pytest.mark.parametrize("drop", [False, True], ids=["error-event", "connection-dropped"])
async def test_a_stream_that_fails_after_its_first_token_ends_with_an_error_event_and_no_fallback(
    http, api_key, primary, backup, drop
):
    primary.reply(text="one two three four")
    primary.break_stream(after=2, drop=drop)
    response = await chat(http, api_key, stream=True)
    assert response.status_code == 200
    assert response.headers["x-llmops-model"] == PRIMARY
    events = sse_events(response.text)
    assert streamed_text("".join(f"data: {e}\n\n" for e in events[:-1])) == "one two "
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error", error
    assert len(primary.requests) == 1  # nor retried
    assert backup.requests == []
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.answered_by) == ("error", 502, PRIMARY)
    assert InFlight.current == 0


async def test_a_stream_whose_first_token_is_slow_still_falls_back_after_its_keep_alives(
    http, api_key, primary, backup, settings
):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    primary.delay_s = 0.1
    primary.fail(500, times=3)
    response = await chat(http, api_key, stream=True)
    assert response.status_code == 200
    assert response.text.startswith(": keep-alive\n\n")  # the headers went before any model answered
    assert streamed_text(response.text) == BACKUP_TEXT
    assert sse_events(response.text)[-1] == "[DONE]"
    [metric] = await flushed_metrics()
    assert (metric.status, metric.answered_by) == ("ok", BACKUP)
    assert InFlight.current == 0


async def test_a_stream_that_falls_back_after_its_keep_alives_names_the_fallback_in_its_chunks(
    http, api_key, primary, backup, settings
):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    primary.delay_s = 0.1
    primary.fail(500, times=3)
    response = await chat(http, api_key, stream=True)
    chunks = [json.loads(data) for data in sse_events(response.text) if data != "[DONE]"]
    assert {chunk["model"] for chunk in chunks} == {BACKUP}


async def test_a_stream_cut_after_its_first_token_counts_against_the_breaker(http, api_key, primary, breaker_settings):
    for _ in range(3):
        primary.break_stream(after=1)
        await chat(http, api_key, SOLO, stream=True)
    assert breaker_for(SOLO).state == "open"


# -- circuit breakers -------------------------------------------------------------------


async def test_healthz_shows_each_catalog_models_breaker(http, api_key):
    breakers = await healthz_breakers(http)
    for name in (PRIMARY, BACKUP, SOLO):
        assert breakers[name]["state"] == "closed"


async def test_a_breaker_opens_after_repeated_failures_and_requests_skip_the_model(
    http, api_key, primary, backup, breaker_settings
):
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    primary.fail(500, times=50)
    for _ in range(5):
        response = await chat(http, api_key)
        assert response.status_code == 200
        assert response.headers["x-llmops-model"] == BACKUP
    assert len(primary.requests) == 3  # opened by the third failure
    assert len(backup.requests) == 5
    *_, metric = await flushed_metrics()
    assert outcomes(metric) == [(PRIMARY, "breaker_open"), (BACKUP, "ok")]
    breakers = await healthz_breakers(http)
    assert breakers[PRIMARY]["state"] == "open"
    assert breakers[BACKUP]["state"] == "closed"
    assert InFlight.current == 0


async def test_a_few_failures_among_many_successes_leave_the_breaker_closed(
    http, api_key, primary, backup, breaker_settings
):
    for _ in range(7):
        await chat(http, api_key)
    primary.fail(500, times=3)
    for _ in range(3):
        await chat(http, api_key)
    assert breaker_for(PRIMARY).state == "closed"  # 3 of 10: under the 50% rate
    assert (await chat(http, api_key)).headers["x-llmops-model"] == PRIMARY
    assert len(primary.requests) == 11


async def test_a_window_with_too_few_calls_does_not_open_the_breaker(http, api_key, primary, backup, breaker_settings):
    breaker_settings.LLMOPS_BREAKER_MIN_CALLS = 10
    primary.fail(500, times=4)
    for _ in range(4):
        assert (await chat(http, api_key)).status_code == 200  # each answered by the fallback
    assert breaker_for(PRIMARY).state == "closed"  # 4 of 4 failed, but 4 calls prove little
    assert (await chat(http, api_key)).headers["x-llmops-model"] == PRIMARY


async def test_failures_in_a_row_open_a_busy_models_breaker_whatever_its_rate(
    http, api_key, primary, backup, breaker_settings
):
    breaker_settings.LLMOPS_BREAKER_FAILURES = 1000  # the rate rule alone would never open it
    breaker_settings.LLMOPS_BREAKER_CONSECUTIVE_FAILURES = 4
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    for _ in range(20):
        await chat(http, api_key)
    primary.fail(500, times=50)
    for _ in range(6):
        assert (await chat(http, api_key)).headers["x-llmops-model"] == BACKUP
    assert len(primary.requests) == 20 + 4  # opened by the fourth failure in a row


async def test_a_late_failure_of_a_call_made_before_the_breaker_opened_does_not_extend_its_cool_down(
    breaker_settings,
):
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 0.3
    breaker = breaker_for("late-model")
    early = await breaker.allow()  # let through while closed, answers after the breaker opened
    for _ in range(3):
        await breaker.failed(await breaker.allow())
    opened_until = breaker.opened_until
    assert opened_until
    await asyncio.sleep(0.1)
    await breaker.failed(early)
    assert breaker.opened_until == opened_until


async def test_a_model_skipped_for_its_open_breaker_is_not_counted_as_an_attempt(
    http, api_key, primary, backup, breaker_settings
):
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    await open_breaker(http, api_key, primary)
    response = await chat(http, api_key)
    assert response.headers["x-llmops-model"] == BACKUP
    assert response.headers["x-llmops-attempts"] == "1"  # one call made: the fallback's
    assert response.json()["llmops"]["attempts"] == 1
    *_, metric = await flushed_metrics()
    assert outcomes(metric) == [(PRIMARY, "breaker_open"), (BACKUP, "ok")]  # the skip is kept in the metric


async def test_an_open_breaker_with_no_fallback_answers_503_with_retry_after(http, api_key, primary, breaker_settings):
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    primary.fail(500, times=50)
    for _ in range(3):
        assert (await chat(http, api_key, SOLO)).status_code == 502
    started = time.monotonic()
    response = await chat(http, api_key, SOLO)
    assert time.monotonic() - started < 0.2
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert len(primary.requests) == 3
    assert InFlight.current == 0


async def test_after_the_cool_down_one_probe_reaches_the_model_and_its_success_closes_the_breaker(
    http, api_key, primary, backup, breaker_settings
):
    await open_breaker(http, api_key, primary)
    assert len(primary.requests) == 3
    await asyncio.sleep(0.35)
    assert (await healthz_breakers(http))[PRIMARY]["state"] == "half_open"

    primary.delay_s = 0.2  # the probe is still out while the others arrive
    responses = await asyncio.gather(*(chat(http, api_key) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses)
    answered_by = sorted(r.headers["x-llmops-model"] for r in responses)
    assert answered_by == [BACKUP] * 4 + [PRIMARY]
    assert len(primary.requests) == 4  # exactly one probe

    primary.delay_s = 0
    for _ in range(3):
        assert (await chat(http, api_key)).headers["x-llmops-model"] == PRIMARY
    assert len(primary.requests) == 7
    assert (await healthz_breakers(http))[PRIMARY]["state"] == "closed"
    assert InFlight.current == 0


async def test_a_failed_probe_opens_the_breaker_again(http, api_key, primary, backup, breaker_settings):
    await open_breaker(http, api_key, primary)
    await asyncio.sleep(0.35)
    primary.fail(500)
    probe = await chat(http, api_key)
    assert probe.headers["x-llmops-model"] == BACKUP
    assert len(primary.requests) == 4  # the probe reached it, and failed
    after = await chat(http, api_key)
    assert after.headers["x-llmops-model"] == BACKUP
    assert len(primary.requests) == 4  # open again: skipped
    *_, probe_metric, after_metric = await flushed_metrics()
    assert outcomes(probe_metric) == [(PRIMARY, "error"), (BACKUP, "ok")]
    assert outcomes(after_metric) == [(PRIMARY, "breaker_open"), (BACKUP, "ok")]
    assert (await healthz_breakers(http))[PRIMARY]["state"] == "open"


# -- breakers shared through Redis --------------------------------------------------------


@pytest.mark.services
async def test_a_breaker_opened_in_one_process_is_open_in_another(http, api_key, primary, breaker_settings):
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    await open_breaker(http, api_key, primary)
    another_process = ModelBreaker(PRIMARY)
    assert await another_process.allow() is None
    assert another_process.state == "open"


@pytest.mark.services
async def test_one_probe_is_chosen_across_processes_and_its_success_closes_the_breaker_for_all(
    http, api_key, primary, backup, breaker_settings
):
    await open_breaker(http, api_key, primary)
    await asyncio.sleep(0.35)
    here, there = ModelBreaker(PRIMARY), ModelBreaker(PRIMARY)
    probe = await here.allow()
    assert probe is not None and probe.probe
    assert await there.allow() is None  # the other process's probe is out
    await here.succeeded(probe)
    permit = await ModelBreaker(PRIMARY).allow()
    assert permit is not None and not permit.probe
    # And this process's own breaker sees it closed: requests reach the model again.
    assert (await chat(http, api_key)).headers["x-llmops-model"] == PRIMARY
    assert len(primary.requests) == 4


class PrivateRedis:
    """A redis-server of the test's own, on a free port, which it may stop and start again."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail("the private redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed, and CI requires this test")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_when_redis_stops_breakers_go_on_in_process_and_requests_still_succeed(
    http, api_key, primary, backup, breaker_settings, private_redis, caplog
):
    import redis

    url = private_redis.url
    breaker_settings.REDIS_URL = url
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    breaker_settings.LLMOPS_CACHE_RETRY_AFTER_S = 0  # try Redis on every call: count every failure
    caplog.set_level(logging.WARNING, logger="llmops.breakers")

    primary.fail(500)
    assert (await chat(http, api_key)).headers["x-llmops-model"] == BACKUP
    shared = redis.Redis.from_url(url)
    assert shared.hget(f"llmops:breaker:window:{PRIMARY}", "f") == b"1"  # the failure went to Redis
    shared.close()
    assert SharedStateHealth.errors == 0

    private_redis.stop()
    primary.fail(500, times=50)
    for _ in range(5):
        started = time.monotonic()
        response = await chat(http, api_key)
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.headers["x-llmops-model"] == BACKUP
        assert elapsed < 1.0, f"a request took {elapsed:.2f} s with Redis down"
    # Opened in process by the third failure (one before Redis stopped, two after).
    assert len(primary.requests) == 3
    assert breaker_for(PRIMARY).state == "open"
    assert SharedStateHealth.errors >= 2
    warnings = [r for r in caplog.records if "could not reach Redis" in r.getMessage()]
    assert len(warnings) == 1
    health = (await http.get("/healthz")).json()
    assert health["breaker_redis_errors"] == SharedStateHealth.errors
    assert InFlight.current == 0


async def test_a_breaker_opened_while_redis_was_down_stays_open_when_redis_comes_back(
    http, api_key, primary, backup, breaker_settings, private_redis
):
    breaker_settings.REDIS_URL = private_redis.url
    breaker_settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    breaker_settings.LLMOPS_CACHE_RETRY_AFTER_S = 0
    private_redis.stop()
    await open_breaker(http, api_key, primary)  # in process
    private_redis.start()  # empty, as a restarted Redis is
    response = await chat(http, api_key)
    assert response.headers["x-llmops-model"] == BACKUP
    assert len(primary.requests) == 3  # still skipped: its cool-down has 30 s to go
    assert breaker_for(PRIMARY).state == "open"


async def test_a_probe_whose_client_left_lets_the_next_request_probe(
    asgi_app, http, api_key, primary, backup, breaker_settings
):
    breaker_settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    await open_breaker(http, api_key, primary)
    await asyncio.sleep(0.35)
    primary.delay_s = 3.0
    body = {"model": PRIMARY, "messages": HELLO, "stream": True}
    seen = len(primary.requests)

    def probe_out(sent: list[dict]) -> bool:
        return sent[-1]["type"] == "http.response.body" and len(primary.requests) > seen

    await sse_client_that_leaves(asgi_app, api_key, body, leave_when=probe_out)
    assert len(primary.requests) == 4  # the probe reached the model; its client left
    primary.delay_s = 0
    response = await chat(http, api_key)
    assert response.headers["x-llmops-model"] == PRIMARY  # the next request is the new probe
    assert breaker_for(PRIMARY).state == "closed"
    assert InFlight.current == 0


# -- giving back what a request took --------------------------------------------------------


async def test_an_sse_client_that_leaves_before_the_first_token_frees_everything(
    asgi_app, api_key, primary, backup, settings
):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    primary.delay_s = 3.0
    primary.notice_hangups = True
    body = {"model": PRIMARY, "messages": HELLO, "stream": True}
    started = time.monotonic()
    sent = await sse_client_that_leaves(asgi_app, api_key, body, leave_when=keep_alive_once(primary))
    assert time.monotonic() - started < 1.5
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert InFlight.current == 0
    assert await eventually(lambda: len(primary.hangups) == 1), "the upstream call was left open"
    assert backup.requests == []  # leaving is not a failure to fall back from
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.stream) == ("cancelled", 499, True)
    assert outcomes(metric) == [(PRIMARY, "cancelled")]


async def test_the_reservation_of_a_client_that_left_is_settled(asgi_app, primary, settings):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    primary.delay_s = 3.0
    row, raw = await sync_to_async(api_key_create)(name="budgeted")
    await ApiKey.objects.filter(pk=row.pk).aupdate(budget_usd=Decimal("5"))
    catalog.reset()
    key = await catalog.api_key_by_id(row.pk)
    reserved: list[Decimal] = []
    reached = keep_alive_once(primary)

    def leave_when(sent: list[dict]) -> bool:
        if not reached(sent):
            return False
        if not reserved:
            reserved.append(Decimal(-1))  # the test reads it now, while the request is in flight
        return reserved[0] >= 0

    body = {"model": PRIMARY, "messages": HELLO, "stream": True}
    task = asyncio.ensure_future(sse_client_that_leaves(asgi_app, raw, body, leave_when=leave_when))
    assert await eventually(lambda: bool(reserved), timeout=2.0)
    reserved[0] = await budget_spent(key)
    await task
    assert reserved[0] > 0  # the request's estimate was reserved while it ran
    assert await budget_spent(key) == 0  # and given back: nothing was generated
    assert InFlight.current == 0


async def test_every_way_out_gives_back_the_models_concurrency_slot(http, asgi_app, api_key, primary, backup, settings):
    # One slot each: a slot not given back would leave the last request waiting forever.
    await catalog_update([PRIMARY, BACKUP], max_concurrency=1)
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 0.1
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05

    primary.fail(500, times=3)  # retried, then fallen back from
    assert (await chat(http, api_key)).headers["x-llmops-model"] == BACKUP
    assert InFlight.current == 0
    primary.fail(404)  # the request's fault
    assert (await chat(http, api_key)).status_code == 400
    assert InFlight.current == 0
    primary.delay_s = backup.delay_s = 0.3  # timeouts everywhere
    assert (await chat(http, api_key)).status_code == 504
    assert InFlight.current == 0
    settings.LLMOPS_REQUEST_DEADLINE_S = 0.3  # the deadline
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 5.0
    assert (await chat(http, api_key)).status_code == 504
    assert InFlight.current == 0
    body = {"model": PRIMARY, "messages": HELLO, "stream": True}  # the client leaves
    await sse_client_that_leaves(asgi_app, api_key, body, leave_when=keep_alive_once(primary))
    assert InFlight.current == 0
    settings.LLMOPS_REQUEST_DEADLINE_S = 5.0
    primary.delay_s = backup.delay_s = 0
    primary.break_stream(after=1)  # a stream cut after its first token
    assert "[DONE]" not in (await chat(http, api_key, stream=True)).text
    assert InFlight.current == 0

    response = await asyncio.wait_for(chat(http, api_key), timeout=1.0)
    assert response.headers["x-llmops-model"] == PRIMARY
    response = await asyncio.wait_for(chat(http, api_key, BACKUP), timeout=1.0)
    assert response.headers["x-llmops-model"] == BACKUP
    assert InFlight.current == 0


# -- identical requests in flight -------------------------------------------------------------


async def enable_answer_cache() -> None:
    await CachePolicy.objects.aupdate(enabled=True)
    catalog.reset()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_identical_requests_in_flight_share_one_upstream_call(http, api_key, primary, stream):
    await enable_answer_cache()
    primary.delay_s = 0.3
    responses = await asyncio.gather(*(chat(http, api_key, stream=stream) for _ in range(4)))
    assert all(r.status_code == 200 for r in responses)
    assert len(primary.requests) == 1
    assert sorted(r.headers["x-llmops-cache"] for r in responses) == ["hit", "hit", "hit", "miss"]
    if stream:
        assert {streamed_text(r.text) for r in responses} == {PRIMARY_TEXT}
    else:
        assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {PRIMARY_TEXT}
    assert InFlight.current == 0


async def test_a_waiter_stops_waiting_for_a_slow_leader_after_the_join_timeout_and_asks_for_itself(
    http, api_key, primary, settings
):
    await enable_answer_cache()
    settings.LLMOPS_CACHE_JOIN_TIMEOUT_S = 0.2
    primary.delay_s = 0.8
    leader = asyncio.ensure_future(chat(http, api_key))
    assert await eventually(lambda: len(primary.requests) == 1)
    started = time.monotonic()
    waiter = await chat(http, api_key)
    assert waiter.status_code == 200
    assert waiter.headers["x-llmops-cache"] == "miss"  # it asked the model itself
    assert len(primary.requests) == 2
    asked_after = primary.requests[1].at - started
    assert 0.2 <= asked_after < 0.5, f"the waiter asked after {asked_after:.2f} s"
    assert (await leader).headers["x-llmops-cache"] == "miss"
    assert InFlight.current == 0
