"""Key limits as a client of the gateway meets them: OpenAI's 429s and x-ratelimit-* headers."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from asgiref.sync import sync_to_async

from llmops import catalog, limits
from llmops.catalog import hash_key
from llmops.keys import api_key_update
from llmops.models import ApiKey
from tests.conftest import auth, sse_events

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(autouse=True)
def _books_in_process(settings):
    # In process in both profiles: key ids restart with each test database, Redis does not.
    settings.LLMOPS_LIMITS_REDIS_URL = ""
    limits.limits_reset()
    yield
    limits.limits_reset()


async def limit(raw_key: str, **fields) -> None:
    key = await ApiKey.objects.aget(key_hash=hash_key(raw_key))
    await sync_to_async(api_key_update)(key=key, **fields)


def body(**extra) -> dict:
    return {"model": "sim-small", "messages": HELLO, "simulate": {"output_tokens": 5}, **extra}


async def test_the_request_after_the_rpm_limit_is_answered_429_in_openai_shape(http, seeded, api_key):
    await limit(api_key, requests_per_minute=2)
    for remaining in ("1", "0"):
        response = await http.post("/v1/chat/completions", json=body(), headers=auth(api_key))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "2"
        assert response.headers["x-ratelimit-remaining-requests"] == remaining
    refused = await http.post("/v1/chat/completions", json=body(), headers=auth(api_key))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    assert "requests per min (RPM)" in error["message"]
    assert 29 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_the_openai_sdk_raises_its_rate_limit_error_with_the_headers(sdk, api_key):
    await limit(api_key, requests_per_minute=1)
    await sdk.chat.completions.create(model="sim-small", messages=HELLO, extra_body={"simulate": {"output_tokens": 2}})
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model="sim-small", messages=HELLO)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "requests"
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "1"


async def test_tokens_per_minute_reserve_the_estimate_then_keep_only_the_real_usage(http, seeded, api_key):
    await limit(api_key, tokens_per_minute=2000)
    first = await http.post("/v1/chat/completions", json=body(max_tokens=1500), headers=auth(api_key))
    assert first.status_code == 200
    # Reserved: the input and the 1500 tokens the answer was allowed.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 500
    # The answer used 5: a second request of the same size fits, as it would not had the
    # reservation stayed.
    second = await http.post("/v1/chat/completions", json=body(max_tokens=1500), headers=auth(api_key))
    assert second.status_code == 200
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < 500


async def test_a_spent_budget_is_answered_insufficient_quota(http, seeded, api_key):
    await limit(api_key, budget_usd=Decimal("0.0001"))
    # sim-small's output costs $0.40 per million tokens: 1000 allowed tokens may cost $0.0004.
    refused = await http.post("/v1/chat/completions", json=body(max_tokens=1000), headers=auth(api_key))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers["x-should-retry"] == "false"
    small = await http.post("/v1/chat/completions", json=body(max_tokens=10), headers=auth(api_key))
    assert small.status_code == 200


async def test_the_budget_is_charged_what_each_answer_really_cost(http, seeded, api_key):
    await limit(api_key, budget_usd=Decimal("1"))
    response = await http.post("/v1/chat/completions", json=body(max_tokens=1000), headers=auth(api_key))
    assert response.status_code == 200
    key = await catalog.api_key_get(api_key)
    assert await limits.budget_spent(key) == Decimal(response.headers["x-llmops-cost-usd"])


async def test_a_stream_carries_the_rate_limit_headers(http, seeded, api_key):
    await limit(api_key, requests_per_minute=10, tokens_per_minute=100_000)
    response = await http.post(
        "/v1/chat/completions", json=body(stream=True, simulate={"output_tokens": 3}), headers=auth(api_key)
    )
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    assert int(response.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert sse_events(response.text)[-1] == "[DONE]"


async def test_a_key_without_limits_gets_no_rate_limit_headers(http, seeded, api_key):
    response = await http.post("/v1/chat/completions", json=body(), headers=auth(api_key))
    assert response.status_code == 200
    assert not any(name.startswith("x-ratelimit-") for name in response.headers)
