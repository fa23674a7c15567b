from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


async def test_health_reports_each_part(http):
    response = await http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["cache"]["ok"] is True
    assert body["broker"] == {"ok": True, "configured": False, "mode": "in-process"}
    assert body["upstream_in_flight"] == 0


async def test_health_reports_an_unreachable_broker_without_failing(http, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = await http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["broker"]["ok"] is False and body["broker"]["configured"] is True
