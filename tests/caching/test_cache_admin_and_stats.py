"""Staff manage cached answers in the admin; keys and staff read the cache's figures."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.urls import reverse

from caching.models import CacheEntry
from caching.store import ENTRIES
from monitoring.recorder import metrics_flush
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/chat/completions"
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Cache me"}]}


@pytest.fixture(autouse=True)
def _fresh_cache():
    caches["answers"].clear()
    yield
    ENTRIES.stop()
    ENTRIES.buffer.clear()


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def gateway(asgi_app):
    """Sync calls into the ASGI app, for tests that mix the admin's test client in."""
    import httpx2

    def call(key: str, body: dict = BODY, method: str = "POST", url: str = URL):
        async def go():
            async with httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=asgi_app), base_url="http://testserver"
            ) as http:
                return await http.request(method, url, json=body if method == "POST" else None, headers=auth(key))

        return async_to_sync(go)()

    return call


def test_the_cache_admin_pages_render(staff, seeded, api_key, gateway):
    gateway(api_key)
    ENTRIES.flush()
    entry = CacheEntry.objects.get()
    for name, obj in (("caching_cachepolicy", None), ("caching_cacheentry", entry)):
        assert staff.get(reverse(f"admin:{name}_changelist")).status_code == 200
        if obj is not None:
            assert staff.get(reverse(f"admin:{name}_change", args=[obj.pk])).status_code == 200
    for query in ({"state": "live"}, {"age": "1d"}, {"model": "sim-small"}, {"q": "Cache me"}):
        page = staff.get(reverse("admin:caching_cacheentry_changelist"), query)
        assert page.status_code == 200
    assert b"Cache me" in staff.get(reverse("admin:caching_cacheentry_changelist"), {"q": "Cache"}).content
    assert staff.get(reverse("admin:caching_cachepolicy_add")).status_code == 200


@pytest.mark.parametrize("action", ["purge_entries", "expire_entries"])
def test_purging_or_expiring_an_entry_stops_it_being_served(staff, seeded, api_key, gateway, action):
    gateway(api_key)
    assert gateway(api_key).headers["x-llmops-cache"] == "hit"
    ENTRIES.flush()
    entry = CacheEntry.objects.get()
    response = staff.post(
        reverse("admin:caching_cacheentry_changelist"), {"action": action, "_selected_action": [entry.pk]}
    )
    assert response.status_code == 302
    assert CacheEntry.objects.filter(pk=entry.pk).exists() == (action == "expire_entries")
    assert gateway(api_key).headers["x-llmops-cache"] == "miss"


def test_cache_stats_show_a_key_its_own_figures_and_staff_everyones(staff, seeded, api_key, other_api_key, gateway):
    first = gateway(api_key)
    gateway(api_key)
    gateway(api_key)
    gateway(other_api_key)
    metrics_flush()
    mine = gateway(api_key, method="GET", url="/api/cache/stats").json()
    assert mine["overall"] == {
        "hits": 2,
        "semantic_hits": 0,
        "misses": 1,
        "hit_rate": 0.6667,
        "saved_usd": format(2 * Decimal(first.headers["x-llmops-cost-usd"]), "f"),
    }
    assert [m["model"] for m in mine["models"]] == ["sim-small"]
    theirs = gateway(other_api_key, method="GET", url="/api/cache/stats").json()
    assert theirs["overall"]["misses"] == 1 and theirs["overall"]["hits"] == 0
    everyone = staff.get("/api/cache/stats").json()
    assert everyone["overall"]["misses"] == 2 and everyone["overall"]["hits"] == 2


def test_cache_stats_need_a_key_or_staff(client, seeded):
    response = client.get("/api/cache/stats")
    assert response.status_code in (401, 403)
    assert "error" in response.json()
    non_staff = get_user_model().objects.create_user("visitor", password="pw-for-tests-only")
    client.force_login(non_staff)
    assert client.get("/api/cache/stats").status_code == 403


def test_cache_stats_reject_a_bad_window(staff):
    response = staff.get("/api/cache/stats", {"hours": "soon"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "hours"


def test_purging_works_while_the_hot_layer_is_down(staff, seeded, api_key, gateway, settings):
    gateway(api_key)
    ENTRIES.flush()
    entry = CacheEntry.objects.get()
    settings.CACHES = {
        **settings.CACHES,
        "answers": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    response = staff.post(
        reverse("admin:caching_cacheentry_changelist"),
        {"action": "purge_entries", "_selected_action": [entry.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert not CacheEntry.objects.filter(pk=entry.pk).exists()
    assert any("could not be reached" in str(m) for m in response.context["messages"])
