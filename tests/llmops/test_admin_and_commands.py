from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from llmops.catalog import hash_key
from llmops.models import ApiKey, ModelEndpoint, PromptTemplate
from llmops.seed import CLOUD, PRICES_READ_ON, catalog_seed
from monitoring.recorder import metric_record, metrics_flush

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


def test_create_api_key_prints_the_key_last_and_stores_only_its_hash():
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "mobile-app", stdout=out, stderr=err)
    raw = out.getvalue().strip().splitlines()[-1]
    key = ApiKey.objects.get(name="mobile-app")
    assert raw.startswith("llmops-") and len(raw) > 40
    assert key.key_hash == hash_key(raw)
    assert raw not in (key.key_hash, key.prefix) and raw.startswith(key.prefix)
    assert "prefix" in err.getvalue()


def test_seed_adds_the_default_catalog_once_and_keeps_staff_edits(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    catalog_seed()
    local = ModelEndpoint.objects.get(name="smollm2-135m")
    assert local.provider == "local" and local.enabled
    assert ModelEndpoint.objects.get(name="sim-small").provider == "simulated"
    assert (
        ModelEndpoint.objects.get(name="sim-large").output_price_per_mtok
        > ModelEndpoint.objects.get(name="sim-small").output_price_per_mtok
    )
    for entry in CLOUD:
        row = ModelEndpoint.objects.get(name=entry["name"])
        assert row.prices_read_on == PRICES_READ_ON and row.input_price_per_mtok > 0
        assert row.enabled == (row.provider == "anthropic")
    local.max_concurrency = 3
    local.save()
    assert catalog_seed() == []
    assert ModelEndpoint.objects.get(name="smollm2-135m").max_concurrency == 3
    assert PromptTemplate.objects.get(name="sentiment").variables == ["text"]


def test_every_admin_page_renders(staff_client):
    catalog_seed()
    key = ApiKey.objects.create(name="k", prefix="llmops-abcde", key_hash="0" * 64)
    metric_record(
        request_id="r1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        api_key_id=key.id,
        model="sim-small",
        provider="simulated",
        status="ok",
    )
    metrics_flush()
    objects = {
        "llmops_modelendpoint": ModelEndpoint.objects.first(),
        "llmops_prompttemplate": PromptTemplate.objects.first(),
        "llmops_apikey": key,
        "monitoring_querymetric": __import__("monitoring.models").models.QueryMetric.objects.first(),
    }
    for name, obj in objects.items():
        changelist = staff_client.get(reverse(f"admin:{name}_changelist"))
        assert changelist.status_code == 200, name
        change = staff_client.get(reverse(f"admin:{name}_change", args=[obj.pk]))
        assert change.status_code == 200, name
    for name in ("llmops_modelendpoint", "llmops_prompttemplate", "llmops_apikey"):
        assert staff_client.get(reverse(f"admin:{name}_add")).status_code == 200
    filtered = staff_client.get(reverse("admin:monitoring_querymetric_changelist"), {"status": "ok", "q": "r1"})
    assert b"sim-small" in filtered.content


def test_the_admin_shows_a_new_key_once_and_stores_its_hash(staff_client):
    response = staff_client.post(reverse("admin:llmops_apikey_add"), {"name": "from-admin", "is_active": "on"})
    assert response.status_code == 200
    key = ApiKey.objects.get(name="from-admin")
    raw = response.context["raw_key"]
    assert raw.encode() in response.content and hash_key(raw) == key.key_hash


def test_the_api_schema_documents_every_endpoint(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model}"} <= set(schema["paths"])
    post = schema["paths"]["/v1/chat/completions"]["post"]
    assert "requestBody" in post
    assert "GatewayApiKey" in schema["components"]["securitySchemes"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_in_the_admin_is_refused_on_the_next_request(client):
    from asgiref.sync import async_to_sync

    from llmops import catalog
    from llmops.auth import api_key_create

    staff = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only")
    client.force_login(staff)
    key, raw = api_key_create(name="leaked")
    assert async_to_sync(catalog.api_key_get)(raw) is not None
    response = client.post(reverse("admin:llmops_apikey_change", args=[key.pk]), {"name": "leaked"})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).is_active is False
    assert async_to_sync(catalog.api_key_get)(raw) is None
