"""Cascades through the real API and the real OpenAI SDK, against fake upstreams that speak
OpenAI's wire protocol (token log-probabilities included)."""

from __future__ import annotations

import asyncio
import json
import math
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.models import Q

from llmops import catalog
from llmops.pipeline import Inference, InferenceRequest
from llmops.upstream import InFlight
from monitoring.figures import metrics_summary
from monitoring.outcomes import AttemptRecord
from monitoring.windows import window_resolve
from tests.conftest import auth, flushed_metrics, sse_client_that_leaves, sse_events
from tests.routing.conftest import CHEAP, JUDGE, STRONG, cascade_create, route_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("routed_models")]

URL = "/v1/chat/completions"
LABELS = "positive, negative, neutral"


def ask(content: str = "I loved it", **extra) -> dict:
    return {"model": "route:tone", "messages": [{"role": "user", "content": content}], **extra}


async def sentiment_route(**first_step) -> None:
    await cascade_create("tone", [{"model": CHEAP, "threshold": 0.6, **first_step}, {"model": STRONG}])
    await route_create("tone", strategy="cascade", cascade=await _cascade("tone"))


async def _cascade(name: str):
    from routing.models import Cascade

    return await Cascade.objects.aget(name=name)


async def test_an_answer_that_passes_its_checks_is_kept_and_the_strong_model_is_never_asked(
    http, api_key, cheap_upstream, strong_upstream
):
    cheap_upstream.reply(text="Positive.", token_logprobs=[math.log(0.9)])
    await sentiment_route(labels=LABELS, confidence="mean")
    response = await http.post(URL, json=ask(), headers=auth(api_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Positive."
    assert response.headers["x-llmops-model"] == CHEAP
    assert response.headers["x-llmops-route"] == "tone"
    assert "cascade tone" in response.headers["x-llmops-route-reason"]
    assert strong_upstream.requests == []
    # The cheap model was asked for its token probabilities; the score is their mean.
    assert cheap_upstream.last.body["logprobs"] is True
    (step,) = body["llmops"]["cascade"]
    assert step["model"] == CHEAP and step["kept"] is True
    assert step["score"] == pytest.approx(0.9, abs=1e-3)
    assert body["llmops"]["quality"] == pytest.approx(0.9, abs=1e-3)


async def test_an_answer_outside_the_label_set_escalates_to_the_next_model(
    http, api_key, cheap_upstream, strong_upstream
):
    cheap_upstream.reply(text="I think it is good", prompt_tokens=20, completion_tokens=5)
    strong_upstream.reply(text="positive", prompt_tokens=20, completion_tokens=1)
    await sentiment_route(labels=LABELS)
    response = await http.post(URL, json=ask(), headers=auth(api_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "positive"
    assert response.headers["x-llmops-model"] == STRONG
    assert len(strong_upstream.requests) == 1
    # A step without a confidence check does not ask for token probabilities.
    assert "logprobs" not in cheap_upstream.last.body
    rejected, kept = body["llmops"]["cascade"]
    assert rejected["model"] == CHEAP and rejected["kept"] is False and rejected["score"] == 0
    assert "not one of" in rejected["why"]["labels"]
    assert kept["model"] == STRONG and kept["kept"] is True
    # The whole cascade's cost: the rejected cheap answer and the strong one.
    cheap_cost = (20 * Decimal("0.10") + 5 * Decimal("0.40")) / 1_000_000
    strong_cost = (20 * Decimal("3.00") + 1 * Decimal("15.00")) / 1_000_000
    assert Decimal(body["llmops"]["cost_usd"]) == cheap_cost + strong_cost
    assert Decimal(response.headers["x-llmops-cost-usd"]) == cheap_cost + strong_cost
    assert body["usage"]["prompt_tokens"] == 40 and body["usage"]["completion_tokens"] == 6


async def test_a_confident_enough_answer_is_kept_and_an_unsure_one_escalates(
    http, api_key, cheap_upstream, strong_upstream
):
    await sentiment_route(labels=LABELS, confidence="min")
    cheap_upstream.reply(text="negative", token_logprobs=[math.log(0.4)])
    unsure = await http.post(URL, json=ask("meh"), headers=auth(api_key))
    assert unsure.headers["x-llmops-model"] == STRONG
    cheap_upstream.reply(text="negative", token_logprobs=[math.log(0.7)])
    sure = await http.post(URL, json=ask("awful"), headers=auth(api_key))
    assert sure.headers["x-llmops-model"] == CHEAP
    assert len(strong_upstream.requests) == 1


async def test_every_attempt_is_recorded_with_its_model_score_and_cost(http, api_key, cheap_upstream):
    cheap_upstream.reply(text="maybe", prompt_tokens=10, completion_tokens=1)
    await sentiment_route(labels=LABELS)
    response = await http.post(URL, json=ask(), headers=auth(api_key))
    assert response.status_code == 200
    (row,) = await flushed_metrics(request_id=response.headers["x-llmops-request-id"])
    assert row.route == "tone"
    assert row.option == "cascade:tone"
    assert row.answered_by == STRONG
    cheap, strong = row.attempts
    assert cheap["model"] == CHEAP and cheap["score"] == 0 and Decimal(cheap["cost_usd"]) > 0
    assert strong["model"] == STRONG and cheap["latency_ms"] >= 0
    assert row.cost_usd == Decimal(response.json()["llmops"]["cost_usd"])


async def test_a_regular_expression_check_escalates_an_answer_that_does_not_match(
    http, api_key, cheap_upstream, strong_upstream
):
    await sentiment_route(pattern=r"^\d{4}-\d{2}-\d{2}$")
    cheap_upstream.reply(text="2026-12-01")
    kept = await http.post(URL, json=ask("When?"), headers=auth(api_key))
    assert kept.headers["x-llmops-model"] == CHEAP
    cheap_upstream.reply(text="Tuesday")
    escalated = await http.post(URL, json=ask("When again?"), headers=auth(api_key))
    assert escalated.headers["x-llmops-model"] == STRONG


async def test_a_json_schema_check_keeps_only_answers_that_fit_it(http, api_key, cheap_upstream):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    await sentiment_route(json_schema=schema)
    cheap_upstream.reply(text='```json\n{"name": "Ada"}\n```')
    assert (await http.post(URL, json=ask("a"), headers=auth(api_key))).headers["x-llmops-model"] == CHEAP
    cheap_upstream.reply(text='{"nom": "Ada"}')
    response = await http.post(URL, json=ask("b"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert "schema" in response.json()["llmops"]["cascade"][0]["why"]["json_schema"]
    cheap_upstream.reply(text="not json at all")
    assert (await http.post(URL, json=ask("c"), headers=auth(api_key))).headers["x-llmops-model"] == STRONG


async def test_a_judge_grades_the_answer_and_its_cost_is_counted(
    http, api_key, cheap_upstream, judge_upstream, strong_upstream
):
    rubric = "Score 1 if the answer is a polite greeting, 0 if not."
    await sentiment_route(judge_model=JUDGE, judge_rubric=rubric, threshold=0.7)
    cheap_upstream.reply(text="Hello, nice to meet you.", prompt_tokens=8, completion_tokens=6)
    judge_upstream.reply(text="0.9\nIt is polite.", prompt_tokens=50, completion_tokens=4)
    response = await http.post(URL, json=ask("Say hello"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == CHEAP
    judged = judge_upstream.last.body
    assert rubric in judged["messages"][1]["content"] and "Hello, nice to meet you." in judged["messages"][1]["content"]
    step = response.json()["llmops"]["cascade"][0]
    assert step["checks"]["judge"] == pytest.approx(0.9)
    answer_cost = (8 * Decimal("0.10") + 6 * Decimal("0.40")) / 1_000_000
    judge_cost = (50 * Decimal("0.10") + 4 * Decimal("0.40")) / 1_000_000
    assert Decimal(response.json()["llmops"]["cost_usd"]) == answer_cost + judge_cost
    assert strong_upstream.requests == []


@pytest.mark.parametrize("reply", ["Great answer, 0.9", "score: 0.9", "1.5", "", "0.9 because it is polite"])
async def test_a_judge_reply_without_a_strict_score_fails_the_check(
    http, api_key, cheap_upstream, judge_upstream, reply
):
    await sentiment_route(judge_model=JUDGE, judge_rubric="Score 1 if polite, else 0.", threshold=0.5)
    cheap_upstream.reply(text="Hello")
    judge_upstream.reply(text=reply or " ")
    response = await http.post(URL, json=ask("Say hello"), headers=auth(api_key))
    assert response.headers["x-llmops-model"] == STRONG
    assert response.json()["llmops"]["cascade"][0]["checks"]["judge"] == 0


async def test_checks_combine_and_all_must_pass(http, api_key, cheap_upstream):
    await sentiment_route(labels=LABELS, confidence="mean")
    # A label from the set, but unsure: the lowest score decides.
    cheap_upstream.reply(text="neutral", token_logprobs=[math.log(0.2)])
    response = await http.post(URL, json=ask(), headers=auth(api_key))
    step = response.json()["llmops"]["cascade"][0]
    assert step["checks"]["labels"] == 1 and step["checks"]["confidence"] == pytest.approx(0.2, abs=1e-3)
    assert step["score"] == pytest.approx(0.2, abs=1e-3)
    assert response.headers["x-llmops-model"] == STRONG


async def test_a_failing_cheap_model_escalates_to_the_next_step(http, api_key, cheap_upstream, strong_upstream):
    await sentiment_route(labels=LABELS)
    cheap_upstream.fail(500, times=10)
    response = await http.post(URL, json=ask(), headers=auth(api_key))
    assert response.status_code == 200
    assert response.headers["x-llmops-model"] == STRONG
    assert response.json()["llmops"]["cascade"][0]["error"] == "error"


async def test_a_streamed_cascade_buffers_the_cheap_step_then_streams_the_kept_answer(
    http, api_key, cheap_upstream, strong_upstream
):
    cheap_upstream.reply(text="not sure")
    strong_upstream.reply(text="the answer is positive")
    await sentiment_route(labels=LABELS)
    response = await http.post(URL, json=ask(stream=True), headers=auth(api_key))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    # Nothing of the rejected answer reached the client.
    assert text == "the answer is positive"
    assert {c["model"] for c in chunks} == {STRONG}
    assert response.headers["x-llmops-route"] == "tone"
    # The last step has no checks: it streamed from the upstream itself.
    assert strong_upstream.last.body["stream"] is True


async def test_a_kept_cheap_answer_streams_in_words(http, api_key, cheap_upstream):
    cheap_upstream.reply(text="positive", token_logprobs=[math.log(0.95)])
    await sentiment_route(labels=LABELS, confidence="mean")
    response = await http.post(URL, json=ask(stream=True), headers=auth(api_key))
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "positive"
    assert "stream" not in cheap_upstream.last.body or cheap_upstream.last.body["stream"] is False


async def test_the_sdk_sees_the_route_and_the_cascade(sdk, cheap_upstream):
    cheap_upstream.reply(text="negative", token_logprobs=[math.log(0.99)])
    await sentiment_route(labels=LABELS, confidence="mean")
    raw = await sdk.chat.completions.with_raw_response.create(
        model="route:tone", messages=[{"role": "user", "content": "awful"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "negative"
    assert completion.model == CHEAP
    assert raw.headers["x-llmops-route"] == "tone"


def test_attempt_records_dump_their_score_and_cost():
    record = AttemptRecord("m", "ok", 1.23456, 200, score=0.5, cost_usd=Decimal("0.0001"), role="judge")
    assert record.dump() == {
        "model": "m",
        "outcome": "ok",
        "latency_ms": 1.235,
        "status": 200,
        "score": 0.5,
        "cost_usd": "0.0001",
        "role": "judge",
    }


async def test_a_steps_max_tokens_caps_what_its_model_may_answer_with(http, api_key, cheap_upstream):
    cheap_upstream.reply(text="positive")
    await sentiment_route(labels=LABELS, max_tokens=3)
    await http.post(URL, json=ask(max_tokens=100), headers=auth(api_key))
    assert cheap_upstream.last.body["max_tokens"] == 3
    await http.post(URL, json=ask("again", max_tokens=2), headers=auth(api_key))
    assert cheap_upstream.last.body["max_tokens"] == 2


@pytest.mark.local_model
async def test_the_seeded_sentiment_cascade_scores_the_local_models_answer_by_its_token_probabilities(http, api_key):
    """The real SmolLM2 answers first; its answer's mean token probability is its score."""
    body = {
        "model": "route:sentiment",
        "prompt": "sentiment",
        "variables": {"text": "I loved every minute of it, a wonderful film."},
        "temperature": 0,
    }
    response = await http.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 200, response.text
    first = response.json()["llmops"]["cascade"][0]
    assert first["model"] == "smollm2-135m"
    checks = first["checks"]
    assert set(checks) == {"labels", "confidence"}
    if checks["labels"] == 1:
        assert 0 < checks["confidence"] <= 1
        assert first["score"] == pytest.approx(checks["confidence"], abs=1e-4)
    assert first["kept"] == (first["score"] >= first["threshold"])
    assert response.headers["x-llmops-model"] == ("smollm2-135m" if first["kept"] else "sim-large")


async def test_a_websocket_chat_through_a_cascade_streams_the_kept_answer_and_says_so(
    asgi_app, api_key, cheap_upstream
):
    cheap_upstream.reply(text="maybe")
    await sentiment_route(labels=LABELS)
    socket = WebsocketCommunicator(asgi_app, "/ws/v1/chat", headers=[(b"authorization", f"Bearer {api_key}".encode())])
    assert (await socket.connect())[0]
    await socket.send_json_to({"type": "chat", "id": 1, **ask("hmm")})
    events = []
    while not events or events[-1]["type"] not in ("done", "error"):
        events.append(await socket.receive_json_from(timeout=5))
    await socket.disconnect()
    done = events[-1]
    assert done["type"] == "done", done
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "positive"
    assert done["model"] == STRONG and done["route"] == "tone"
    assert [step["model"] for step in done["cascade"]] == [CHEAP, STRONG]


# -- every way out gives back what the request took ------------------------------------------


async def test_a_client_that_leaves_while_the_cheap_step_answers_frees_everything(
    asgi_app, api_key, settings, cheap_upstream, strong_upstream
):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    await sentiment_route(labels=LABELS)
    cheap_upstream.delay_s = 2.0
    cheap_upstream.notice_hangups = True
    # The headers and a first keep-alive went out; no token yet; the user closes the tab.
    sent = await sse_client_that_leaves(
        asgi_app, api_key, ask(stream=True), leave_when=lambda sent: any(m.get("body") for m in sent)
    )
    assert sent[0]["status"] == 200
    assert InFlight.current == 0 and InFlight.by_model[CHEAP] == 0
    assert strong_upstream.requests == []
    (row,) = await flushed_metrics()
    assert (row.status, row.http_status, row.route) == ("cancelled", 499, "tone")
    assert [a["outcome"] for a in row.attempts] == ["cancelled"]


async def test_a_request_cancelled_while_the_judge_grades_still_pays_for_the_answer_it_got(
    api_key, cheap_upstream, judge_upstream, strong_upstream
):
    await sentiment_route(judge_model=JUDGE, judge_rubric="Score 1 if polite, else 0.", threshold=0.5)
    cheap_upstream.reply(text="Hello", prompt_tokens=10, completion_tokens=2)
    judge_upstream.delay_s = 2.0
    judge_upstream.notice_hangups = True
    key = await catalog.api_key_get(api_key)
    inference = Inference(InferenceRequest(api_key=key, model="route:tone", messages=ask()["messages"]), stream=False)
    await inference.open()
    first = asyncio.ensure_future(inference.first())
    while not judge_upstream.requests:
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await inference.aclose()
    assert InFlight.current == 0 and InFlight.by_model[JUDGE] == 0
    assert strong_upstream.requests == []
    (row,) = await flushed_metrics()
    assert row.status == "cancelled"
    # The cheap model's answer was generated and billed before the client left.
    assert row.cost_usd == (10 * Decimal("0.10") + 2 * Decimal("0.40")) / 1_000_000
    assert [(a["model"], a.get("role", "")) for a in row.attempts] == [(CHEAP, ""), (JUDGE, "judge")]


async def test_the_escalation_rate_counts_cascades_that_went_past_their_first_step(
    http, api_key, cheap_upstream, strong_upstream
):
    await sentiment_route(labels=LABELS)
    cheap_upstream.reply(text="positive", prompt_tokens=20, completion_tokens=1)
    assert (await http.post(URL, json=ask(), headers=auth(api_key))).headers["x-llmops-model"] == CHEAP
    cheap_upstream.fail(500, times=10)  # a step whose models all fail escalates too
    assert (await http.post(URL, json=ask(content="Another one"), headers=auth(api_key))).status_code == 200
    rows = await flushed_metrics()
    assert [row.cascade_steps for row in rows] == [1, 2]
    summary = await sync_to_async(metrics_summary)(window=window_resolve(window="15m"), where=Q())
    assert summary["quality"]["cascades"] == 2 and summary["quality"]["escalation_rate"] == 0.5
