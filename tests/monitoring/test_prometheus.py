"""GET /metrics as Prometheus scrapes it: real requests through the gateway (simulated models,
ASGI in process), then the exposition parsed with prometheus-client's own parser; who may
scrape; and multiprocess mode for real, with separate processes writing to one directory
and a daphne server in a third serving their sum. Nothing of the gateway is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest
from asgiref.sync import sync_to_async
from prometheus_client.parser import text_string_to_metric_families

from llmops import catalog, limits
from llmops.batches.runner import batch_run
from llmops.breakers import breakers_reset
from llmops.catalog import hash_key
from llmops.keys import api_key_update
from llmops.model_limits import model_limits_reset
from llmops.models import ApiKey
from llmops.upstream import InFlight
from monitoring.prometheus import alerts_open_set
from tests.batches.conftest import batch_line, upload
from tests.conftest import add_endpoint, auth, sse_events

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "llmops-dashboard.json"
URL = "/v1/chat/completions"
SIM = {"gen_ai_request_model": "sim-small", "gen_ai_provider_name": "simulated", "endpoint": "chat.completions"}


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {sample.labels[label] for sample in self.samples if sample.name == name}

    def exported_names(self) -> set[str]:
        """Every series name a PromQL query may name: a histogram's _bucket, _count and _sum."""
        names = {sample.name for sample in self.samples}
        for family in self.families:
            if family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
            elif family.type == "counter":
                names.add(family.name + "_total")
            else:
                names.add(family.name)
        return names


async def scrape(http) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def chat(content: str, model: str = "sim-small", **simulate) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "simulate": {"output_tokens": 3, **simulate},
    }


async def limit_key(raw_key: str, **fields) -> None:
    key = await ApiKey.objects.aget(key_hash=hash_key(raw_key))
    await sync_to_async(api_key_update)(key=key, **fields)


@pytest.fixture
async def client_at(asgi_app):
    """HTTP clients of the gateway whose connections come from a given address."""
    clients: list[httpx2.AsyncClient] = []

    def make(address: str) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=asgi_app, client=(address, 40000))
        client = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


# -- what a request leaves -------------------------------------------------------------


async def test_requests_are_counted_with_their_latency_tokens_and_cost(http, api_key, seeded):
    before = await scrape(http)
    cost, prompt_tokens = Decimal(0), 0
    for n in (3, 4):
        response = await http.post(URL, json=chat(f"whole answer {n}", output_tokens=n), headers=auth(api_key))
        assert response.status_code == 200, response.text
        cost += Decimal(response.headers["x-llmops-cost-usd"])
        prompt_tokens += response.json()["usage"]["prompt_tokens"]
    streamed = {**chat("a streamed answer", output_tokens=2), "stream": True, "stream_options": {"include_usage": True}}
    response = await http.post(URL, json=streamed, headers=auth(api_key))
    assert response.status_code == 200
    stream_prompt = json.loads(sse_events(response.text)[-2])["usage"]["prompt_tokens"]
    prompt_tokens += stream_prompt
    cost += (stream_prompt * Decimal("0.10") + 2 * Decimal("0.40")) / 1_000_000  # sim-small's prices
    after = await scrape(http)

    assert delta(before, after, "llmops_requests_total", status="ok", http_status="200", **SIM) == 3
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count", status="ok", **SIM) == 3
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_sum", status="ok", **SIM) > 0
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_bucket", le="+Inf", **SIM) == 3
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_count", **SIM) == 1  # the stream's
    assert delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **SIM) == 3 + 4 + 2
    assert delta(before, after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **SIM) == prompt_tokens
    assert delta(before, after, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **SIM) == 3
    assert delta(before, after, "llmops_cost_usd_total", **SIM) == pytest.approx(float(cost))
    assert after.value("llmops_requests_total", gen_ai_operation_name="chat", gen_ai_response_model="sim-small") >= 3


async def test_a_cache_hit_is_counted_with_what_it_saved_and_no_tokens(http, api_key, seeded):
    before = await scrape(http)
    body = chat("the same question twice")
    first = await http.post(URL, json=body, headers=auth(api_key))
    second = await http.post(URL, json=body, headers=auth(api_key))
    assert (first.headers["x-llmops-cache"], second.headers["x-llmops-cache"]) == ("miss", "hit")
    after = await scrape(http)
    cache = {"gen_ai_request_model": "sim-small", "endpoint": "chat.completions"}
    assert delta(before, after, "llmops_cache_results_total", result="miss", **cache) == 1
    assert delta(before, after, "llmops_cache_results_total", result="hit", **cache) == 1
    saved = delta(before, after, "llmops_cost_saved_usd_total", result="hit", **cache)
    assert saved == pytest.approx(float(first.headers["x-llmops-cost-usd"]))
    assert delta(before, after, "llmops_requests_total", status="ok", **SIM) == 2
    assert delta(before, after, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **SIM) == 1


async def test_errors_are_counted_by_http_status(http, api_key, seeded, settings):
    settings.LLMOPS_RETRIES = 0
    await add_endpoint(name="prom-failing", provider="simulated", fallbacks="")
    catalog.reset()
    before = await scrape(http)
    failed = await http.post(URL, json=chat("fail", model="prom-failing", error_rate=1), headers=auth(api_key))
    assert failed.status_code == 502
    unknown = await http.post(URL, json=chat("who?", model="no-such-model-7f3a"), headers=auth(api_key))
    assert unknown.status_code == 404
    bad = await http.post(URL, json={"model": "sim-small"}, headers=auth(api_key))
    assert bad.status_code == 400
    after = await scrape(http)

    failing = {"gen_ai_request_model": "prom-failing", "gen_ai_provider_name": "simulated"}
    assert delta(before, after, "llmops_requests_total", status="error", http_status="502", **failing) == 1
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count", status="error", **failing) == 1
    # A name that never resolved is the client's text, not a label: it is counted under "".
    assert delta(before, after, "llmops_requests_total", http_status="404", gen_ai_request_model="") == 1
    assert delta(before, after, "llmops_requests_total", http_status="400", gen_ai_request_model="") == 1
    assert "no-such-model-7f3a" not in after.text


async def test_a_keys_rate_limit_refusal_is_counted_by_scope_and_limit(http, api_key, seeded, settings):
    settings.LLMOPS_LIMITS_REDIS_URL = ""
    limits.limits_reset()
    await limit_key(api_key, requests_per_minute=1)
    before = await scrape(http)
    assert (await http.post(URL, json=chat("one"), headers=auth(api_key))).status_code == 200
    assert (await http.post(URL, json=chat("two"), headers=auth(api_key))).status_code == 429
    after = await scrape(http)
    limits.limits_reset()
    refused = {"scope": "key", "limit": "requests", "gen_ai_request_model": "sim-small", "endpoint": "chat.completions"}
    assert delta(before, after, "llmops_rate_limited_total", **refused) == 1
    assert delta(before, after, "llmops_requests_total", status="error", http_status="429", **SIM) == 1
    # Refused before the cache step: one lookup in all, the first request's.
    assert delta(before, after, "llmops_cache_results_total", gen_ai_request_model="sim-small") == 1


async def test_a_models_rate_limit_refusal_is_counted_for_that_model(http, api_key, seeded, settings):
    settings.LLMOPS_LIMITS_REDIS_URL = ""
    settings.LLMOPS_MODEL_RATE_MAX_WAIT_S = 0
    model_limits_reset()
    await add_endpoint(name="prom-limited", provider="simulated", requests_per_minute=1, fallbacks="")
    catalog.reset()
    before = await scrape(http)
    assert (await http.post(URL, json=chat("one", model="prom-limited"), headers=auth(api_key))).status_code == 200
    refused = await http.post(URL, json=chat("two", model="prom-limited"), headers=auth(api_key))
    assert refused.status_code == 429
    after = await scrape(http)
    model_limits_reset()
    throttled = {"scope": "model", "limit": "model_rate", "gen_ai_request_model": "prom-limited"}
    assert delta(before, after, "llmops_rate_limited_total", **throttled) == 1
    assert delta(before, after, "llmops_rate_limited_total", scope="key") == 0


async def test_upstream_calls_in_flight_are_a_gauge(http, api_key, seeded):
    call = asyncio.ensure_future(http.post(URL, json=chat("slow", latency_ms=500), headers=auth(api_key)))
    deadline = time.monotonic() + 5
    while InFlight.by_model.get("sim-small", 0) < 1:
        assert time.monotonic() < deadline and not call.done()
        await asyncio.sleep(0.01)
    during = await scrape(http)
    assert during.value("llmops_upstream_in_flight", gen_ai_request_model="sim-small") == 1
    assert (await call).status_code == 200
    after = await scrape(http)
    assert after.value("llmops_upstream_in_flight", gen_ai_request_model="sim-small") == 0


async def test_a_breaker_is_1_while_open_and_0_once_closed(http, api_key, seeded, settings):
    settings.LLMOPS_RETRIES = 0
    settings.LLMOPS_BREAKER_CONSECUTIVE_FAILURES = 2
    settings.LLMOPS_BREAKER_COOLDOWN_S = 30
    await add_endpoint(name="prom-breaking", provider="simulated", fallbacks="")
    catalog.reset()
    for _ in range(2):
        response = await http.post(URL, json=chat("fail", model="prom-breaking", error_rate=1), headers=auth(api_key))
        assert response.status_code == 502
    skipped = await http.post(URL, json=chat("fail", model="prom-breaking"), headers=auth(api_key))
    assert skipped.status_code == 503
    assert (await http.post(URL, json=chat("fine"), headers=auth(api_key))).status_code == 200
    opened = await scrape(http)
    assert opened.value("llmops_breaker_open", gen_ai_request_model="prom-breaking") == 1
    assert opened.value("llmops_breaker_open", gen_ai_request_model="sim-small") == 0
    breakers_reset()
    closed = await scrape(http)
    assert closed.value("llmops_breaker_open", gen_ai_request_model="prom-breaking") == 0


async def test_batch_items_are_counted_as_they_finish(sdk, http, settings):
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    settings.LLMOPS_BATCH_POLL_S = 0.02
    settings.LLMOPS_BATCH_ITEM_RUNS = 1
    settings.LLMOPS_RETRIES = 0
    await add_endpoint(name="prom-batch-failing", provider="simulated", fallbacks="")
    catalog.reset()
    lines = [
        batch_line("ok-1", "first item"),
        batch_line("ok-2", "second item"),
        batch_line("bad", "third item", model="prom-batch-failing", simulate={"error_rate": 1}),
    ]
    before = await scrape(http)
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert await batch_run(batch.id) == "ended"
    after = await scrape(http)
    assert delta(before, after, "llmops_batch_items_total", status="succeeded") == 2
    assert delta(before, after, "llmops_batch_items_total", status="failed") == 1
    assert delta(before, after, "llmops_requests_total", endpoint="batch") == 3


async def test_open_alerts_are_set_per_metric(http):
    alerts_open_set({"latency_p95": 2, "error_rate": 1})
    first = await scrape(http)
    assert first.value("llmops_alerts_open", metric="latency_p95") == 2
    assert first.value("llmops_alerts_open", metric="error_rate") == 1
    alerts_open_set({"error_rate": 1})
    second = await scrape(http)
    assert second.value("llmops_alerts_open", metric="latency_p95") == 0  # closed: left out
    assert second.value("llmops_alerts_open", metric="error_rate") == 1
    alerts_open_set({})


async def test_nothing_is_observed_when_prometheus_is_off(http, api_key, seeded, settings):
    settings.LLMOPS_PROMETHEUS_ENABLED = False
    before = await scrape(http)
    assert (await http.post(URL, json=chat("unseen"), headers=auth(api_key))).status_code == 200
    alerts_open_set({"unseen_metric": 3})
    after = await scrape(http)
    assert delta(before, after, "llmops_requests_total") == 0
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count") == 0
    assert delta(before, after, "llmops_cache_results_total") == 0
    assert "unseen_metric" not in after.text


# -- who may scrape -----------------------------------------------------------------------


async def test_loopback_is_served_without_a_token(client_at):
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        response = await client_at(address).get("/metrics")
        assert response.status_code == 200, address
        assert "# TYPE llmops_requests_total counter" in response.text


async def test_a_request_a_proxy_passed_on_is_not_served_by_its_loopback_address(client_at, settings):
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        response = await client_at("127.0.0.1").get("/metrics", headers={header: "203.0.113.7"})
        assert response.status_code == 403, header
    settings.LLMOPS_PROMETHEUS_TOKEN = "scrape-token-1234"
    forwarded = {"X-Forwarded-For": "203.0.113.7", **auth("scrape-token-1234")}
    assert (await client_at("127.0.0.1").get("/metrics", headers=forwarded)).status_code == 200


async def test_another_address_without_a_token_gets_a_403_in_the_error_shape(client_at):
    response = await client_at("203.0.113.7").get("/metrics")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_error"
    assert set(error) == {"message", "type", "param", "code"}


async def test_the_right_token_is_served_from_any_address(client_at, settings):
    settings.LLMOPS_PROMETHEUS_TOKEN = "scrape-token-1234"
    response = await client_at("203.0.113.7").get("/metrics", headers=auth("scrape-token-1234"))
    assert response.status_code == 200
    assert "gen_ai_client_operation_duration_seconds" in response.text


async def test_a_wrong_token_gets_a_401_and_no_token_a_403(client_at, settings):
    settings.LLMOPS_PROMETHEUS_TOKEN = "scrape-token-1234"
    outside = client_at("203.0.113.7")
    wrong = await outside.get("/metrics", headers=auth("scrape-token-12345"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert (await outside.get("/metrics")).status_code == 403
    # With no token set, any token is a wrong one.
    settings.LLMOPS_PROMETHEUS_TOKEN = ""
    assert (await outside.get("/metrics", headers=auth("scrape-token-1234"))).status_code == 401


async def test_allowed_networks_are_cidrs_and_replace_loopback(client_at, settings):
    settings.LLMOPS_PROMETHEUS_ALLOWED_IPS = ["10.0.0.0/8", "2001:db8::/32"]
    assert (await client_at("10.20.30.40").get("/metrics")).status_code == 200
    assert (await client_at("::ffff:10.20.30.40").get("/metrics")).status_code == 200
    assert (await client_at("2001:db8::5").get("/metrics")).status_code == 200
    assert (await client_at("11.0.0.1").get("/metrics")).status_code == 403
    assert (await client_at("127.0.0.1").get("/metrics")).status_code == 403


async def test_with_no_allowed_address_only_the_token_is_served(client_at, settings):
    settings.LLMOPS_PROMETHEUS_ALLOWED_IPS = []
    settings.LLMOPS_PROMETHEUS_TOKEN = "scrape-token-1234"
    local = client_at("127.0.0.1")
    assert (await local.get("/metrics")).status_code == 403
    assert (await local.get("/metrics", headers=auth("scrape-token-1234"))).status_code == 200


async def test_only_get_is_allowed(http):
    response = await http.post("/metrics")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def run_python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        DJANGO_SETTINGS_MODULE="llmops.settings",
        LLMOPS_ALLOW_INSECURE_SECRET_KEY="true",
        DATABASE_URL=f"sqlite:///{tmp_path / 'child.sqlite3'}",
        LLMOPS_METRICS_FLUSH_INTERVAL_S="0",
        LLMOPS_BATCH_EXECUTOR="off",
    )
    env.update(extra)
    return env


def test_the_token_may_come_from_a_file(tmp_path):
    secret = tmp_path / "prometheus-token"
    secret.write_text("from-a-file\n")
    done = run_python(
        "import django; django.setup(); from django.conf import settings; print(settings.LLMOPS_PROMETHEUS_TOKEN)",
        child_env(tmp_path, LLMOPS_PROMETHEUS_TOKEN_FILE=str(secret)),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "from-a-file"


def test_with_a_token_no_address_is_trusted_unless_named(tmp_path):
    script = (
        "import django; django.setup(); from django.conf import settings; print(settings.LLMOPS_PROMETHEUS_ALLOWED_IPS)"
    )
    done = run_python(script, child_env(tmp_path, LLMOPS_PROMETHEUS_TOKEN="t0ken-for-tests"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    named = run_python(
        script,
        child_env(tmp_path, LLMOPS_PROMETHEUS_TOKEN="t0ken-for-tests", LLMOPS_PROMETHEUS_ALLOWED_IPS="10.0.0.0/8"),
    )
    assert named.stdout.strip() == "['10.0.0.0/8']"


def test_a_bad_allowed_address_stops_start_up(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=child_env(tmp_path, LLMOPS_PROMETHEUS_ALLOWED_IPS="127.0.0.1,not-an-address"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "LLMOPS_PROMETHEUS_ALLOWED_IPS" in done.stderr and "not-an-address" in done.stderr


# -- bounded labels --------------------------------------------------------------------------

OBSERVE = """
    import sys
    import django
    django.setup()
    from django.utils import timezone
    from llmops.usage import Usage
    from monitoring import recorder
    from monitoring.outcomes import RequestOutcome, request_observed

    def observe(n, model, status="ok", http_status=200):
        request_observed(
            RequestOutcome(
                request_id=f"r{n}", created_at=timezone.now(), api_key_id=None, endpoint="chat.completions",
                model=model, status=status, http_status=http_status, latency_ms=25.0,
                answered_by=model if status == "ok" else "", provider="simulated",
                usage=Usage(input_tokens=10, output_tokens=5 if status == "ok" else 0),
            )
        )
"""


def test_past_200_models_the_rest_are_counted_as_other(tmp_path):
    code = (
        OBSERVE
        + """
    from monitoring.prometheus import prometheus_exposition
    for n in range(205):
        observe(n, f"model-{n}")
    recorder.METRICS.buffer.clear()
    sys.stdout.write(prometheus_exposition().decode())
    """
    )
    done = run_python(code, child_env(tmp_path))
    assert done.returncode == 0, done.stderr
    scraped = Scrape(done.stdout)
    models = scraped.label_values("llmops_requests_total", "gen_ai_request_model")
    assert len(models) == 201 and "other" in models
    assert scraped.value("llmops_requests_total", gen_ai_request_model="other") == 5
    assert scraped.value("llmops_requests_total") == 205


# -- several processes ------------------------------------------------------------------------

RECORDER = (
    OBSERVE
    + """
    import os
    from llmops.upstream import InFlight

    count, status, http_status = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for n in range(count):
        observe(n, "sim-small", status, http_status)
    recorder.METRICS.buffer.clear()  # the rows are not what this test reads
    InFlight.enter("sim-small")  # and left open: one upstream call in flight while it lives
    print("recorded", flush=True)
    sys.stdin.readline()
    if sys.argv[4:] == ["pool-process"]:
        # As a Celery pool process ends: the signal, then os._exit (no atexit hooks).
        from celery.signals import worker_process_shutdown
        import llmops.tasks  # noqa: F401  (connects the handler)
        worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        os._exit(0)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recorder_start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RECORDER), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def recorder_recorded(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "recorded", "the recorder failed (see its stderr above)"


def recorder_stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()
    assert process.wait(timeout=30) == 0


def metrics_served(url: str, server: subprocess.Popen[bytes]) -> Scrape:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx2.get(f"{url}/metrics", timeout=10)
            assert response.status_code == 200, response.text
            return Scrape(response.text)
        except httpx2.ConnectError:
            assert server.poll() is None, "daphne exited"
            assert time.monotonic() < deadline, "daphne did not start"
            time.sleep(0.1)


def test_a_scrape_of_one_process_sums_every_processs_figures(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = child_env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(directory))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Started side by side: each takes a second or two to import the gateway.
    answering = recorder_start(env, "3", "ok", "200")
    pool_process = recorder_start(env, "2", "error", "502", "pool-process")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "llmops.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        recorder_recorded(answering)
        recorder_recorded(pool_process)
        both = metrics_served(url, server)
        assert both.value("llmops_requests_total", status="ok", http_status="200", **SIM) == 3
        assert both.value("llmops_requests_total", status="error", http_status="502", **SIM) == 2
        assert both.value("gen_ai_client_operation_duration_seconds_count", **SIM) == 5
        assert both.value("gen_ai_client_operation_duration_seconds_sum", **SIM) == pytest.approx(5 * 0.025)
        assert both.value("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **SIM) == 5 * 10
        assert both.value("gen_ai_client_token_usage_sum", gen_ai_token_type="output", **SIM) == 3 * 5
        assert both.value("llmops_upstream_in_flight", gen_ai_request_model="sim-small") == 2  # one each

        recorder_stop(pool_process)
        # It is marked dead as it ends: what it counted stays, its gauges are gone.
        assert (directory / f"counter_{pool_process.pid}.db").exists()
        assert not list(directory.glob(f"gauge_live*_{pool_process.pid}.db"))
        one_left = metrics_served(url, server)
        assert one_left.value("llmops_requests_total", **SIM) == 5
        assert one_left.value("llmops_upstream_in_flight", gen_ai_request_model="sim-small") == 1

        recorder_stop(answering)  # a normal exit marks it dead too (atexit)
        none_left = metrics_served(url, server)
        assert none_left.value("llmops_requests_total", **SIM) == 5
        assert none_left.value("llmops_upstream_in_flight", gen_ai_request_model="sim-small") == 0
    finally:
        for process in (answering, pool_process, server):
            if process.poll() is None:
                process.kill()
                process.wait()


# -- the Grafana dashboard --------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function, or a keyword
        names.add(match.group())
    return names


def test_promql_metric_names_reads_names_only():
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{x="y"}[$__rate_interval]))) '
        "/ ignoring (result) group_left sum(b_total) * 3600"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total"}


async def test_the_grafana_dashboard_queries_only_metrics_that_metrics_exports(http, api_key, seeded):
    assert (await http.post(URL, json=chat("for the dashboard"), headers=auth(api_key))).status_code == 200
    exported = (await scrape(http)).exported_names()
    dashboard = json.loads(DASHBOARD.read_text())

    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model_query = variables["model"]["query"]["query"]
    assert re.fullmatch(r"label_values\((\w+), gen_ai_request_model\)", model_query)
    assert model_query.split("(")[1].split(",")[0] in exported

    titles = []
    ids = set()
    for panel in dashboard["panels"]:
        titles.append(panel["title"])
        ids.add(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, target["expr"]
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)} are not exported"
    assert len(ids) == len(dashboard["panels"])
    wanted = (
        "request rate",
        "error rate",
        "latency",
        "time to first token",
        "tokens",
        "cost",
        "cache hit rate",
        "in flight",
        "breakers",
        "rate-limited",
        "batch items",
        "alerts",
    )
    for word in wanted:
        assert any(word in title.lower() for title in titles), word
    latency = next(panel for panel in dashboard["panels"] if panel["title"].lower().startswith("latency"))
    exprs = " ".join(target["expr"] for target in latency["targets"])
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
