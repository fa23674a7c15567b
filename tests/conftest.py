from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import httpx2
import openai
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.cache import cache, caches
from django.db import connections

from caching.models import CachePolicy
from caching.store import ENTRIES
from llmops import catalog
from llmops.auth import api_key_create
from llmops.breakers import breakers_reset
from llmops.models import ModelEndpoint
from llmops.seed import catalog_seed
from monitoring import recorder
from monitoring.models import QueryMetric
from routing.stats import MEASURED


def pytest_collection_modifyitems(config, items):
    if django_settings.REDIS_URL:
        return
    skip = pytest.mark.skip(reason="needs Redis and PostgreSQL: runs in the services profile (make test)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    db = django_settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    backend = "redis" if django_settings.REDIS_URL else "locmem"
    return f"llmops profile: {os.environ.get('LLMOPS_TEST_PROFILE', 'embedded')} (database {db}, cache {backend})"


@pytest.fixture(autouse=True)
def _isolated(settings):
    """Each test starts with no cached configuration, no buffered metrics, an empty cache."""
    settings.LLMOPS_METRICS_FLUSH_INTERVAL_S = 0  # tests flush metrics themselves
    catalog.reset()
    MEASURED.reset()
    breakers_reset()
    recorder.METRICS.buffer.clear()
    ENTRIES.buffer.clear()
    cache.clear()
    caches["answers"].clear()
    yield
    for writer in (recorder.METRICS, ENTRIES):
        writer.stop()
        writer.buffer.clear()
    catalog.reset()


@pytest.fixture(autouse=True)
async def _close_thread_connections():
    yield
    # Async ORM calls run on asgiref's shared worker thread; its connection must not
    # outlive the test (PostgreSQL refuses to drop a test database still in use).
    await sync_to_async(connections.close_all)()


@pytest.fixture
def seeded(transactional_db):
    catalog_seed()


@pytest.fixture
def api_key(transactional_db) -> str:
    _, raw = api_key_create(name="tests")
    return raw


@pytest.fixture
def other_api_key(transactional_db) -> str:
    _, raw = api_key_create(name="other tenant")
    return raw


@pytest.fixture
def asgi_app():
    from llmops.asgi import application

    return application


@pytest.fixture
async def http(asgi_app):
    """An HTTP client talking to the gateway's ASGI application in process."""
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi_app), base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def sdk(asgi_app, api_key, seeded):
    """The official OpenAI SDK pointed at the gateway, as an app developer would use it."""
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi_app))
    client = openai.AsyncOpenAI(
        base_url="http://testserver/v1", api_key=api_key, http_client=http_client, max_retries=0
    )
    yield client
    await client.close()


@pytest.fixture
def upstream_under_test(settings, seeded):
    """For tests of what reaches an upstream: every request must reach it."""
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 5.0
    settings.LLMOPS_RETRIES = 0  # nor the gateway's own, unless a test asks
    # And no answer cache, which would answer a repeated request without calling the upstream.
    CachePolicy.objects.update(enabled=False)
    catalog.reset()


def sse_events(text: str) -> list[str]:
    """The data of each Server-Sent Event in a response body."""
    return [block[6:] for block in text.split("\n\n") if block.startswith("data: ")]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def flushed_metrics(**filters) -> list[QueryMetric]:
    """Write the buffered metrics, then read them back."""

    def read():
        recorder.metrics_flush()
        return list(QueryMetric.objects.filter(**filters).select_related("api_key").order_by("created_at"))

    return await sync_to_async(read)()


async def add_endpoint(**fields) -> ModelEndpoint:
    return await ModelEndpoint.objects.acreate(**fields)


def stream_scope(api_key: str) -> dict:
    """The ASGI scope of a POST to /v1/chat/completions with this key."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {api_key}".encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def sse_client_that_leaves(asgi_app, key: str, body: dict, *, leave_when: Callable[[list[dict]], bool]):
    """A raw ASGI client (httpx's ASGITransport buffers whole bodies): it reads the
    response as it is sent and disconnects once `leave_when(messages so far)` holds."""
    pending = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    left = asyncio.Event()
    sent: list[dict] = []

    async def receive():
        if pending:
            return pending.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if leave_when(sent):
            left.set()

    await asyncio.wait_for(asgi_app(stream_scope(key), receive, send), timeout=5)
    return sent
