"""The staff dashboard in a real browser: headless Chromium (Debian's package) signs in as
staff and opens /dashboard/; an app's requests go through the gateway with the official
openai SDK; the page shows the metrics API's figures and charts, and draws them again as more
requests arrive, without reloading; it stops asking while the tab is hidden."""

from __future__ import annotations

import os
import time

import openai
import pytest
from django.conf import settings

from llmops.dashboard import shown
from tests.test_live_server import CHROMIUM, CHROMIUM_FLAGS, Gateway, base_env, manage

pytestmark = [
    pytest.mark.live_server,
    # The page is served by its own gateway on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]

QUERY = "window=15m"

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("needs Chromium (apt-get install chromium; make test installs it as root)", allow_module_level=True)

# One shell, not a command each: every manage.py process takes seconds to start.
SEED = """
from django.contrib.auth import get_user_model
from llmops.auth import api_key_create
from llmops.seed import catalog_seed

catalog_seed()
get_user_model().objects.create_superuser("staff", "staff@example.com", "browser-test-pw")
print(api_key_create(name="web-app")[1])
"""

# A regression as the alert checks open one, written beside the running server.
ALERT = """
from django.utils import timezone
from monitoring.models import Alert

now = timezone.now()
Alert.objects.create(metric="latency_p95", model="sim-small", opened_at=now, last_checked_at=now, baseline_value=60.0,
                     recent_value=420.0, effect=600.0, p_value=0.0001, recent_samples=9, baseline_samples=7)
"""

TILES = (
    ("requests", "count"),
    ("errors", "count"),
    ("error_rate", "percent"),
    ("latency_ms.p50", "ms"),
    ("latency_ms.p95", "ms"),
    ("latency_ms.p99", "ms"),
    ("ttft_ms.p95", "ms"),
    ("tokens.input", "count"),
    ("tokens.output", "count"),
    ("cost_usd", "usd"),
    ("cost_per_1k_requests_usd", "usd"),
    ("cache.hit_rate", "percent"),
    ("cache.exact_hit_rate", "percent"),
    ("cache.saved_usd", "usd"),
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("dashboard-browser"))
    env["LLMOPS_RETRIES"] = "0"  # the failing requests fail at once
    env["LLMOPS_ALERTS_CHECK_INTERVAL_S"] = "3600"  # the alert written below stays as written
    manage(env, "migrate", "--noinput")
    key = manage(env, "shell", "-c", SEED).strip().splitlines()[-1]
    server = Gateway(env)
    yield server, key
    server.stop()


def traffic(client: openai.OpenAI, tag: str, *, count: int, latency_ms: float) -> None:
    """`count` different questions (one streamed), one asked twice (an exact cache hit), and
    one whose upstream fails."""
    for i in [*range(count), 0]:
        client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": f"{tag} question {i}?"}],
            max_tokens=8,
            extra_body={"simulate": {"latency_ms": latency_ms + 20 * i}},
        )
    list(
        client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": f"{tag} streamed?"}],
            stream=True,
            extra_body={"simulate": {"ttft_ms": 30, "latency_ms": latency_ms}},
        )
    )
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": f"{tag} fails"}],
            extra_body={"simulate": {"error_rate": 1}},
        )


def api(page, server, name: str) -> dict:
    answer = page.request.get(f"{server.url}/api/metrics/{name}?{QUERY}")
    assert answer.ok, answer.text()
    return answer.json()


def api_settled(page, server, requests: int) -> dict:
    """The summary once the gateway's metric writer has written them all (about a second)."""
    deadline = time.monotonic() + 15
    while (summary := api(page, server, "summary"))["requests"] < requests:
        assert time.monotonic() < deadline, summary
        time.sleep(0.2)
    return summary


def check_figures(page, server, summary: dict) -> None:
    from playwright.sync_api import expect

    for path, fmt in TILES:
        value = summary
        for name in path.split("."):
            value = value[name]
        expect(page.locator(f'#summary dd[data-figure="{path}"]')).to_have_text(shown(fmt, value))
    for kind, count in summary["errors_by_type"].items():
        expect(page.locator(f'#errors-by-type li[data-type="{kind}"] .count')).to_have_text(str(count))
    series = api(page, server, "timeseries")
    busy = [p for p in series["points"] if p["requests"]]
    rate = page.locator('figure[data-chart="request-rate"]')
    expect(rate.locator("figcaption")).to_have_text("Request rate (requests per second)")
    expect(rate.locator("circle.point")).to_have_count(len(busy))
    drawn = rate.locator("circle.point").evaluate_all("els => els.map(e => [e.dataset.start, Number(e.dataset.value)])")
    assert drawn == [[p["start"], p["requests_per_s"]] for p in busy]
    latency = page.locator('figure[data-chart="latency-p95"] circle.point')
    drawn = latency.evaluate_all("els => els.map(e => Number(e.dataset.value))")
    assert drawn == [p["latency_ms"]["p95"] for p in series["points"] if p["latency_ms"]["p95"] is not None]
    models = api(page, server, "models")["data"]
    for row in models:
        cells = page.locator(f'#model-rows tr[data-model="{row["model"]}"]')
        expect(cells.locator('td[data-figure="requests"]')).to_have_text(shown("count", row["requests"]))
        expect(cells.locator('td[data-figure="latency_ms.p95"]')).to_have_text(shown("ms", row["latency_ms"]["p95"]))


def test_a_staff_member_watches_the_dashboard_follow_the_gateways_traffic(gateway):
    from playwright.sync_api import expect, sync_playwright

    server, key = gateway
    assert CHROMIUM, "Chromium is not installed"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/dashboard/?{QUERY}")
            # Not signed in: the admin's login page first, then back to the dashboard.
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            expect(page.locator("#status")).to_have_text("live", timeout=10_000)
            expect(page.locator("#empty")).to_be_visible()
            expect(page.locator('figure[data-chart="request-rate"] text.empty')).to_have_text(
                "No requests in this window"
            )
            expect(page.locator("figure.chart")).to_have_count(7)
            expect(page.locator("svg.pareto-chart")).to_be_visible()

            traffic(client, "first", count=4, latency_ms=40)
            first = api_settled(page, server, 7)
            assert (first["requests"], first["errors"], first["cache"]["hits"]) == (7, 1, 1)
            page.reload()
            expect(page.locator("#empty")).to_be_hidden()
            check_figures(page, server, first)
            error = page.locator("#error")
            expect(error).to_be_hidden()

            # More traffic: the same page draws it, without reloading.
            page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
            traffic(client, "second", count=6, latency_ms=400)
            second = api_settled(page, server, 16)
            expect(page.locator('#summary dd[data-figure="requests"]')).to_have_text("16", timeout=15_000)
            check_figures(page, server, second)
            assert second["latency_ms"]["p99"] > first["latency_ms"]["p99"]
            assert page.evaluate("window.sameDocument") is True
            expect(page.locator("#status")).to_contain_text("live · updated")

            # An alert opened meanwhile shows up too.
            expect(page.locator("#alerts li.none")).to_have_text("No open alerts.")
            manage(server.env, "shell", "-c", ALERT)
            alert = page.locator('#alerts li.alert[data-metric="latency_p95"]')
            expect(alert.locator(".message")).to_contain_text("p95 latency of sim-small: 420.0 ms", timeout=15_000)
            assert page.evaluate("window.sameDocument") is True

            # A hidden tab asks for nothing; shown again, it asks at once.
            page.evaluate("""() => {
              Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
              document.dispatchEvent(new Event("visibilitychange"));
            }""")
            expect(page.locator("#status")).to_have_text("paused while the tab is hidden")
            polls = page.evaluate("document.getElementById('board').dataset.polls")
            page.wait_for_timeout(6_000)
            assert page.evaluate("document.getElementById('board').dataset.polls") == polls
            page.evaluate("""() => {
              Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
              document.dispatchEvent(new Event("visibilitychange"));
            }""")
            expect(page.locator("#board")).not_to_have_attribute("data-polls", polls, timeout=3_000)

            # A bad window: the API's own message, on the page.
            message = page.request.get(f"{server.url}/api/metrics/summary?window=5x").json()["error"]["message"]
            page.select_option("#window", "custom")
            page.fill("#start", "5x")
            page.click("#controls button[type=submit]")
            expect(page.locator("#error")).to_have_text(
                page.request.get(f"{server.url}/api/metrics/summary?start=5x").json()["error"]["message"]
            )
            page.goto(f"{server.url}/dashboard/?window=5x")
            expect(page.locator("#error")).to_have_text(message)
        finally:
            browser.close()
