"""Choice under a request's limits, from what each option measured (or its priors), and
the dry-run preview."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from llmops import catalog
from llmops.models import ModelEndpoint
from routing.models import Evaluation
from routing.stats import MEASURED
from tests.conftest import auth, flushed_metrics
from tests.routing.conftest import CHEAP, STRONG, cascade_create, measured_rows, route_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("routed_models")]

URL = "/v1/chat/completions"
PREVIEW = "/api/routing/preview"


def ask(model: str = "route:pick", content: str = "Hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def measured(option: str, latency_ms: float, cost: str, *, count: int = 30) -> None:
    await sync_to_async(measured_rows)(option, latency_ms, cost=cost, count=count, spread=True)


@sync_to_async
def evaluated(route: str, accuracies: dict[str, float]) -> None:
    Evaluation.objects.create(
        route_name=route,
        dataset="test.tsv",
        rows=100,
        results=[{"option": option, "accuracy": value} for option, value in accuracies.items()],
    )
    catalog.reset()


@pytest.fixture
async def pick():
    """Cheap: slow-ish and weak; strong: fast and good but dear (as measured)."""
    await route_create("pick", strategy="weighted", model_names=f"{CHEAP}, {STRONG}")
    await measured(CHEAP, 800.0, "0.00002")  # p95 about 1,200 ms, $0.02 per 1k
    await measured(STRONG, 200.0, "0.002")  # p95 about 300 ms, $2 per 1k
    await evaluated("pick", {CHEAP: 0.70, STRONG: 0.92})


async def test_the_cheapest_option_meeting_every_limit_is_chosen(http, api_key, pick):
    loose = await http.post(URL, json=ask(limits={"max_latency_ms": 2000}), headers=auth(api_key))
    assert loose.headers["x-llmops-model"] == CHEAP
    reason = loose.headers["x-llmops-route-reason"]
    assert "cheapest that meets them" in reason and "measured (n=30)" in reason
    fast = await http.post(URL, json=ask(limits={"max_latency_ms": 500}), headers=auth(api_key))
    assert fast.headers["x-llmops-model"] == STRONG
    assert f"removed {CHEAP}" in fast.headers["x-llmops-route-reason"]
    good = await http.post(URL, json=ask(limits={"min_quality": 0.9}), headers=auth(api_key))
    assert good.headers["x-llmops-model"] == STRONG
    cheap_enough = await http.post(URL, json=ask(limits={"max_cost_per_1k": 0.5}), headers=auth(api_key))
    assert cheap_enough.headers["x-llmops-model"] == CHEAP


async def test_nothing_meeting_the_limits_is_a_422_naming_the_closest_and_its_misses(http, api_key, pick):
    body = ask(limits={"max_latency_ms": 250, "max_cost_per_1k": 1.0, "min_quality": 0.95})
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "limits_unmet" and error["param"] == "limits"
    message = error["message"]
    # The strong model misses latency by ~50 ms, cost by ~$1 and quality by 0.03: closest.
    assert f"The closest is {STRONG}" in message
    assert "max_latency_ms" in message and "max_cost_per_1k" in message and "min_quality: quality 0.920" in message


async def test_with_too_few_samples_the_catalogs_priors_are_used_and_the_answer_says_so(http, api_key):
    await route_create("pick", strategy="weighted", model_names=f"{CHEAP}, {STRONG}")
    await ModelEndpoint.objects.filter(name=CHEAP).aupdate(latency_prior_ms=3000, quality_prior=0.6)
    await ModelEndpoint.objects.filter(name=STRONG).aupdate(latency_prior_ms=400, quality_prior=0.9)
    catalog.reset()
    await measured(STRONG, 100.0, "0.001", count=3)  # too few to trust
    response = await http.post(URL, json=ask(limits={"max_latency_ms": 1000}), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    reason = response.headers["x-llmops-route-reason"]
    assert "p95 400 ms (prior, 3 measured)" in reason and "quality 0.900 (prior)" in reason


async def test_an_option_with_unknown_quality_never_meets_a_quality_limit(http, api_key):
    await route_create("pick", strategy="single", model_names=CHEAP)
    response = await http.post(URL, json=ask(limits={"min_quality": 0.1}), headers=auth(api_key))
    assert response.status_code == 422
    assert "unknown" in response.json()["error"]["message"]


async def test_a_cascade_is_an_option_judged_by_its_own_measurements(http, api_key, cheap_upstream):
    cascade = await cascade_create("c", [{"model": CHEAP, "labels": "positive, negative"}, {"model": STRONG}])
    await route_create(
        "pick",
        strategy="single",
        model_names=STRONG,
        rules=[{"name": "never", "keywords": "zzz", "strategy": "cascade", "cascade": cascade}],
    )
    await measured("cascade:c", 400.0, "0.0003")
    await measured(STRONG, 200.0, "0.002")
    await evaluated("pick", {"cascade:c": 0.9, STRONG: 0.92})
    cheap_upstream.reply(text="positive")
    response = await http.post(URL, json=ask(limits={"min_quality": 0.85}), headers=auth(api_key))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == CHEAP
    assert "cascade:c is the cheapest" in response.headers["x-llmops-route-reason"]
    (row,) = await flushed_metrics(request_id=response.headers["x-llmops-request-id"])
    assert row.option == "cascade:c"


async def test_a_model_named_directly_with_limits_answers_only_within_them(http, api_key, pick):
    within = await http.post(URL, json=ask(STRONG, limits={"max_latency_ms": 1000}), headers=auth(api_key))
    assert within.status_code == 200 and within.headers["x-llmops-model"] == STRONG
    beyond = await http.post(URL, json=ask(CHEAP, limits={"max_latency_ms": 500}), headers=auth(api_key))
    assert beyond.status_code == 422 and CHEAP in beyond.json()["error"]["message"]


async def test_the_sdk_sends_limits_in_extra_body(sdk, pick):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="route:pick", messages=[{"role": "user", "content": "Hi"}], extra_body={"limits": {"min_quality": 0.9}}
    )
    assert raw.parse().model == STRONG


@pytest.mark.parametrize(
    ("limits", "param"),
    [
        ({"max_latency_ms": -1}, "limits.max_latency_ms"),
        ({"max_latency_ms": "fast"}, "limits.max_latency_ms"),
        ({"max_cost_per_1k": True}, "limits.max_cost_per_1k"),
        ({"min_quality": 1.5}, "limits.min_quality"),
        ({"max_tokens": 5}, "limits.max_tokens"),
        ("quick", "limits"),
        ({"max_latency_ms": 10**400}, "limits.max_latency_ms"),
    ],
)
async def test_malformed_limits_are_400s_naming_the_limit(http, api_key, pick, limits, param):
    response = await http.post(URL, json=ask(limits=limits), headers=auth(api_key))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# -- preview ---------------------------------------------------------------------------


async def test_the_preview_lists_the_candidates_and_the_rule_without_calling_any_model(
    http, api_key, cheap_upstream, strong_upstream
):
    await route_create(
        "pick",
        strategy="single",
        model_names=CHEAP,
        rules=[{"name": "hard", "complexities": "high", "strategy": "single", "model_names": STRONG}],
    )
    params = {"model": "route:pick", "content": "Explain this", "complexity": "high"}
    response = await http.get(PREVIEW, params=params, headers=auth(api_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["route"], body["rule"], body["option"]) == ("pick", "hard", STRONG)
    assert [c["model"] for c in body["candidates"]] == [STRONG]
    assert body["features"]["complexity"] == "high"
    assert cheap_upstream.requests == [] and strong_upstream.requests == []
    assert await flushed_metrics() == []


async def test_the_preview_shows_what_limits_removed(http, api_key, pick):
    params = {"model": "route:pick", "content": "Hi", "max_latency_ms": "500"}
    body = (await http.get(PREVIEW, params=params, headers=auth(api_key))).json()
    assert body["option"] == STRONG
    considered = {item["option"]: item for item in body["considered"]}
    assert considered[CHEAP]["meets"] is False and "max_latency_ms" in considered[CHEAP]["misses"]
    assert considered[STRONG]["meets"] is True


async def test_the_preview_of_a_cascade_lists_its_steps_and_checks(http, api_key):
    cascade = await cascade_create("c", [{"model": CHEAP, "labels": "yes, no", "threshold": 0.7}, {"model": STRONG}])
    await route_create("pick", strategy="cascade", cascade=cascade)
    body = (await http.post(PREVIEW, json=ask(), headers=auth(api_key))).json()
    assert body["cascade"]["name"] == "c"
    first, last = body["cascade"]["steps"]
    assert first["model"] == CHEAP and first["checks"] == {"labels": ["yes", "no"]} and first["threshold"] == 0.7
    assert last["model"] == STRONG and last["checks"] == {}


async def test_the_preview_refuses_what_the_chat_endpoint_refuses(http, api_key, pick):
    unknown = await http.get(PREVIEW, params={"model": "route:none", "content": "x"}, headers=auth(api_key))
    assert unknown.status_code == 404
    bad = await http.get(PREVIEW, params={"model": "route:pick", "min_quality": "2"}, headers=auth(api_key))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "min_quality"
    stray = await http.get(PREVIEW, params={"model": "route:pick", "colour": "red"}, headers=auth(api_key))
    assert stray.status_code == 400 and stray.json()["error"]["param"] == "colour"
    anonymous = await http.get(PREVIEW, params={"model": "route:pick", "content": "x"})
    assert anonymous.status_code == 401


# -- Pareto API -------------------------------------------------------------------------


async def test_the_pareto_endpoint_marks_the_options_no_other_beats(http, api_key, pick):
    response = await http.get("/api/routing/pareto", params={"route": "pick", "window": "24h"}, headers=auth(api_key))
    assert response.status_code == 200, response.text
    options = {o["option"]: o for o in response.json()["options"]}
    # Cheap is cheaper, strong is faster and better: neither dominates the other.
    assert options[CHEAP]["pareto"] and options[STRONG]["pareto"]
    assert options[STRONG]["p95_ms"] < options[CHEAP]["p95_ms"]
    assert options[CHEAP]["cost_per_1k"] == pytest.approx(0.02)
    assert options[STRONG]["quality"] == 0.92 and options[STRONG]["sources"]["quality"] == "evaluation"


async def test_an_option_beaten_on_all_three_is_not_on_the_frontier(http, api_key):
    third = "rt-judge"
    await route_create("pick", strategy="weighted", model_names=f"{CHEAP}, {STRONG}, {third}")
    await measured(CHEAP, 800.0, "0.00002")
    await measured(STRONG, 200.0, "0.002")
    await measured(third, 900.0, "0.003")
    await evaluated("pick", {CHEAP: 0.70, STRONG: 0.92, third: 0.5})
    body = (await http.get("/api/routing/pareto", params={"route": "pick"}, headers=auth(api_key))).json()
    assert set(body["frontier"]) == {CHEAP, STRONG}


async def test_the_pareto_window_counts_only_requests_inside_it(http, api_key, pick):
    body = (
        await http.get("/api/routing/pareto", params={"route": "pick", "window": "15s"}, headers=auth(api_key))
    ).json()
    options = {o["option"]: o for o in body["options"]}
    assert options[CHEAP]["samples"] < 30 and options[CHEAP]["sources"]["latency"].startswith(("prior", "unknown"))


@pytest.mark.parametrize("window", ["1y", "0h", "abc", "1000d", "00"])
async def test_a_bad_window_is_a_400(http, api_key, pick, window):
    response = await http.get("/api/routing/pareto", params={"route": "pick", "window": window}, headers=auth(api_key))
    assert response.status_code == 400 and response.json()["error"]["param"] == "window"


async def test_empty_limits_leave_the_route_to_its_rules(http, api_key, pick):
    response = await http.post(URL, json=ask(limits={}), headers=auth(api_key))
    assert response.status_code == 200
    assert "weighted choice" in response.headers["x-llmops-route-reason"]


async def test_requests_that_find_no_measurements_yet_share_one_load_of_them(pick):
    MEASURED.reset()
    found = await asyncio.gather(*(MEASURED.get([CHEAP, STRONG]) for _ in range(20)))
    # One load: every request got the same figures object (each load builds a new one).
    assert all(figures is found[0] for figures in found)
    assert found[0][CHEAP].samples == 30
