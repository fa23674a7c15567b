"""The provider's requests- and tokens-per-minute per model, kept by every process together
(in Redis on the production profile): an interactive request that would wait too long goes
to the model's fallback or gets a 429; a batch item waits its turn."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from llmops import catalog
from llmops.batches.runner import batch_run
from llmops.model_limits import model_limits_reset, model_rate_take
from llmops.models import ModelEndpoint
from llmops.shared_redis import redis_for
from tests.batches.conftest import batch_line, upload
from tests.conftest import add_endpoint, auth, flushed_metrics

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def spent_model(request, seeded, settings):
    """A simulated model whose provider allows 120 requests a minute, all of this minute's spent:
    the next call fits in 0.5 s, time enough for a test's request to find it spent on a busy
    machine (at 600 a minute, a tenth of a second was not)."""
    model_limits_reset()
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    name = f"limited-{request.node.name[-20:].strip('_[]').replace('_', '-')}"
    await add_endpoint(name=name, provider="simulated", requests_per_minute=120, fallbacks="")
    if django_settings.LLMOPS_LIMITS_REDIS_URL:
        await redis_for(django_settings.LLMOPS_LIMITS_REDIS_URL).delete(f"llmops:model-rate:{name}")
    catalog.reset()
    endpoint = await catalog.endpoint_get(name)
    for _ in range(120):
        assert await model_rate_take(endpoint, 1) == 0
    assert await model_rate_take(endpoint, 1) > 0
    yield name
    model_limits_reset()


async def test_an_interactive_request_over_its_models_limit_is_a_429_and_the_model_is_not_called(
    http, api_key, spent_model, settings
):
    settings.LLMOPS_MODEL_RATE_MAX_WAIT_S = 0
    response = await http.post("/v1/chat/completions", json={"model": spent_model, **HELLO}, headers=auth(api_key))
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    assert int(response.headers["retry-after"]) >= 1
    [metric] = await flushed_metrics(model=spent_model)
    assert [a["outcome"] for a in metric.attempts] == ["throttled"]


async def test_an_interactive_request_over_its_models_limit_goes_to_the_fallback(http, api_key, spent_model, settings):
    settings.LLMOPS_MODEL_RATE_MAX_WAIT_S = 0
    await ModelEndpoint.objects.filter(name=spent_model).aupdate(fallbacks="sim-small")
    catalog.reset()
    response = await http.post("/v1/chat/completions", json={"model": spent_model, **HELLO}, headers=auth(api_key))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == "sim-small"
    assert response.headers["x-llmops-attempts"] == "1"  # the limited model was not called


async def test_an_interactive_request_waits_a_little_rather_than_fail(http, api_key, spent_model, settings):
    settings.LLMOPS_MODEL_RATE_MAX_WAIT_S = 2.0  # the next request fits in 0.5 s
    response = await http.post("/v1/chat/completions", json={"model": spent_model, **HELLO}, headers=auth(api_key))
    assert response.status_code == 200, response.text


async def test_batch_items_wait_for_their_models_limit_and_all_succeed(sdk, spent_model, settings):
    settings.LLMOPS_MODEL_RATE_MAX_WAIT_S = 0  # which applies to interactive requests only
    settings.LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE = 0.005  # under one of the 120 a minute
    settings.LLMOPS_BATCH_POLL_S = 0.02
    uploaded = await sdk.files.create(
        file=upload([batch_line(f"b{i}", model=spent_model) for i in range(3)]), purpose="batch"
    )
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await batch_run(batch.id)
    ended = await sdk.batches.retrieve(batch.id)
    assert (ended.request_counts.completed, ended.request_counts.failed) == (3, 0)


@pytest.mark.services
async def test_the_limits_are_kept_in_redis_for_every_process(spent_model):
    state = await redis_for(django_settings.LLMOPS_LIMITS_REDIS_URL).hgetall(f"llmops:model-rate:{spent_model}")
    assert set(state) == {b"r", b"t"}


async def test_a_tokens_per_minute_limit_counts_the_calls_estimated_tokens(seeded):
    model_limits_reset()
    await add_endpoint(name="tpm-limited", provider="simulated", tokens_per_minute=1000)
    if django_settings.LLMOPS_LIMITS_REDIS_URL:
        await redis_for(django_settings.LLMOPS_LIMITS_REDIS_URL).delete("llmops:model-rate:tpm-limited")
    catalog.reset()
    endpoint = await catalog.endpoint_get("tpm-limited")
    assert await model_rate_take(endpoint, 600) == 0
    assert await model_rate_take(endpoint, 400) == 0
    wait = await model_rate_take(endpoint, 300)  # 300 tokens back take 18 s at 1,000 a minute
    assert 17 < wait <= 18.1


async def test_batch_items_leave_a_share_of_every_minute_to_interactive_requests(seeded, settings):
    model_limits_reset()
    settings.LLMOPS_MODEL_RATE_INTERACTIVE_RESERVE = 0.1
    await add_endpoint(name="shared-limit", provider="simulated", requests_per_minute=100)
    if django_settings.LLMOPS_LIMITS_REDIS_URL:
        await redis_for(django_settings.LLMOPS_LIMITS_REDIS_URL).delete("llmops:model-rate:shared-limit")
    catalog.reset()
    endpoint = await catalog.endpoint_get("shared-limit")
    taken = 0
    while not await model_rate_take(endpoint, 1, batch=True):
        taken += 1
    assert taken == 90  # batch items stop at 90 of the 100
    for _ in range(10):
        assert await model_rate_take(endpoint, 1) == 0  # the last ten are interactive requests'
    assert await model_rate_take(endpoint, 1) > 0
