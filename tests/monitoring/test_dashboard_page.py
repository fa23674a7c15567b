from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django.utils.html import escape

from llmops.auth import api_key_create
from llmops.dashboard import shown
from llmops.seed import catalog_seed
from monitoring import recorder
from monitoring.alerts import alerts_open
from monitoring.models import Alert, AlertMetric

pytestmark = pytest.mark.django_db(transaction=True)


def request_row(i: int, **fields) -> dict:
    row = {
        "request_id": f"dash-{i}",
        "created_at": timezone.now() - timedelta(seconds=20),
        "model": "sim-small",
        "provider": "simulated",
        "option": "sim-small",
        "status": "ok",
        "latency_ms": 100.0 + 10 * i,
        "input_tokens": 12,
        "output_tokens": 8,
        "cost_usd": Decimal("0.0000123"),
        "cache_status": "miss",
    }
    row.update(fields)
    return row


def record(rows: list[dict]) -> None:
    for row in rows:
        recorder.metric_record(**row)
    recorder.metrics_flush()


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def traffic():
    """Five requests of sim-small (one streamed, one a cache hit), two failed ones of
    sim-large through the support route: recorded as the gateway records them."""
    rows = [request_row(i) for i in range(5)]
    rows[0].update(stream=True, ttft_ms=42.0)
    rows[1].update(cache_status="hit", cost_usd=Decimal(0), cost_saved_usd=Decimal("0.0000123"))
    for i in (5, 6):
        rows.append(
            request_row(
                i, model="sim-large", route="support", status="error", error_type="rate_limited", http_status=429
            )
        )
    record(rows)
    return rows


def tile(html: str, path: str) -> str:
    found = re.search(rf'<dd data-figure="{re.escape(path)}" data-format="\w+">([^<]*)</dd>', html)
    assert found, f"no tile for {path}"
    return found.group(1)


def test_staff_see_the_figures_of_the_recorded_requests(staff, traffic):
    response = staff.get("/dashboard/?window=15m")
    assert response.status_code == 200
    html = response.content.decode()
    api = staff.get("/api/metrics/summary?window=15m").json()
    assert api["requests"] == 7 and api["errors"] == 2
    assert tile(html, "requests") == "7"
    assert tile(html, "errors") == "2"
    assert tile(html, "error_rate") == shown("percent", api["error_rate"]) == "28.57%"
    assert tile(html, "latency_ms.p95") == shown("ms", api["latency_ms"]["p95"])
    assert tile(html, "ttft_ms.p50") == shown("ms", api["ttft_ms"]["p50"])
    assert tile(html, "tokens.input") == "84"
    assert tile(html, "cost_usd") == shown("usd", api["cost_usd"]) == "$0.000074"
    assert tile(html, "cache.hit_rate") == "20.00%"  # one hit among five lookups
    assert tile(html, "cache.saved_usd") == "$0.000012"
    assert tile(html, "quality.mean") == "—"  # no checks recorded: a dash, never NaN
    assert '<li data-type="rate_limited"><span class="type">rate_limited</span><span class="count">2</span>' in html
    assert 'id="empty" hidden' in html
    assert "NaN" not in html

    rows = {m["model"]: m for m in staff.get("/api/metrics/models?window=15m").json()["data"]}
    assert set(rows) == {"sim-small", "sim-large"}
    assert '<tr data-model="sim-small"><td class="model">sim-small</td><td data-figure="requests">5</td>' in html
    assert f'<td data-figure="latency_ms.p95">{shown("ms", rows["sim-small"]["latency_ms"]["p95"])}</td>' in html

    # The script's first drawing reads the same bodies the API answers.
    initial = json.loads(re.search(r'<script id="initial" type="application/json">(.*?)</script>', html, re.S)[1])
    assert {k: v for k, v in initial["summary"].items() if k != "window"} == {
        k: v for k, v in api.items() if k != "window"
    }
    series = staff.get("/api/metrics/timeseries?window=15m").json()
    assert initial["timeseries"]["step_s"] == series["step_s"] == 60
    assert sum(p["requests"] for p in initial["timeseries"]["points"]) == 7
    assert initial["models"]["data"] == staff.get("/api/metrics/models?window=15m").json()["data"]


def test_people_who_are_not_staff_are_sent_to_the_admin_login(client, django_user_model, traffic):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/") and "next=/dashboard/" in response.url
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response.url.startswith("/admin/login/")


def test_an_empty_window_shows_the_empty_state(staff):
    html = staff.get("/dashboard/?window=15m").content.decode()
    assert re.search(r'<div id="empty">No requests in this window', html)
    assert tile(html, "requests") == "0"
    assert tile(html, "latency_ms.p95") == "—"
    assert tile(html, "error_rate") == "—"
    assert tile(html, "cost_per_1k_requests_usd") == "—"
    assert '<td class="empty" colspan="14">No requests in this window.</td>' in html
    assert "NaN" not in html


def test_requests_outside_the_window_are_not_counted(staff, traffic):
    record([request_row(10, request_id="old", created_at=timezone.now() - timedelta(hours=3))])
    assert tile(staff.get("/dashboard/?window=1h").content.decode(), "requests") == "7"
    assert tile(staff.get("/dashboard/?window=24h").content.decode(), "requests") == "8"


def test_filters_narrow_the_figures_and_stay_in_the_query(staff, traffic):
    html = staff.get("/dashboard/?window=15m&model=sim-large&route=&prompt=").content.decode()
    assert tile(html, "requests") == "2"
    assert tile(html, "error_rate") == "100.00%"
    assert 'data-query="window=15m&amp;model=sim-large"' in html  # the blanks a form sends are dropped
    assert '<option value="sim-large" selected>sim-large</option>' in html
    assert '<option value="sim-small">sim-small</option>' in html  # the choices are what was recorded
    assert '<option value="support">support</option>' in html
    assert '<tr data-model="sim-small">' not in html

    html = staff.get("/dashboard/?window=15m&route=support").content.decode()
    assert tile(html, "requests") == "2"


def test_an_api_key_filter_offers_every_key_and_narrows_to_its_requests(staff):
    key, _ = api_key_create(name="nightly-eval")
    api_key_create(name="quiet")
    record([request_row(1, api_key_id=key.id), request_row(2)])
    html = staff.get(f"/dashboard/?window=15m&api_key={key.id}").content.decode()
    assert tile(html, "requests") == "1"
    assert f'<option value="{key.id}" selected>nightly-eval ({key.prefix}…)</option>' in html
    assert ">quiet (" in html


def test_a_custom_window_reads_from_start_to_end(staff, traffic):
    record([request_row(10, request_id="earlier", created_at=timezone.now() - timedelta(hours=3))])
    start = (timezone.now() - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = staff.get(f"/dashboard/?window=custom&start={start}&end={end}")
    assert response.status_code == 200
    html = response.content.decode()
    assert tile(html, "requests") == "1"
    assert '<option value="custom" selected>' in html
    assert '<span id="custom">' in html  # the start and end fields are shown
    assert f'data-query="start={start.replace(":", "%3A")}&amp;end={end.replace(":", "%3A")}"' in html


@pytest.mark.parametrize(
    ("query", "api_query"),
    [
        ("window=5x", "window=5x"),
        ("window=60d", "window=60d"),
        ("api_key=abc", "window=1h&api_key=abc"),
        ("start=yesterday", "start=yesterday"),
        ("start=2026-12-01T10:00:00Z&end=2026-12-01T09:00:00Z", "start=2026-12-01T10:00:00Z&end=2026-12-01T09:00:00Z"),
    ],
)
def test_a_bad_window_or_filter_shows_the_apis_message(staff, query, api_query):
    answer = staff.get(f"/api/metrics/summary?{api_query}")
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    response = staff.get(f"/dashboard/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    assert re.search(r'<p id="error" class="error" role="alert">([^<]*)</p>', html)[1] == escape(message)
    assert 'id="board"' not in html  # no figures, and no script polling for them


def test_a_custom_window_without_a_start_says_so(staff):
    response = staff.get("/dashboard/?window=custom&start=&end=")
    assert response.status_code == 400
    assert "A custom window needs a start" in response.content.decode()


def test_the_pareto_chart_of_the_chosen_route_is_drawn(staff):
    catalog_seed()
    html = staff.get("/dashboard/?window=24h").content.decode()
    assert '<option value="sentiment" selected>sentiment</option>' in html  # the first route by name
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="pareto-chart"') == 1
    html = staff.get("/dashboard/?window=24h&pareto=support").content.decode()
    assert 'data-option="sim-small"' in html and 'data-option="sim-large"' in html
    assert 'data-url="/dashboard/?part=pareto&amp;pareto=support&amp;window=24h"' in html

    part = staff.get("/dashboard/?part=pareto&pareto=support&window=24h")
    assert part.status_code == 200 and part["Content-Type"].startswith("image/svg+xml")
    assert part.content.decode().startswith('<svg xmlns="http://www.w3.org/2000/svg" class="pareto-chart"')
    missing = staff.get("/dashboard/?part=pareto&pareto=nowhere")
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "The route 'nowhere' does not exist or is not enabled."
    html = staff.get("/dashboard/?pareto=nowhere").content.decode()
    said = "The route &#x27;nowhere&#x27; does not exist or is not enabled."
    assert f'<p class="error" id="pareto-error">{said}</p>' in html


def test_the_open_alerts_are_listed(staff):
    assert '<li class="none">No open alerts.</li>' in staff.get("/dashboard/").content.decode()
    now = timezone.now()
    figures = {"effect": 80.0, "p_value": 0.001, "recent_samples": 40, "baseline_samples": 900}
    alert = Alert.objects.create(
        metric=AlertMetric.LATENCY_P95,
        model="sim-small",
        opened_at=now,
        last_checked_at=now,
        baseline_value=100.0,
        recent_value=180.0,
        **figures,
    )
    Alert.objects.create(
        metric=AlertMetric.ERROR_RATE,
        model="sim-large",
        status=Alert.Status.RESOLVED,
        opened_at=now,
        last_checked_at=now,
        resolved_at=now,
        **figures,
    )
    html = staff.get("/dashboard/").content.decode()
    (shown_alert,) = alerts_open()
    assert f'<li class="alert" data-alert="{alert.id}" data-metric="latency_p95">' in html
    assert f'<span class="message">{escape(shown_alert["message"])}</span>' in html
    assert 'data-metric="error_rate"' not in html  # resolved
    assert '<li class="none">No open alerts.</li>' not in html
    # What the page's script reads again as it polls.
    assert staff.get("/dashboard/?part=alerts").json() == {"object": "list", "data": [shown_alert]}


def test_the_admin_links_staff_to_the_dashboard(staff):
    page = staff.get("/admin/").content.decode()
    assert 'href="/dashboard/"' in page and 'href="/batches/"' in page
