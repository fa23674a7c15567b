"""The admin's Pareto page in a real browser: headless Chromium (Debian's package) signs in
as staff and sees a point per option, the frontier marked, with the API's figures."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.test_live_server import CHROMIUM, CHROMIUM_FLAGS, Gateway, base_env, manage

pytestmark = [
    pytest.mark.live_server,
    # The page is served by its own gateway on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]

PAGE = "/admin/routing/route/pareto/?route=support&window=24h"

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("needs Chromium (apt-get install chromium; make test installs it as root)", allow_module_level=True)

# The catalog and routes, thirty requests each for the support route's two models (as the
# recorder would have written them) and an evaluation for their quality: every figure
# measured. One shell, not a command each: every manage.py process takes seconds to start.
SEED = """
from datetime import timedelta
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.utils import timezone
from llmops.seed import catalog_seed
from monitoring.models import QueryMetric
from routing.models import Evaluation

catalog_seed()
now = timezone.now()
QueryMetric.objects.bulk_create(
    QueryMetric(request_id=f"{option}-{i}", created_at=now - timedelta(seconds=i), model=option, option=option,
                route="support", status="ok", cache_status="miss", latency_ms=latency * (0.5 + i / 30),
                cost_usd=Decimal(cost))
    for option, latency, cost in (("sim-small", 140.0, "0.000012"), ("sim-large", 1400.0, "0.00156"))
    for i in range(30)
)
accuracy = {"sim-small": 0.71, "sim-large": 0.93}
Evaluation.objects.create(route_name="support", dataset="browser.tsv", rows=100,
                          results=[{"option": option, "accuracy": value} for option, value in accuracy.items()])
get_user_model().objects.create_superuser("staff", "staff@example.com", "browser-test-pw")
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("routing-browser"))
    manage(env, "migrate", "--noinput")
    manage(env, "shell", "-c", SEED)
    server = Gateway(env)
    yield server
    server.stop()


def test_a_staff_member_sees_the_routes_options_on_the_pareto_chart(gateway):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "Chromium is not installed"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{gateway.url}{PAGE}")
            # Not signed in: the admin's login page first, then back to the chart.
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            expect(page.locator("svg.pareto-chart")).to_be_visible(timeout=10_000)
            api = page.request.get(f"{gateway.url}/api/routing/pareto?route=support&window=24h")
            assert api.ok, api.text()
            body = api.json()
            options = {o["option"]: o for o in body["options"]}
            assert set(options) == {"sim-small", "sim-large"}

            circles = page.locator("svg.pareto-chart circle.option")
            expect(circles).to_have_count(len(options))
            for name, figures in options.items():
                assert figures["sources"]["latency"].startswith("measured")
                row = page.locator(f'#pareto-table tr[data-option="{name}"]')
                expect(row.locator("td.p95")).to_have_text(f"{figures['p95_ms']:.1f}")
                expect(row.locator("td.cost")).to_have_text(f"{figures['cost_per_1k']:.6f}")
                expect(row.locator("td.quality")).to_have_text(f"{figures['quality']:.4f}")
                tooltip = page.locator(f'svg.pareto-chart circle[data-option="{name}"] title')
                expect(tooltip).to_contain_text(f"p95 {figures['p95_ms']:,.1f} ms")
            frontier = page.locator("svg.pareto-chart circle.option.pareto")
            assert sorted(frontier.evaluate_all("els => els.map(e => e.dataset.option)")) == sorted(body["frontier"])
            assert body["frontier"], "cheap and weak against dear and good: both are optimal"
            expect(page.locator("svg.pareto-chart polyline.frontier")).to_have_count(1)
        finally:
            browser.close()
