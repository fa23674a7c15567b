from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx2
import openai
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.cache import cache, caches
from django.core.management import call_command
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

ROOT = Path(__file__).resolve().parent.parent

# The services profile (PostgreSQL and Redis) runs only the tests whose behaviour depends on
# the database, the cache or the channel layer: those under these paths, and any test marked
# `backends` or `services` elsewhere. The embedded profile runs every test. A path here that
# no longer exists stops the run, so that a renamed file cannot drop out of the services
# profile unnoticed; a new test file that writes through the ORM in a way a backend could
# change (upserts, bulk writes, locks, aggregates), or uses the cache, the channel layer,
# Celery or Redis, belongs here.
BACKEND_DEPENDENT = (
    "tests/batches/",  # row claims and leases, bulk writes, the Celery worker, the progress feed
    "tests/caching/test_answer_cache.py",  # the Redis hot layer
    "tests/caching/test_cache_admin_and_stats.py",
    "tests/caching/test_semantic_cache.py",
    "tests/llmops/test_admin_and_commands.py",  # seeding upserts, key revocation through the cache
    "tests/llmops/test_asyncio_fixes.py",
    "tests/llmops/test_bulk.py",  # upserts
    "tests/llmops/test_catalog.py",  # the shared configuration version, in the cache
    "tests/llmops/test_chat_api.py",  # the whole REST path: keys, answer cache, metric rows
    "tests/llmops/test_errors.py",  # refusals recorded as metric rows
    "tests/llmops/test_failover.py",  # breakers shared through Redis
    "tests/llmops/test_health.py",
    "tests/llmops/test_keys.py",  # revocation reaching other processes through the cache
    "tests/llmops/test_lean_redis.py",
    "tests/llmops/test_limits.py",
    "tests/llmops/test_limits_api.py",
    "tests/llmops/test_model_limits.py",
    "tests/llmops/test_redis.py",
    "tests/llmops/test_websocket.py",  # the channel layer
    "tests/monitoring/",  # metric queries, rollups, percentiles, migrations, alerts
    "tests/routing/test_limits_choice.py",  # measured figures read from the metric rows
    "tests/routing/test_pareto_page.py",
    "tests/routing/test_routes.py",
    "tests/routing/test_cascade.py",
)
# Left out of `make test-fast` (they still run in `make test`): the tests that drive Chromium,
# and the benchmarks.
BROWSER = ("tests/test_docs.py",)  # and every tests/test_*_browser.py
BENCHMARK = ("tests/test_benchmarks.py",)


def pytest_configure(config):
    missing = [path for path in (*BACKEND_DEPENDENT, *BROWSER, *BENCHMARK) if not (ROOT / path).exists()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py names test paths that do not exist: {', '.join(missing)}")


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(config, items):
    backends, browser, benchmark = pytest.mark.backends, pytest.mark.browser, pytest.mark.benchmark
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        path = item.path.relative_to(ROOT).as_posix()
        if path.startswith(BACKEND_DEPENDENT):
            item.add_marker(backends)
        if path in BROWSER or (path.startswith("tests/test_") and path.endswith("_browser.py")):
            item.add_marker(browser)
        if path in BENCHMARK:
            item.add_marker(benchmark)
        if xdist:
            # Under pytest-xdist (--dist loadgroup) a file runs on one worker, its module fixtures
            # set up once; the benchmarks, a few minutes each, are shared out one by one.
            item.add_marker(pytest.mark.xdist_group(item.nodeid if path in BENCHMARK else path))
    local_model_missing(items)
    if django_settings.REDIS_URL:
        return
    skip = pytest.mark.skip(reason="needs Redis and PostgreSQL: runs in the services profile (make test)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


# Tests that run the local model without the local_model marker: the samples that call it.
LOCAL_MODEL_TESTS = (
    "tests/test_live_server.py::test_the_readme_path_works_with_the_openai_sdk",
    "tests/test_docs.py::test_python_blocks[README.md]",
    "tests/test_docs.py::test_python_blocks[docs/api.md]",
)


def local_model_missing(items) -> None:
    """Where llama-cpp-python could not be built (llmops/local_build.py), the tests that run
    the local model are skipped, saying why; with CI=true they run, and fail."""
    from llmops.providers.local import unavailable

    reason = unavailable()
    if reason is None or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason=f"needs the local model: {reason}")
    for item in items:
        if "local_model" in item.keywords or item.nodeid in LOCAL_MODEL_TESTS:
            item.add_marker(skip)


def pytest_report_header(config):
    db = django_settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    backend = "redis" if django_settings.REDIS_URL else "locmem"
    return f"llmops profile: {os.environ.get('LLMOPS_TEST_PROFILE', 'embedded')} (database {db}, cache {backend})"


def database_tag() -> str:
    """This checkout and the state of its migrations, in a few characters: the test database is
    kept between runs (--reuse-db), one per checkout (two checkouts on one PostgreSQL do not
    share one) and per migrations state (pytest-django would keep a database built by an
    earlier version of a migration; a changed one gets a new database instead)."""
    import django

    migrations = hashlib.sha256(f"{django.__version__} {django_settings.INSTALLED_APPS}".encode())
    for path in sorted(ROOT.glob("*/migrations/*.py")):
        migrations.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}_{migrations.hexdigest()[:8]}"


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> tuple[str, str]:
    """The kept test database's name, and the start that the names of this checkout's test
    databases share whatever their migrations state."""
    checkout, _, migrations = database_tag().partition("_")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # one database per xdist worker
    db = django_settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # A file, as in settings.py.
        prefix = str(Path(tempfile.gettempdir()) / f"llmops-test-{checkout}-")
        name = f"{prefix}{migrations}{worker and '-' + worker}.sqlite3"
    else:
        prefix = f"test_{db['NAME']}_{checkout}_"
        name = f"{prefix}{migrations}{worker and '_' + worker}"
    db.setdefault("TEST", {})["NAME"] = name
    return name, prefix


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, django_db_modify_db_settings):
    name, prefix = django_db_modify_db_settings
    current = name.removesuffix(".sqlite3").removesuffix(os.environ.get("PYTEST_XDIST_WORKER", ""))
    with django_db_blocker.unblock():
        # A kept database may still hold the rows of a run stopped in the middle of a test.
        call_command("flush", interactive=False, verbosity=0)
        # The databases that this checkout's earlier migrations states left go.
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection._nodb_cursor() as cursor:
                cursor.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix])
                for (stale,) in cursor.fetchall():
                    if not stale.startswith(current):
                        cursor.execute(f'DROP DATABASE IF EXISTS "{stale}"')
        else:
            for stale in Path(prefix).parent.glob(f"{Path(prefix).name}*"):
                if not str(stale).startswith(current):
                    stale.unlink(missing_ok=True)


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
