"""The anthropic provider end to end: the openai SDK as a client -> the gateway -> the
provider module's AsyncAnthropic -> a fake Anthropic server on a loopback port, and back."""

from __future__ import annotations

import gc
import json
import sys
from decimal import Decimal

import anthropic
import openai
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION

from llmops.catalog import EndpointConfig
from llmops.models import ModelEndpoint
from llmops.providers.anthropic import AnthropicProvider
from llmops.providers.base import ProviderCall, UpstreamError
from tests.conftest import add_endpoint, auth, flushed_metrics, sse_events
from tests.fakes.anthropic_server import FakeAnthropic, fake_anthropic_fixture, presented_key  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream_under_test")]

KEY_ENV = "LLMOPS_TEST_ANTHROPIC_API_KEY"
KEY = "sk-ant-fake-SECRET-51c0de"
MODEL = "fake-claude"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def model(fake_anthropic, monkeypatch, transactional_db) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    await add_endpoint(
        name=MODEL,
        provider="anthropic",
        upstream_model="claude-fake-4-5",
        base_url=fake_anthropic.base_url,
        api_key_env=KEY_ENV,
        input_price_per_mtok=Decimal("3.00"),
        output_price_per_mtok=Decimal("15.00"),
        cached_input_price_per_mtok=Decimal("0.30"),
        cache_write_price_per_mtok=Decimal("3.75"),
    )
    return MODEL


async def ask(sdk, model: str, *, stream: bool, **params) -> tuple[str, str | None, object, Decimal]:
    """One request through the openai SDK: the text, finish reason, usage and the gateway's cost."""
    if not stream:
        raw = await sdk.chat.completions.with_raw_response.create(model=model, **params)
        completion = raw.parse()
        choice = completion.choices[0]
        return choice.message.content, choice.finish_reason, completion.usage, Decimal(raw.headers["x-llmops-cost-usd"])
    chunks = await sdk.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **params
    )
    pieces, finish, last = [], None, None
    async for chunk in chunks:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        last = chunk
    return "".join(pieces), finish, last.usage, Decimal(last.model_extra["llmops"]["cost_usd"])


@pytest.mark.parametrize("stream", [False, True])
async def test_it_answers_with_the_upstream_text_usage_and_finish_reason(sdk, model, fake_anthropic, stream):
    fake_anthropic.reply(text="Paris is the capital.", input_tokens=21, output_tokens=6)
    text, finish, usage, _ = await ask(
        sdk, model, stream=stream, messages=HELLO, temperature=0.3, max_tokens=50, stop=["\n\nHuman:"]
    )
    assert text == "Paris is the capital."
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (21, 6)

    [request] = fake_anthropic.requests
    assert request.path == "/v1/messages"
    assert request.body["model"] == "claude-fake-4-5"
    assert request.body["messages"] == HELLO
    assert request.body["max_tokens"] == 50
    assert request.body["stop_sequences"] == ["\n\nHuman:"]
    # The SDK's API version answers 400 to any sampling parameter: it must not be passed on.
    assert "temperature" not in request.body
    assert "system" not in request.body
    assert bool(request.body.get("stream")) is stream
    assert presented_key(request) == KEY
    # The API version the SDK is written for, as the SDK itself would send it.
    assert request.headers["anthropic-version"] == ANTHROPIC_API_VERSION

    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.provider) == ("ok", stream, "anthropic")
    # message_start says 1 output token and message_delta the cumulative 6: 6, never 7.
    assert (metric.input_tokens, metric.output_tokens) == (21, 6)


async def test_the_provider_key_never_reaches_the_client(http, api_key, model, fake_anthropic):
    for stream in (False, True):
        body = {"model": model, "messages": HELLO, "stream": stream}
        response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
        assert response.status_code == 200
        assert KEY not in response.text and KEY not in str(response.headers)
    assert [presented_key(r) for r in fake_anthropic.requests] == [KEY, KEY]


async def test_max_tokens_defaults_when_the_client_gives_none(sdk, model, fake_anthropic):
    await sdk.chat.completions.create(model=model, messages=HELLO)
    assert fake_anthropic.last.body["max_tokens"] == 1024  # Anthropic requires it


async def test_messages_are_mapped_to_anthropics_shape(sdk, model, fake_anthropic):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Bien."},
        {"role": "assistant", "content": "Et vous ?"},
        {"role": "user", "content": "Good."},
    ]
    await sdk.chat.completions.create(model=model, messages=messages)
    body = fake_anthropic.last.body
    assert body["system"] == "Be brief.\n\nAnswer in French."
    # Alternating turns starting with the user: a conversation opened by the assistant gets
    # a user turn first, and consecutive turns of one role merge.
    assert body["messages"] == [
        {"role": "user", "content": "(continue)"},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Hi\n\nHow are you?"},
        {"role": "assistant", "content": "Bien.\n\nEt vous ?"},
        {"role": "user", "content": "Good."},
    ]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"), [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop")]
)
async def test_stop_reasons_map_to_finish_reasons(sdk, model, fake_anthropic, stream, stop_reason, finish_reason):
    fake_anthropic.reply(text="cut short", stop_reason=stop_reason)
    _, finish, _, _ = await ask(sdk, model, stream=stream, messages=HELLO)
    assert finish == finish_reason


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cache_write_then_a_cache_read_cost_exactly(sdk, model, fake_anthropic, stream):
    # $3.00 input, $3.75 cache write, $0.30 cache read, $15.00 output, per million tokens.
    fake_anthropic.reply(text="first", input_tokens=20, cache_creation_input_tokens=1500, output_tokens=40)
    _, _, usage, cost = await ask(sdk, model, stream=stream, messages=HELLO)
    # 20 * 3.00 + 1500 * 3.75 + 40 * 15.00 = 6285 millionths of a dollar.
    assert cost == Decimal("0.006285")
    assert usage.prompt_tokens == 1520
    assert usage.prompt_tokens_details.cached_tokens == 0

    fake_anthropic.reply(text="second", input_tokens=20, cache_read_input_tokens=1500, output_tokens=40)
    _, _, usage, cost = await ask(sdk, model, stream=stream, messages=HELLO)
    # 20 * 3.00 + 1500 * 0.30 + 40 * 15.00 = 1110 millionths of a dollar.
    assert cost == Decimal("0.00111")
    assert usage.prompt_tokens == 1520
    assert usage.prompt_tokens_details.cached_tokens == 1500

    write, read = await flushed_metrics()
    assert (write.cost_usd, write.cache_write_tokens, write.cached_tokens) == (Decimal("0.006285"), 1500, 0)
    assert (read.cost_usd, read.cache_write_tokens, read.cached_tokens) == (Decimal("0.00111"), 0, 1500)
    assert (write.input_tokens, write.output_tokens) == (read.input_tokens, read.output_tokens) == (1520, 40)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_429_is_a_429_with_its_retry_after(http, api_key, model, fake_anthropic, stream):
    fake_anthropic.fail(429, retry_after="7")
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_exceeded"
    assert "rate limit" in error["message"]
    assert len(fake_anthropic.requests) == 1

    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.http_status) == ("error", stream, 429)


@pytest.mark.parametrize(
    ("upstream_status", "status", "error_type"),
    [(500, 502, "upstream_error"), (529, 502, "upstream_error"), (400, 400, "upstream_invalid_request")],
)
async def test_upstream_failures_map_to_gateway_statuses(
    http, api_key, model, fake_anthropic, upstream_status, status, error_type
):
    fake_anthropic.fail(upstream_status)
    response = await http.post("/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", status, error_type)


async def test_an_upstream_401_is_a_502_that_leaks_nothing(http, api_key, model, fake_anthropic):
    fake_anthropic.expected_key = "sk-ant-the-key-anthropic-expects"
    response = await http.post("/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "The upstream provider rejected the gateway's credentials."
    assert "SECRET" not in response.text and "invalid x-api-key" not in response.text

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)
    assert "SECRET" not in metric.error_message


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_slower_than_the_timeout_is_a_504(http, api_key, model, fake_anthropic, settings, stream):
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 0.2
    if stream:
        fake_anthropic.event_delay_s = 2.0  # the head comes at once, then the events stall
    else:
        fake_anthropic.delay_s = 2.0
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", 504, "upstream_timeout")


@pytest.mark.parametrize("status", [500, 529])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_5xx_reaches_the_provider_caller_after_one_upstream_request(model, fake_anthropic, stream, status):
    # Retries are the gateway's own (its attempt loop, with backoff and a deadline): the SDK's are off.
    fake_anthropic.fail(status, times=3, headers={"retry-after-ms": "10"})
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    call = ProviderCall(messages=HELLO)
    with pytest.raises(UpstreamError) as caught:
        if stream:
            async for _ in AnthropicProvider().stream(config, call):
                pass
        else:
            await AnthropicProvider().complete(config, call)
    assert caught.value.status == 502
    assert len(fake_anthropic.requests) == 1


async def test_a_mid_stream_error_event_ends_the_stream_with_an_error_event(http, api_key, model, fake_anthropic):
    fake_anthropic.reply(text="one two three four five")
    fake_anthropic.break_stream(after=2, message="Overloaded")
    body = {"model": model, "messages": HELLO, "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert "".join(t for t in texts if t) == "one two "
    error = chunks[-1]["error"]
    assert error["type"] == "upstream_error"
    assert "Overloaded" in error["message"]

    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.http_status) == ("error", True, 502)


async def test_a_connection_lost_mid_stream_ends_the_stream_with_an_error_event(http, api_key, model, fake_anthropic):
    fake_anthropic.reply(text="one two three four five")
    fake_anthropic.break_stream(after=2, drop=True)
    body = {"model": model, "messages": HELLO, "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["message"]) == ("upstream_error", "The upstream model could not be reached.")

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.output_tokens) == ("error", 502, 2)


async def test_the_sdk_raises_on_a_mid_stream_error_event(sdk, model, fake_anthropic):
    fake_anthropic.reply(text="one two three four five")
    fake_anthropic.break_stream(after=3)
    stream = await sdk.chat.completions.create(model=model, messages=HELLO, stream=True)
    pieces = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "one two three "


async def test_a_missing_provider_key_is_a_502_naming_the_variable(http, api_key, fake_anthropic, monkeypatch):
    monkeypatch.delenv("LLMOPS_TEST_UNSET_API_KEY", raising=False)
    await add_endpoint(
        name="keyless-claude",
        provider="anthropic",
        upstream_model="claude-fake-4-5",
        base_url=fake_anthropic.base_url,
        api_key_env="LLMOPS_TEST_UNSET_API_KEY",
    )
    response = await http.post(
        "/v1/chat/completions", json={"model": "keyless-claude", "messages": HELLO}, headers=auth(api_key)
    )
    assert response.status_code == 502
    assert "LLMOPS_TEST_UNSET_API_KEY" in response.json()["error"]["message"]
    assert fake_anthropic.requests == []

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)


def test_the_fake_is_a_faithful_anthropic(fake_anthropic: FakeAnthropic):
    """The fake against the real SDK, no gateway: what the tests above rely on."""
    client = anthropic.Anthropic(base_url=fake_anthropic.base_url, api_key=KEY, max_retries=0)
    fake_anthropic.reply(text="x y", input_tokens=3, output_tokens=2, cache_read_input_tokens=5)
    events = list(client.messages.create(model="m", max_tokens=8, messages=HELLO, stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the ping is skipped by the SDK
    assert events[0].message.usage.cache_read_input_tokens == 5
    assert events[-2].usage.output_tokens == 2
    # The SDK's own accumulator agrees on the final message.
    with client.messages.stream(model="m", max_tokens=8, messages=HELLO) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "x y"
    assert (message.usage.output_tokens, message.stop_reason) == (2, "end_turn")
    fake_anthropic.fail(529)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=8, messages=HELLO)
    assert caught.value.status_code == 529
    assert caught.value.type == "overloaded_error"
    client.close()


async def test_a_stream_left_after_its_first_piece_gives_its_upstream_response_back_at_once(model, fake_anthropic):
    # Closed by the provider, never left to the collector: an async generator dropped
    # unfinished reaches the loop's finalizer hook, which this test watches.
    fake_anthropic.event_delay_s = 0.05
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    first_iter, finalizer = sys.get_asyncgen_hooks()
    dropped = []

    def watched(generator):
        dropped.append(generator.__qualname__)
        finalizer(generator)

    sys.set_asyncgen_hooks(firstiter=first_iter, finalizer=watched)
    try:
        stream = AnthropicProvider().stream(config, ProviderCall(messages=HELLO))
        await anext(stream)
        await stream.aclose()
        del stream
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter=first_iter, finalizer=finalizer)
    assert dropped == []
