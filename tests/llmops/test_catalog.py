from __future__ import annotations

import asyncio

import pytest
from django.db.models import F

from llmops import catalog
from llmops.models import ConfigVersion, ModelEndpoint
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hi"}]


async def test_requests_reuse_the_loaded_configuration(http, seeded, api_key):
    body = {"model": "sim-small", "messages": HELLO, "simulate": {"output_tokens": 1}}
    assert (await http.post("/v1/chat/completions", json=body, headers=auth(api_key))).status_code == 200
    loaded = await catalog._current()
    for _ in range(3):
        assert (await http.post("/v1/chat/completions", json=body, headers=auth(api_key))).status_code == 200
    assert await catalog._current() is loaded


async def test_a_change_in_the_admin_applies_to_the_next_request(http, seeded, api_key):
    body = {"model": "sim-small", "messages": HELLO, "simulate": {"output_tokens": 1}, "cache": {"mode": "bypass"}}
    first = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert first.json()["llmops"]["cost_usd"] != "0"
    endpoint = await ModelEndpoint.objects.aget(name="sim-small")
    endpoint.input_price_per_mtok = 0
    endpoint.output_price_per_mtok = 0
    await endpoint.asave()
    second = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert second.headers["x-llmops-cost-usd"] == "0"


async def test_other_processes_notice_a_change_through_the_shared_version(seeded, settings):
    settings.LLMOPS_CONFIG_TTL_S = 0
    assert (await catalog.endpoint_get("sim-small")).enabled
    # Another process changed the row; until it moves the version, this one keeps its snapshot.
    await ModelEndpoint.objects.filter(name="sim-small").aupdate(enabled=False)
    assert (await catalog.endpoint_get("sim-small")).enabled
    await ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).aupdate(version=F("version") + 1)
    assert not (await catalog.endpoint_get("sim-small")).enabled


async def test_a_process_checks_the_version_once_per_interval(seeded, settings):
    settings.LLMOPS_CONFIG_TTL_S = 60
    assert (await catalog.endpoint_get("sim-small")).enabled
    await ModelEndpoint.objects.filter(name="sim-small").aupdate(enabled=False)
    await ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).aupdate(version=F("version") + 1)
    assert (await catalog.endpoint_get("sim-small")).enabled  # not due yet: no query at all
    catalog._snapshot._checked_at -= 61
    assert not (await catalog.endpoint_get("sim-small")).enabled


async def test_concurrent_requests_share_one_reload(seeded, monkeypatch):
    loads = 0
    real = catalog._snapshot._load

    def counting():
        nonlocal loads
        loads += 1
        return real()

    monkeypatch.setattr(catalog._snapshot, "_load", counting)
    results = await asyncio.gather(*(catalog.endpoint_get("sim-small") for _ in range(20)))
    assert all(r.name == "sim-small" for r in results)
    assert loads == 1
