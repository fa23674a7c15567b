"""The metrics API: a window's figures from the rollups, for staff and for API keys (each
its own traffic), with clear 4xx answers to bad input."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.utils import timezone

from llmops.auth import api_key_create
from monitoring import recorder
from monitoring.models import QueryMetric
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("staff", password="pw-for-tests-only", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def gateway(asgi_app):
    import httpx2

    def call(key: str, url: str = CHAT, body: dict | None = None, params: dict | None = None):
        async def go():
            async with httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=asgi_app), base_url="http://testserver"
            ) as http:
                if body is None:
                    return await http.get(url, params=params, headers=auth(key))
                return await http.post(url, json=body, headers=auth(key))

        return async_to_sync(go)()

    return call


def chat(model: str, text: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_a_key_sees_the_figures_of_its_own_requests(seeded, api_key, other_api_key, gateway):
    answers = [gateway(api_key, body=chat("sim-small", f"question {n}")) for n in range(3)]
    gateway(api_key, body=chat("sim-small", "question 0"))  # a cache hit
    gateway(api_key, body=chat("no-such-model", "hello"))
    gateway(other_api_key, body=chat("sim-small", "someone else"))
    recorder.metrics_flush()
    summary = gateway(api_key, "/api/metrics/summary", params={"window": "15m"}).json()
    assert summary["object"] == "metrics.summary"
    rows = QueryMetric.objects.filter(api_key__name="tests")
    assert summary["requests"] == rows.count() == 5
    assert summary["errors"] == rows.filter(status="error").count() == 1
    assert summary["errors_by_type"] == {rows.get(status="error").error_type: 1}
    assert summary["cache"]["hits"] == 1 and summary["cache"]["misses"] == 3
    assert Decimal(summary["cost_usd"]) == sum(Decimal(a.headers["x-llmops-cost-usd"]) for a in answers)
    assert summary["tokens"]["input"] == sum(r.input_tokens for r in rows)
    assert summary["latency_ms"]["p50"] is not None
    models = gateway(api_key, "/api/metrics/models", params={"window": "15m"}).json()
    # A name nothing resolved is anyone's text: such requests share one row.
    assert {m["model"]: m["requests"] for m in models["data"]} == {"sim-small": 4, "(unknown)": 1}
    series = gateway(api_key, "/api/metrics/timeseries", params={"window": "15m"}).json()
    assert series["step_s"] == 60 and len(series["points"]) == 15
    assert sum(p["requests"] for p in series["points"]) == 5


def test_staff_see_everyones_traffic_and_can_narrow_it(seeded, api_key, other_api_key, gateway, staff):
    gateway(api_key, body=chat("sim-small", "one"))
    gateway(other_api_key, body=chat("sim-small", "two"))
    gateway(other_api_key, body=chat("sim-small", "three", stream=True))
    recorder.metrics_flush()
    everyone = staff.get("/api/metrics/summary", {"window": "1h"}).json()
    assert everyone["requests"] == 3
    assert everyone["ttft_ms"]["streams"] == 1 and everyone["ttft_ms"]["p50"] is not None
    other_id = QueryMetric.objects.filter(api_key__name="other tenant").first().api_key_id
    theirs = staff.get("/api/metrics/summary", {"window": "1h", "api_key": other_id}).json()
    assert theirs["requests"] == 2 and theirs["filters"] == {"api_key": other_id}
    assert staff.get("/api/metrics/summary", {"window": "1h", "model": "sim-large"}).json()["requests"] == 0
    assert staff.get("/api/metrics/summary", {"window": "1h", "provider": "simulated"}).json()["requests"] == 3


def test_an_empty_window_has_zeros_and_no_percentiles(staff):
    body = staff.get("/api/metrics/summary", {"window": "24h"}).json()
    assert body["requests"] == 0 and body["error_rate"] is None
    assert body["latency_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert body["cache"]["hit_rate"] == 0.0
    assert staff.get("/api/metrics/models", {"window": "24h"}).json()["data"] == []


def test_start_and_end_choose_a_window_in_the_past(staff):
    long_ago = timezone.now() - timedelta(days=3)
    recorder.metric_record(
        request_id="old", created_at=long_ago, model="sim-small", status="ok", latency_ms=120.0, provider="simulated"
    )
    recorder.metrics_flush()
    start = (long_ago - timedelta(hours=1)).isoformat()
    end = (long_ago + timedelta(hours=1)).isoformat()
    assert staff.get("/api/metrics/summary", {"start": start, "end": end}).json()["requests"] == 1
    assert staff.get("/api/metrics/summary", {"window": "24h"}).json()["requests"] == 0
    hourly = staff.get("/api/metrics/timeseries", {"start": start, "end": end, "step": "1h"}).json()
    assert hourly["step_s"] == 3600 and sum(p["requests"] for p in hourly["points"]) == 1


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"window": "soon"}, "window", None),
        ({"window": "0m"}, "window", None),
        ({"colour": "blue"}, "colour", "unknown_parameter"),
        ({"start": "yesterday"}, "start", None),
        ({"start": "2026-11-30T10:00:00Z", "end": "2026-11-30T09:00:00Z"}, "end", None),
        ({"window": "15m", "start": "2026-11-30T10:00:00Z"}, "window", None),
        ({"window": "90d"}, "window", "window_beyond_retention"),
        ({"api_key": "me"}, "api_key", None),
        ({"model": "a", "route": "x" * 101}, "route", None),
    ],
)
def test_bad_input_is_a_clear_400(staff, params, param, code):
    response = staff.get("/api/metrics/summary", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if code:
        assert error["code"] == code


def test_a_repeated_parameter_is_refused(staff):
    response = staff.get("/api/metrics/summary?window=15m&window=24h")
    assert response.status_code == 400 and response.json()["error"]["param"] == "window"


def test_a_timeseries_of_too_many_points_is_refused(staff):
    response = staff.get("/api/metrics/timeseries", {"window": "7d", "step": "1m"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "step"


def test_a_key_asking_for_another_keys_traffic_is_refused(seeded, api_key, gateway):
    other, _ = api_key_create(name="someone")
    response = gateway(api_key, "/api/metrics/summary", params={"api_key": other.id})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_your_key"


def test_the_metrics_need_a_key_or_staff(client):
    assert client.get("/api/metrics/summary").status_code in (401, 403)
    visitor = get_user_model().objects.create_user("visitor", password="pw-for-tests-only")
    client.force_login(visitor)
    response = client.get("/api/metrics/models")
    assert response.status_code == 403 and "error" in response.json()


def test_the_report_command_prints_the_summary_and_each_model():
    from io import StringIO

    from django.core.management import call_command

    now = timezone.now()
    for n, (model, latency) in enumerate([("sim-small", 100.0), ("sim-small", 200.0), ("sim-large", 400.0)]):
        recorder.metric_record(
            request_id=f"r{n}",
            created_at=now,
            model=model,
            provider="simulated",
            status="ok",
            latency_ms=latency,
            cost_usd=Decimal("0.002"),
            cache_status="hit" if n == 0 else "miss",
            cost_saved_usd=Decimal("0.001") if n == 0 else Decimal(0),
        )
    recorder.metrics_flush()
    out = StringIO()
    call_command("report", "--window", "1h", stdout=out)
    text = out.getvalue()
    assert "Total queries            3" in text
    assert "Total cost               $0.006000" in text
    assert "Average cost per query   $0.002000" in text
    assert "Cache hit rate           33.3%" in text
    assert "Saved by the cache       $0.001000" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith("sim-")}
    assert lines["sim-small"][1] == "2" and lines["sim-large"][1] == "1"
    only = StringIO()
    call_command("report", "--window", "1h", "--model", "sim-large", stdout=only)
    assert "Total queries            1" in only.getvalue() and "sim-small" not in only.getvalue()
    empty = StringIO()
    call_command("report", "--window", "15m", "--model", "nothing", stdout=empty)
    assert "No requests in this window." in empty.getvalue()


def test_the_report_command_refuses_a_bad_window():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="window must be like"):
        call_command("report", "--window", "yesterday")
