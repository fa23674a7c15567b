"""Changing keys (llmops.keys, the admin, bulk updates) reaches every process's snapshot,
and the admin shows a new key once without keeping it anywhere."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from llmops import catalog
from llmops.auth import api_key_create
from llmops.catalog import hash_key
from llmops.keys import api_key_revoke, api_key_update
from llmops.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def another_process(settings):
    """This process's snapshot, held as another process holds its own: it learns of a change
    only from the version check it makes once LLMOPS_CONFIG_TTL_S has passed."""
    settings.LLMOPS_CONFIG_TTL_S = 3600

    class Process:
        def __init__(self) -> None:
            self.held: dict[object, object] = {}

        def load(self) -> None:
            async_to_sync(catalog.endpoint_list_enabled)()
            self.held = _snapshot_state()

        def resume(self) -> None:
            # Put back what the change dropped in this process: the other one never saw it.
            _snapshot_state_restore(self.held)

        def let_the_ttl_pass(self) -> None:
            settings.LLMOPS_CONFIG_TTL_S = 0.05
            async_to_sync(asyncio.sleep)(0.06)

    return Process()


def _snapshot_state() -> dict[object, object]:
    from llmops.config import _all

    return {snapshot: (snapshot._value, snapshot._version, snapshot._checked_at) for snapshot in list(_all)}


def _snapshot_state_restore(held: dict[object, object]) -> None:
    for snapshot, (value, version, checked_at) in held.items():
        snapshot._value, snapshot._version, snapshot._checked_at = value, version, checked_at


def by_id(key: ApiKey) -> catalog.ApiKeyInfo | None:
    return async_to_sync(catalog.api_key_by_id)(key.id)


def test_revoking_through_the_service_reaches_another_process_within_the_ttl(another_process):
    key, raw = api_key_create(name="leaked")
    another_process.load()
    api_key_revoke(key=key)
    another_process.resume()
    assert by_id(key) is not None  # its snapshot is still the old one...
    another_process.let_the_ttl_pass()
    assert by_id(key) is None  # ...until its check finds the version moved
    assert async_to_sync(catalog.api_key_get)(raw) is None


def test_a_bulk_update_revokes_in_another_process_within_the_ttl(another_process):
    key, raw = api_key_create(name="leaked")
    another_process.load()
    assert ApiKey.objects.filter(pk=key.pk).update(is_active=False) == 1
    another_process.resume()
    another_process.let_the_ttl_pass()
    assert by_id(key) is None and async_to_sync(catalog.api_key_get)(raw) is None


def test_a_bulk_delete_removes_the_key_in_another_process_within_the_ttl(another_process):
    key, raw = api_key_create(name="leaked")
    another_process.load()
    ApiKey.objects.filter(pk=key.pk).delete()
    another_process.resume()
    another_process.let_the_ttl_pass()
    assert async_to_sync(catalog.api_key_get)(raw) is None


def test_saving_a_key_inactive_in_the_admin_revokes_it_in_another_process_within_the_ttl(staff_client, another_process):
    key, raw = api_key_create(name="leaked")
    another_process.load()
    response = staff_client.post(
        reverse("admin:llmops_apikey_change", args=[key.pk]), {"name": "leaked", "budget_period": "month"}
    )
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).is_active is False
    another_process.resume()
    another_process.let_the_ttl_pass()
    assert async_to_sync(catalog.api_key_get)(raw) is None


def test_an_expiry_set_through_the_service_reaches_another_process_within_the_ttl(another_process):
    key, _ = api_key_create(name="temporary")
    another_process.load()
    api_key_update(key=key, expires_at=timezone.now() + timedelta(days=1), requests_per_minute=5)
    another_process.resume()
    another_process.let_the_ttl_pass()
    info = by_id(key)
    assert info is not None and info.rpm == 5 and info.expires_at is not None


def test_a_key_that_expires_is_refused_though_the_snapshot_still_holds_it(another_process):
    key, raw = api_key_create(name="temporary")
    api_key_update(key=key, expires_at=timezone.now() + timedelta(seconds=0.3))
    another_process.load()
    assert async_to_sync(catalog.api_key_get)(raw) is not None
    async_to_sync(asyncio.sleep)(0.35)
    assert async_to_sync(catalog.api_key_get)(raw) is None  # no reload: the TTL is an hour
    assert by_id(key) is None


def test_the_service_edits_limits_but_never_the_hash():
    key, _ = api_key_create(name="app")
    api_key_update(key=key, tokens_per_minute=2000, budget_usd=Decimal("5"), budget_period="day")
    info = by_id(key)
    assert info is not None and (info.tpm, info.budget_usd, info.budget_period) == (2000, Decimal("5"), "day")
    with pytest.raises(TypeError):
        api_key_update(key=key, key_hash="0" * 64)


def test_the_admin_edits_and_lists_limits(staff_client):
    key, _ = api_key_create(name="app")
    response = staff_client.post(
        reverse("admin:llmops_apikey_change", args=[key.pk]),
        {
            "name": "app",
            "is_active": "on",
            "requests_per_minute": "60",
            "tokens_per_minute": "90000",
            "budget_usd": "25",
            "budget_period": "month",
        },
    )
    assert response.status_code == 302
    info = by_id(key)
    assert info is not None and (info.rpm, info.tpm, info.budget_usd) == (60, 90000, Decimal("25"))
    listing = staff_client.get(reverse("admin:llmops_apikey_changelist")).content.decode()
    assert "90000" in listing and "$25.00 per month" in listing


def test_a_new_admin_key_is_shown_once_in_the_response_and_kept_in_no_cookie_session_or_message(staff_client):
    response = staff_client.post(
        reverse("admin:llmops_apikey_add"), {"name": "from-admin", "is_active": "on", "budget_period": "month"}
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="from-admin")
    [raw] = re.findall(r'id="new-api-key" value="([^"]+)"', response.content.decode())
    assert raw.startswith("llmops-") and hash_key(raw) == key.key_hash
    assert "Copy it now" in response.content.decode()
    assert "no-store" in response["Cache-Control"]

    assert all(raw not in morsel.value for morsel in response.cookies.values())
    assert all(raw not in morsel.value for morsel in staff_client.cookies.values())
    assert all(raw not in str(value) for value in staff_client.session.values())
    assert all(raw not in str(message) for message in get_messages(response.wsgi_request))
    following = staff_client.get(reverse("admin:llmops_apikey_changelist"))
    assert all(raw not in str(message) for message in following.context["messages"])
    assert raw not in following.content.decode()

    models = staff_client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert models.status_code == 200


async def test_an_open_websocket_is_closed_with_4401_on_its_next_chat_after_revocation(asgi_app, seeded):
    key, raw = await sync_to_async(api_key_create)(name="socket")
    socket = WebsocketCommunicator(asgi_app, "/ws/v1/chat", headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert (await socket.connect())[0]
    chat = {"type": "chat", "model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]}
    await socket.send_json_to({**chat, "id": 1, "simulate": {"output_tokens": 2, "ttft_ms": 0, "tokens_per_s": 0}})
    while (event := await socket.receive_json_from(timeout=5))["type"] not in ("done", "error"):
        pass
    assert event["type"] == "done"

    await sync_to_async(api_key_revoke)(key=key)
    await socket.send_json_to({**chat, "id": 2})
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["id"], error["code"]) == ("error", 2, "invalid_api_key")
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    await socket.disconnect()
