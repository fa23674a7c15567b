"""The exact answer cache, through the HTTP API and the real pipeline."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches

from caching.models import CacheEntry, CachePolicy
from caching.store import ENTRIES, HotLayerHealth
from llmops import catalog
from tests.conftest import auth, flushed_metrics, sse_events

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/chat/completions"


def ask(text: str = "Is this good?", **extra) -> dict:
    return {"model": "sim-small", "messages": [{"role": "user", "content": text}], **extra}


async def post(http, key: str, body: dict, **headers):
    response = await http.post(URL, json=body, headers={**auth(key), **headers})
    assert response.status_code == 200, response.text
    return response


async def set_policy(**fields) -> None:
    await CachePolicy.objects.filter(name="default").aupdate(**fields)
    catalog.reset()


def entries() -> list[CacheEntry]:
    ENTRIES.flush()
    return list(CacheEntry.objects.order_by("created_at"))


@pytest.fixture(autouse=True)
def _fresh_cache():
    caches["answers"].clear()
    ENTRIES.buffer.clear()
    yield
    ENTRIES.stop()
    ENTRIES.buffer.clear()


async def test_a_repeated_question_is_answered_from_the_cache_at_no_cost(http, seeded, api_key):
    first = await post(http, api_key, ask())
    second = await post(http, api_key, ask())
    assert first.headers["x-llmops-cache"] == "miss"
    assert second.headers["x-llmops-cache"] == "hit"
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert second.headers["x-llmops-cost-usd"] == "0"
    assert second.json()["llmops"]["saved_usd"] == first.headers["x-llmops-cost-usd"]
    miss, hit = await flushed_metrics()
    assert (miss.cache_status, hit.cache_status) == ("miss", "hit")
    assert hit.cost_usd == 0 and hit.cost_saved_usd == miss.cost_usd > 0
    assert hit.output_tokens == miss.output_tokens


async def test_whitespace_is_normalised_by_default_but_case_is_not(http, seeded, api_key):
    await post(http, api_key, ask("Is  this\n good?"))
    assert (await post(http, api_key, ask(" Is this good? "))).headers["x-llmops-cache"] == "hit"
    assert (await post(http, api_key, ask("is this good?"))).headers["x-llmops-cache"] == "miss"
    await set_policy(normalisation="lowercase")
    await post(http, api_key, ask("LOUD question"))
    assert (await post(http, api_key, ask("loud QUESTION"))).headers["x-llmops-cache"] == "hit"


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.2},
        {"max_tokens": 5},
        {"top_p": 0.5},
        {"stop": ["\n"]},
        {"seed": 7},
        {"model": "sim-large"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is this good?"}]},
        {"simulate": {"output_tokens": 3}},
    ],
)
async def test_anything_that_changes_the_answer_changes_the_key(http, seeded, api_key, change):
    await post(http, api_key, ask())
    assert (await post(http, api_key, {**ask(), **change})).headers["x-llmops-cache"] == "miss"


async def test_the_prompt_version_is_part_of_the_key(http, seeded, api_key):
    from llmops.models import PromptTemplate

    body = {"model": "sim-small", "messages": [], "prompt": "sentiment", "variables": {"text": "great"}}
    await post(http, api_key, body)
    assert (await post(http, api_key, body)).headers["x-llmops-cache"] == "hit"
    await PromptTemplate.objects.acreate(
        name="sentiment",
        version=2,
        messages=[{"role": "system", "content": "Sentiment?"}, {"role": "user", "content": "Text: {{text}}"}],
    )
    assert (await post(http, api_key, body)).headers["x-llmops-cache"] == "miss"
    [*_, entry] = await sync_to_async(entries)()
    assert entry.prompt == "sentiment@2"


async def test_one_tenant_never_sees_another_tenants_answers(http, seeded, api_key, other_api_key):
    await post(http, api_key, ask())
    assert (await post(http, other_api_key, ask())).headers["x-llmops-cache"] == "miss"
    await set_policy(scope="shared")
    await post(http, api_key, ask("shared?"))
    assert (await post(http, other_api_key, ask("shared?"))).headers["x-llmops-cache"] == "hit"


async def test_hot_sampling_is_not_cached_unless_the_policy_says_so(http, seeded, api_key):
    await set_policy(max_temperature=0.5)
    hot = ask(temperature=0.9)
    await post(http, api_key, hot)
    assert (await post(http, api_key, hot)).headers["x-llmops-cache"] == "bypass"
    await set_policy(cache_above_max_temperature=True)
    await post(http, api_key, hot)
    assert (await post(http, api_key, hot)).headers["x-llmops-cache"] == "hit"


async def test_a_request_can_bypass_or_refresh_the_cache(http, seeded, api_key):
    await post(http, api_key, ask())
    bypassed = await post(http, api_key, ask(cache={"mode": "bypass"}))
    assert bypassed.headers["x-llmops-cache"] == "bypass"
    by_header = await post(http, api_key, ask(), **{"x-llmops-cache-mode": "bypass"})
    assert by_header.headers["x-llmops-cache"] == "bypass"
    refreshed = await post(http, api_key, ask(cache={"mode": "refresh"}))
    assert refreshed.headers["x-llmops-cache"] == "miss"
    assert (await post(http, api_key, ask())).headers["x-llmops-cache"] == "hit"
    statuses = [m.cache_status for m in await flushed_metrics()]
    assert statuses == ["miss", "bypass", "bypass", "miss", "hit"]
    assert len(await sync_to_async(entries)()) == 1  # the refresh replaced the entry


async def test_a_bad_cache_mode_is_a_400(http, seeded, api_key):
    response = await http.post(URL, json=ask(), headers={**auth(api_key), "x-llmops-cache-mode": "always"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "x-llmops-cache-mode"
    response = await http.post(URL, json=ask(cache={"mode": "always"}), headers=auth(api_key))
    assert response.status_code == 400 and response.json()["error"]["param"] == "cache.mode"


async def test_a_policy_for_one_model_overrides_the_default(http, seeded, api_key):
    await CachePolicy.objects.acreate(name="no-large", model_pattern="sim-l*", enabled=False)
    catalog.reset()
    await post(http, api_key, ask(model="sim-large", simulate={"ttft_ms": 0, "tokens_per_s": 0}))
    again = await post(http, api_key, ask(model="sim-large", simulate={"ttft_ms": 0, "tokens_per_s": 0}))
    assert again.headers["x-llmops-cache"] == "bypass"
    await post(http, api_key, ask())
    assert (await post(http, api_key, ask())).headers["x-llmops-cache"] == "hit"


async def test_an_answer_expires_after_its_ttl(http, seeded, api_key):
    await set_policy(ttl_seconds=1)
    await post(http, api_key, ask())
    await asyncio.sleep(1.1)
    assert (await post(http, api_key, ask())).headers["x-llmops-cache"] == "miss"


async def test_streams_are_stored_when_complete_and_replayed_from_the_cache(http, seeded, api_key):
    body = ask(stream=True, stream_options={"include_usage": True}, simulate={"output_tokens": 6})
    first = await post(http, api_key, body)
    second = await post(http, api_key, body)
    assert (first.headers["x-llmops-cache"], second.headers["x-llmops-cache"]) == ("miss", "hit")

    def text_of(response) -> tuple[str, int]:
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
        return "".join(pieces), sum(1 for p in pieces if p)

    (text1, _), (text2, pieces2) = text_of(first), text_of(second)
    assert text1 == text2 and pieces2 > 1  # replayed in pieces, not one lump
    usage = json.loads(sse_events(second.text)[-2])
    assert usage["usage"]["completion_tokens"] == 6 and usage["llmops"]["cost_usd"] == "0"
    # A whole answer to the same question comes from the same entry.
    whole = await post(http, api_key, ask(simulate={"output_tokens": 6}))
    assert whole.headers["x-llmops-cache"] == "hit" and whole.json()["choices"][0]["message"]["content"] == text1
    miss, hit, whole_hit = await flushed_metrics()
    assert (whole_hit.stream, whole_hit.cache_status) == (False, "hit")
    assert (miss.stream, hit.stream, hit.cache_status, hit.cost_usd) == (True, True, "hit", 0)
    assert hit.cost_saved_usd == miss.cost_usd


async def test_a_failed_answer_is_not_stored(http, seeded, api_key):
    for stream in (False, True):
        response = await http.post(URL, json=ask(stream=stream, simulate={"error_rate": 1}), headers=auth(api_key))
        assert response.status_code == 502
    assert await sync_to_async(entries)() == []


async def test_every_entry_is_recorded_with_its_hits_and_savings(http, seeded, api_key):
    first = await post(http, api_key, ask())
    for _ in range(3):
        await post(http, api_key, ask())
    [entry] = await sync_to_async(entries)()
    cost = Decimal(first.headers["x-llmops-cost-usd"])
    assert entry.model == "sim-small" and entry.scope.startswith("key:")
    assert entry.query == "Is this good?"
    assert entry.hit_count == 3 and entry.cost_saved_usd == 3 * cost
    assert (entry.expires_at - entry.created_at).total_seconds() == 3600


async def test_requests_succeed_when_the_cache_backend_is_down(http, seeded, api_key, settings):
    settings.CACHES = {
        **settings.CACHES,
        "answers": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    settings.LLMOPS_CACHE_RETRY_AFTER_S = 60
    errors, bypassed = HotLayerHealth.errors, HotLayerHealth.bypassed
    try:
        for _ in range(3):
            response = await post(http, api_key, ask())
            assert response.headers["x-llmops-cache"] == "miss"
        assert HotLayerHealth.errors == errors + 1  # one failure, then the layer is skipped
        assert HotLayerHealth.bypassed > bypassed
    finally:
        HotLayerHealth.down_until = 0.0


async def test_identical_requests_in_flight_together_make_one_upstream_call(http, seeded, api_key):
    body = ask(simulate={"latency_ms": 300})
    responses = await asyncio.gather(*(post(http, api_key, body) for _ in range(5)))
    assert sorted(r.headers["x-llmops-cache"] for r in responses) == ["hit", "hit", "hit", "hit", "miss"]
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1
    metrics = await flushed_metrics()
    assert sum(m.cost_usd > 0 for m in metrics) == 1
    assert sum(m.cost_saved_usd > 0 for m in metrics) == 4


async def test_when_the_first_of_identical_requests_fails_the_others_ask_for_themselves(
    http, seeded, api_key, settings
):
    settings.LLMOPS_RETRIES = 0  # one upstream failure per request, too few to open the breaker
    body = ask(simulate={"latency_ms": 200, "error_rate": 1})
    responses = await asyncio.gather(
        *(http.post(URL, json=body, headers=auth(api_key)) for _ in range(3)), return_exceptions=True
    )
    assert [r.status_code for r in responses] == [502, 502, 502]
    metrics = await flushed_metrics()
    assert [(m.status, m.cache_status) for m in metrics] == [("error", "miss")] * 3


async def test_when_the_first_of_identical_requests_is_cancelled_another_asks_instead(http, seeded, api_key):
    body = ask(simulate={"latency_ms": 400})
    first = asyncio.ensure_future(post(http, api_key, body))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(post(http, api_key, body))
    await asyncio.sleep(0.1)
    first.cancel()
    response = await asyncio.wait_for(second, timeout=5)
    assert response.headers["x-llmops-cache"] == "miss"  # it asked the model itself
    assert (await post(http, api_key, body)).headers["x-llmops-cache"] == "hit"


async def test_pointing_a_model_name_elsewhere_starts_a_fresh_cache(http, seeded, api_key):
    from llmops.models import ModelEndpoint

    await post(http, api_key, ask())
    endpoint = await ModelEndpoint.objects.aget(name="sim-small")
    endpoint.upstream_model = "sim-small-v2"
    await endpoint.asave()
    assert (await post(http, api_key, ask())).headers["x-llmops-cache"] == "miss"
