"""Routes and their rules through the API: which model a request reaches, and why."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from asgiref.sync import sync_to_async

from caching.models import CachePolicy
from llmops import catalog
from llmops.models import ModelEndpoint
from llmops.upstream import InFlight
from routing.models import Route
from tests.conftest import auth, flushed_metrics
from tests.routing.conftest import CHEAP, STRONG, measured_rows, route_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("routed_models")]

URL = "/v1/chat/completions"


def ask(model: str, content: str = "Hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def answered_by(http, key: str, body: dict) -> str:
    response = await http.post(URL, json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.headers["x-llmops-model"]


@pytest.fixture
async def support():
    return await route_create(
        "help",
        task_type="reasoning",
        strategy="single",
        model_names=CHEAP,
        rules=[
            {"name": "hard", "complexities": "high", "strategy": "single", "model_names": STRONG},
            {"name": "refunds", "keywords": "refund, chargeback", "strategy": "single", "model_names": STRONG},
            {"name": "invoice ids", "pattern": r"INV-\d{6}", "strategy": "single", "model_names": STRONG},
            {"name": "enterprise", "metadata": {"tier": "enterprise"}, "strategy": "single", "model_names": STRONG},
            {"name": "long", "min_input_tokens": 500, "strategy": "single", "model_names": STRONG},
            {"name": "the sentiment prompt", "prompt": "sentiment", "strategy": "single", "model_names": STRONG},
        ],
    )


async def test_a_request_with_no_matching_rule_goes_to_the_routes_default(http, api_key, support):
    response = await http.post(URL, json=ask("route:help"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == CHEAP
    assert response.headers["x-llmops-route"] == "help"
    assert response.headers["x-llmops-route-reason"] == f"route help, default: {CHEAP}"
    assert response.json()["llmops"]["route"] == "help"


@pytest.mark.parametrize(
    ("extra", "content", "rule"),
    [
        ({"complexity": "high"}, "Hello", "hard"),
        ({}, "I want a REFUND now", "refunds"),
        ({}, "Where is INV-004211?", "invoice ids"),
        ({"metadata": {"tier": "enterprise"}}, "Hello", "enterprise"),
        ({}, "word " * 600, "long"),
    ],
)
async def test_each_kind_of_rule_sends_the_request_to_its_target(http, api_key, support, extra, content, rule):
    response = await http.post(URL, json=ask("route:help", content, **extra), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert f"rule '{rule}'" in response.headers["x-llmops-route-reason"]


async def test_a_rule_on_the_prompt_matches_requests_using_that_template(http, api_key, support):
    body = {"model": "route:help", "prompt": "sentiment", "variables": {"text": "great"}}
    assert await answered_by(http, api_key, body) == STRONG


async def test_rules_are_tried_in_order_and_the_first_match_wins(http, api_key):
    await route_create(
        "ordered",
        strategy="single",
        model_names=CHEAP,
        rules=[
            {"name": "first", "keywords": "urgent", "strategy": "single", "model_names": STRONG},
            {"name": "second", "keywords": "urgent", "strategy": "single", "model_names": CHEAP},
        ],
    )
    response = await http.post(URL, json=ask("route:ordered", "urgent please"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert "rule 'first'" in response.headers["x-llmops-route-reason"]


async def test_every_condition_of_a_rule_must_hold(http, api_key):
    await route_create(
        "both",
        strategy="single",
        model_names=CHEAP,
        rules=[{"complexities": "high", "keywords": "refund", "strategy": "single", "model_names": STRONG}],
    )
    assert await answered_by(http, api_key, ask("route:both", "refund", complexity="high")) == STRONG
    assert await answered_by(http, api_key, ask("route:both", "refund")) == CHEAP
    assert await answered_by(http, api_key, ask("route:both", "hello", complexity="high")) == CHEAP


async def test_a_declared_task_type_with_model_auto_gets_the_route_mapped_to_it(http, api_key, support):
    response = await http.post(URL, json=ask("auto", task_type="reasoning"), headers=auth(api_key))
    assert response.headers["x-llmops-route"] == "help"
    assert response.headers["x-llmops-model"] == CHEAP


async def test_the_sdk_routes_with_extra_body(sdk, support):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        extra_body={"task_type": "reasoning", "complexity": "high"},
    )
    assert raw.headers["x-llmops-route"] == "help"
    assert raw.parse().model == STRONG


async def test_a_weighted_set_shares_requests_by_weight(http, api_key, settings):
    await route_create("split", strategy="weighted", model_names=f"{CHEAP}:3, {STRONG}:1")
    counts = Counter([await answered_by(http, api_key, ask("route:split", f"q{i}")) for i in range(120)])
    assert 70 <= counts[CHEAP] <= 110 and counts[STRONG] == 120 - counts[CHEAP]


async def test_a_weighted_choice_falls_back_to_the_other_models_of_the_set(http, api_key, cheap_upstream):
    await route_create("split", strategy="weighted", model_names=f"{CHEAP}:1000, {STRONG}:0.001")
    cheap_upstream.fail(500, times=10)
    assert await answered_by(http, api_key, ask("route:split")) == STRONG


async def test_least_in_flight_sends_to_the_model_with_fewer_calls_open(http, api_key, cheap_upstream):
    await route_create("balanced", strategy="least_in_flight", model_names=f"{CHEAP}, {STRONG}")
    cheap_upstream.delay_s = 0.5
    slow = asyncio.ensure_future(http.post(URL, json=ask("route:balanced", "slow one"), headers=auth(api_key)))
    for _ in range(100):
        if InFlight.by_model.get(CHEAP):
            break
        await asyncio.sleep(0.01)
    assert InFlight.by_model[CHEAP] == 1
    response = await http.post(URL, json=ask("route:balanced", "next"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert "fewest calls in flight" in response.headers["x-llmops-route-reason"]
    assert (await slow).headers["x-llmops-model"] == CHEAP
    assert InFlight.by_model[CHEAP] == 0 and InFlight.by_model[STRONG] == 0


measured = sync_to_async(measured_rows)


async def test_lowest_p95_sends_to_the_model_measured_fastest(http, api_key):
    await measured(CHEAP, 900.0, cost="0.0001")
    await measured(STRONG, 120.0, cost="0.0001")
    await route_create("fastest", strategy="lowest_p95", model_names=f"{CHEAP}, {STRONG}")
    response = await http.post(URL, json=ask("route:fastest"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert "lowest p95 (120 ms)" in response.headers["x-llmops-route-reason"]


async def test_a_routed_request_is_recorded_with_its_route_and_option(http, api_key, support):
    response = await http.post(URL, json=ask("route:help", complexity="high"), headers=auth(api_key))
    (row,) = await flushed_metrics(request_id=response.headers["x-llmops-request-id"])
    assert (row.model, row.route, row.option, row.answered_by) == ("route:help", "help", STRONG, STRONG)


@pytest.fixture
async def answer_cache(routed_models):
    await CachePolicy.objects.aupdate(enabled=True)
    catalog.reset()


@pytest.mark.usefixtures("answer_cache")
async def test_a_routes_answers_are_cached_under_the_route(http, api_key, support, cheap_upstream):
    first = await http.post(URL, json=ask("route:help", "same question"), headers=auth(api_key))
    again = await http.post(URL, json=ask("route:help", "same question"), headers=auth(api_key))
    assert (first.headers["x-llmops-cache"], again.headers["x-llmops-cache"]) == ("miss", "hit")
    assert len(cheap_upstream.requests) == 1


@pytest.mark.usefixtures("answer_cache")
async def test_a_changed_route_does_not_serve_answers_cached_under_its_old_rules(http, api_key, support):
    await http.post(URL, json=ask("route:help", "same question"), headers=auth(api_key))
    await Route.objects.filter(name="help").aupdate(model_names=STRONG)
    await sync_to_async((await Route.objects.aget(name="help")).save)()
    catalog.reset()
    again = await http.post(URL, json=ask("route:help", "same question"), headers=auth(api_key))
    assert again.headers["x-llmops-cache"] == "miss" and again.headers["x-llmops-model"] == STRONG


# -- bad input ------------------------------------------------------------------------


async def test_an_unknown_route_is_a_404_naming_it(http, api_key):
    response = await http.post(URL, json=ask("route:nope"), headers=auth(api_key))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "route_not_found" and "'nope'" in error["message"] and error["param"] == "model"


async def test_model_auto_without_a_task_type_or_with_an_unmapped_one_is_refused(http, api_key):
    missing = await http.post(URL, json=ask("auto"), headers=auth(api_key))
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "task_type"
    unmapped = await http.post(URL, json=ask("auto", task_type="poetry"), headers=auth(api_key))
    assert unmapped.status_code == 404 and "poetry" in unmapped.json()["error"]["message"]


async def test_a_route_whose_model_was_disabled_is_a_409_naming_it_not_a_silent_skip(http, api_key, support):
    await ModelEndpoint.objects.filter(name=STRONG).aupdate(enabled=False)
    catalog.reset()
    response = await http.post(URL, json=ask("route:help", complexity="high"), headers=auth(api_key))
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "route_target_unavailable" and STRONG in error["message"] and "'hard'" in error["message"]


async def test_a_weighted_set_with_a_disabled_model_says_it_skipped_it(http, api_key):
    await route_create("split", strategy="weighted", model_names=f"{CHEAP}:1, {STRONG}:1")
    await ModelEndpoint.objects.filter(name=STRONG).aupdate(enabled=False)
    catalog.reset()
    response = await http.post(URL, json=ask("route:split"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == CHEAP
    assert f"skipped {STRONG}" in response.headers["x-llmops-route-reason"]


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("task_type", "", "task_type"),
        ("task_type", "x" * 51, "task_type"),
        ("complexity", "", "complexity"),
        ("metadata", {"tier": 3}, "metadata"),
        ("metadata", "free", "metadata"),
    ],
)
async def test_malformed_routing_fields_are_400s_naming_the_field(http, api_key, support, field, value, param):
    response = await http.post(URL, json={**ask("route:help"), field: value}, headers=auth(api_key))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.usefixtures("answer_cache")
async def test_an_answer_cached_through_one_rule_is_not_served_to_a_request_another_rule_sends_elsewhere(
    http, api_key, support, strong_upstream
):
    cheap = await http.post(URL, json=ask("route:help", "same words"), headers=auth(api_key))
    enterprise = await http.post(
        URL, json=ask("route:help", "same words", metadata={"tier": "enterprise"}), headers=auth(api_key)
    )
    assert cheap.headers["x-llmops-model"] == CHEAP
    assert (enterprise.headers["x-llmops-cache"], enterprise.headers["x-llmops-model"]) == ("miss", STRONG)
    assert len(strong_upstream.requests) == 1


async def test_a_fallback_that_answers_is_measured_as_itself(http, api_key, cheap_upstream):
    await ModelEndpoint.objects.filter(name=CHEAP).aupdate(fallbacks=STRONG)
    catalog.reset()
    await route_create("fb", strategy="single", model_names=CHEAP)
    cheap_upstream.fail(500, times=10)
    response = await http.post(URL, json=ask("route:fb"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    (row,) = await flushed_metrics(request_id=response.headers["x-llmops-request-id"])
    assert (row.option, row.answered_by) == (STRONG, STRONG)
