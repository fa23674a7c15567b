from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import openai
import pytest

from llmops.models import PromptTemplate
from llmops.usage import estimate_tokens
from tests.conftest import auth, flushed_metrics, sse_client_that_leaves, sse_events, stream_scope

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello there"}]


async def test_it_lists_enabled_models(sdk):
    names = {m.id async for m in sdk.models.list()}
    assert {"smollm2-135m", "sim-small", "sim-large"} <= names
    # Cloud models are seeded disabled when the gateway holds no provider key.
    assert "gpt-4o-mini" not in names


async def test_it_answers_a_chat_completion_with_usage_and_headers(sdk):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="sim-small", messages=HELLO, extra_body={"simulate": {"output_tokens": 5}}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Simulated answer from the llmops"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-llmops-model"] == "sim-small"
    assert raw.headers["x-llmops-provider"] == "simulated"
    assert raw.headers["x-llmops-cache"] == "miss"
    assert raw.headers["x-llmops-simulated"] == "true"
    # sim-small: $0.10 in / $0.40 out per million tokens.
    expected = (Decimal(completion.usage.prompt_tokens) * Decimal("0.10") + 5 * Decimal("0.40")) / 1_000_000
    assert Decimal(raw.headers["x-llmops-cost-usd"]) == expected
    assert completion.id == f"chatcmpl-{raw.headers['x-llmops-request-id']}"


async def test_it_streams_chunks_ending_with_usage(sdk):
    stream = await sdk.chat.completions.create(
        model="sim-small",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"simulate": {"output_tokens": 4, "ttft_ms": 0, "tokens_per_s": 0}},
    )
    pieces, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "Simulated answer from the"
    assert finish == "stop"
    assert usage.completion_tokens == 4


async def test_the_stream_ends_with_done_and_no_usage_unless_asked(http, api_key, seeded):
    body = {"model": "sim-small", "messages": HELLO, "stream": True, "simulate": {"output_tokens": 2}}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any("usage" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_it_records_a_metric_for_each_request(sdk):
    await sdk.chat.completions.create(model="sim-small", messages=HELLO, extra_body={"simulate": {"output_tokens": 3}})
    stream = await sdk.chat.completions.create(
        model="sim-small", messages=HELLO, stream=True, extra_body={"simulate": {"output_tokens": 3, "ttft_ms": 5}}
    )
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="no-such-model", messages=HELLO)

    metrics = await flushed_metrics()
    assert [(m.model, m.status, m.stream) for m in metrics] == [
        ("sim-small", "ok", False),
        ("sim-small", "ok", True),
        ("no-such-model", "error", False),
    ]
    whole, streamed, failed = metrics
    assert whole.output_tokens == 3 and whole.cost_usd > 0 and whole.ttft_ms is None
    assert streamed.ttft_ms is not None and streamed.ttft_ms >= 5 and streamed.latency_ms >= streamed.ttft_ms
    assert failed.http_status == 404 and failed.error_type == "not_found_error"
    assert all(m.api_key is not None and m.cache_status == "miss" for m in metrics)


async def test_a_prompt_template_fills_its_variables(sdk):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="sim-small", messages=[], extra_body={"prompt": "sentiment", "variables": {"text": "I love it"}}
    )
    assert raw.status_code == 200
    [metric] = await flushed_metrics()
    assert metric.prompt == "sentiment@1"
    # The template's messages and "Text: I love it", about four characters a token.
    prompt = await PromptTemplate.objects.aget(name="sentiment", version=1)
    rendered = "".join(m["content"] for m in prompt.messages).replace("{{text}}", "I love it")
    assert metric.input_tokens == estimate_tokens(rendered)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"prompt": "sentiment", "variables": {}}, "needs the variable 'text'"),
        ({"prompt": "sentiment@x", "variables": {"text": "a"}}, "name@version"),
    ],
)
async def test_a_bad_prompt_reference_is_a_400(sdk, extra, message):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="sim-small", messages=[], extra_body=extra)
    assert message in caught.value.body["message"]


async def test_an_unknown_prompt_is_a_404_naming_it(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model="sim-small", messages=[], extra_body={"prompt": "nope"})
    assert caught.value.body["code"] == "prompt_not_found"
    assert "There is no prompt named 'nope'" in caught.value.body["message"]


async def test_a_client_that_leaves_before_the_first_chunk_frees_the_upstream_call(asgi_app, api_key, seeded):
    from llmops.upstream import InFlight

    body = {"model": "sim-small", "messages": HELLO, "stream": True, "simulate": {"output_tokens": 50}}
    pending = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    left = asyncio.Event()

    async def receive():
        if pending:
            return pending.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        # A server under back-pressure: the headers wait on a slow client, who leaves.
        left.set()
        await asyncio.sleep(3600)

    await asyncio.wait_for(asgi_app(stream_scope(api_key), receive, send), timeout=5)
    assert InFlight.current == 0
    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream) == ("cancelled", True)


async def test_a_small_cost_is_written_in_plain_digits(http, seeded, api_key):
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "simulate": {"output_tokens": 1}}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    # 1 input token at $0.10 and 1 output token at $0.40 per million.
    assert response.headers["x-llmops-cost-usd"] == "0.0000005000"
    assert response.json()["llmops"]["cost_usd"] == "0.0000005000"


async def test_a_client_that_leaves_mid_stream_stops_the_upstream_call(asgi_app, api_key, seeded):
    from llmops.upstream import InFlight

    body = {
        "model": "sim-small",
        "messages": HELLO,
        "stream": True,
        "simulate": {"ttft_ms": 0, "tokens_per_s": 50, "output_tokens": 500},
    }
    # The user closes the tab after a few tokens.
    sent = await sse_client_that_leaves(
        asgi_app, api_key, body, leave_when=lambda sent: sum(m["type"] == "http.response.body" for m in sent) == 4
    )
    assert sent[0]["status"] == 200
    assert InFlight.current == 0
    [metric] = await flushed_metrics()
    assert metric.status == "cancelled" and metric.http_status == 499
    # Stopped after a handful of the 500 tokens: nothing generated after the client left.
    assert 0 < metric.output_tokens < 20


async def test_a_slow_first_token_gets_keep_alive_comments_meanwhile(sdk, http, api_key, settings):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    body = {
        **{"model": "sim-small", "messages": HELLO, "stream": True},
        "simulate": {"ttft_ms": 300, "output_tokens": 3},
    }
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 200
    blocks = response.text.split("\n\n")
    first_data = next(i for i, block in enumerate(blocks) if block.startswith("data: "))
    assert first_data >= 2 and all(block == ": keep-alive" for block in blocks[:first_data])
    # The SDK skips the comments, as any SSE client must.
    stream = await sdk.chat.completions.create(
        model="sim-small",
        messages=HELLO,
        stream=True,
        extra_body={"simulate": {"ttft_ms": 300, "output_tokens": 3}, "cache": {"mode": "bypass"}},
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Simulated answer from"


async def test_a_failure_after_the_keep_alives_is_an_error_event(http, seeded, api_key, settings):
    settings.LLMOPS_SSE_KEEPALIVE_S = 0.05
    body = {"model": "sim-small", "messages": HELLO, "stream": True, "simulate": {"ttft_ms": 200, "error_rate": 1}}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert json.loads(events[-1])["error"]["type"] == "upstream_error" and "[DONE]" not in events
    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)
