"""The openai provider end to end: the openai SDK as a client -> the gateway -> the provider
module's AsyncOpenAI -> a fake OpenAI server on a loopback port, and back."""

from __future__ import annotations

import gc
import json
import sys
from decimal import Decimal

import openai
import pytest

from llmops.catalog import EndpointConfig
from llmops.models import ModelEndpoint
from llmops.providers.base import EmbeddingProvider, ProviderCall, UpstreamError
from llmops.providers.openai import OpenAIProvider
from tests.conftest import add_endpoint, auth, flushed_metrics, sse_events
from tests.fakes.embeddings_server import FakeOpenAIEmbeddings, fake_embeddings_fixture, word_vector  # noqa: F401
from tests.fakes.openai_server import FakeOpenAI, fake_openai_fixture  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream_under_test")]

KEY_ENV = "LLMOPS_TEST_OPENAI_API_KEY"
KEY = "sk-fake-openai-SECRET-7f3a9c"
MODEL = "fake-gpt"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def model(fake_openai, monkeypatch, transactional_db) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    await add_endpoint(
        name=MODEL,
        provider="openai",
        upstream_model="gpt-fake-1",
        base_url=fake_openai.base_url,
        api_key_env=KEY_ENV,
        input_price_per_mtok=Decimal("2.50"),
        output_price_per_mtok=Decimal("10.00"),
        cached_input_price_per_mtok=Decimal("1.25"),
    )
    return MODEL


async def test_it_answers_with_the_upstream_text_usage_and_finish_reason(sdk, model, fake_openai):
    fake_openai.reply(text="Paris is the capital.", prompt_tokens=21, completion_tokens=5, finish_reason="length")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model, messages=messages, temperature=0.3, max_tokens=50, stop=["\n\n"], seed=7
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is the capital."
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 5)
    assert raw.headers["x-llmops-provider"] == "openai"
    assert raw.headers["x-llmops-model"] == model

    [request] = fake_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "gpt-fake-1"
    assert request.body["messages"] == messages
    assert request.body["temperature"] == 0.3
    assert request.body["stop"] == ["\n\n"]
    assert request.body["seed"] == 7
    # An OpenAI-compatible server (base_url set) gets the old name every server knows.
    assert request.body["max_tokens"] == 50
    assert "max_completion_tokens" not in request.body
    assert not request.body.get("stream")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in raw.text and KEY not in str(raw.headers)


async def test_it_streams_the_upstream_answer_piece_by_piece(sdk, model, fake_openai):
    fake_openai.reply(text="one two three four", prompt_tokens=9, completion_tokens=4)
    stream = await sdk.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}, max_tokens=20
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert [p for p in pieces if p] == ["one ", "two ", "three ", "four"]
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 4)

    [request] = fake_openai.requests
    assert request.body["stream"] is True
    assert request.body["max_tokens"] == 20
    assert request.headers["authorization"] == f"Bearer {KEY}"

    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.input_tokens, metric.output_tokens) == ("ok", True, 9, 4)


async def test_it_asks_the_upstream_for_usage_even_when_the_client_does_not(sdk, model, fake_openai):
    fake_openai.reply(text="a b", prompt_tokens=100, completion_tokens=2)
    stream = await sdk.chat.completions.create(model=model, messages=HELLO, stream=True)
    async for _ in stream:
        pass
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}
    [metric] = await flushed_metrics()
    assert (metric.input_tokens, metric.output_tokens) == (100, 2)
    assert metric.cost_usd == (100 * Decimal("2.50") + 2 * Decimal("10.00")) / 1_000_000


@pytest.mark.parametrize("stream", [False, True])
async def test_cached_prompt_tokens_cost_the_cached_price(sdk, model, fake_openai, stream):
    fake_openai.reply(text="cached answer", prompt_tokens=1234, cached_tokens=1024, completion_tokens=321)
    # 210 uncached at $2.50, 1024 cached at $1.25, 321 out at $10.00 per million.
    expected = Decimal("0.005015")
    if stream:
        chunks = await sdk.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        last = [chunk async for chunk in chunks][-1]
        usage, cost = last.usage, Decimal(last.model_extra["llmops"]["cost_usd"])
    else:
        raw = await sdk.chat.completions.with_raw_response.create(model=model, messages=HELLO)
        usage, cost = raw.parse().usage, Decimal(raw.headers["x-llmops-cost-usd"])
    assert usage.prompt_tokens == 1234
    assert usage.prompt_tokens_details.cached_tokens == 1024
    assert cost == expected

    [metric] = await flushed_metrics()
    assert metric.cost_usd == expected
    assert (metric.input_tokens, metric.cached_tokens, metric.output_tokens) == (1234, 1024, 321)
    assert metric.cache_write_tokens == 0


async def test_an_upstream_429_is_a_429_with_its_retry_after(http, api_key, model, fake_openai):
    fake_openai.fail(429, retry_after="7")
    response = await http.post("/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_exceeded"
    assert "Rate limit reached" in error["message"]
    assert len(fake_openai.requests) == 1

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", 429, "rate_limit_exceeded")


async def test_an_upstream_429_before_the_first_token_of_a_stream_is_a_429(sdk, model, fake_openai):
    fake_openai.fail(429, retry_after="3")
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=model, messages=HELLO, stream=True)
    assert caught.value.response.headers["retry-after"] == "3"
    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.http_status) == ("error", True, 429)


@pytest.mark.parametrize(
    ("upstream_status", "status", "error_type"),
    [(500, 502, "upstream_error"), (503, 502, "upstream_error"), (400, 400, "upstream_invalid_request")],
)
async def test_upstream_failures_map_to_gateway_statuses(
    http, api_key, model, fake_openai, upstream_status, status, error_type
):
    fake_openai.fail(upstream_status)
    response = await http.post("/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert "retry-after" not in response.headers

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", status, error_type)


async def test_an_upstream_401_is_a_502_that_leaks_nothing(http, api_key, model, fake_openai):
    fake_openai.expected_key = "sk-the-key-openai-expects"
    response = await http.post("/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "The upstream provider rejected the gateway's credentials."
    # The fake's 401 echoes the key it was sent; none of it may reach the client or the metrics.
    assert KEY in fake_openai.last.headers["authorization"]
    assert "SECRET" not in response.text and "Incorrect API key" not in response.text

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)
    assert "SECRET" not in metric.error_message


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_slower_than_the_timeout_is_a_504(http, api_key, model, fake_openai, settings, stream):
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 0.2
    if stream:
        fake_openai.event_delay_s = 2.0  # the head and the role chunk come at once, then the chunks stall
    else:
        fake_openai.delay_s = 2.0
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status, metric.error_type) == ("error", 504, "upstream_timeout")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_500_reaches_the_provider_caller_after_one_upstream_request(model, fake_openai, stream):
    # Retries are the gateway's own (its attempt loop, with backoff and a deadline): the SDK's are off.
    fake_openai.fail(500, times=3, headers={"retry-after-ms": "10"})
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    call = ProviderCall(messages=HELLO)
    with pytest.raises(UpstreamError) as caught:
        if stream:
            async for _ in OpenAIProvider().stream(config, call):
                pass
        else:
            await OpenAIProvider().complete(config, call)
    assert (caught.value.status, caught.value.error_type) == (502, "upstream_error")
    assert len(fake_openai.requests) == 1


async def test_a_mid_stream_failure_ends_the_stream_with_an_error_event(http, api_key, model, fake_openai):
    fake_openai.reply(text="one two three four five")
    fake_openai.break_stream(after=2, message="The server had an error while processing your request.")
    body = {"model": model, "messages": HELLO, "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 200  # the head was sent with the first token
    events = sse_events(response.text)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert "".join(t for t in texts if t) == "one two "
    error = chunks[-1]["error"]
    assert error["type"] == "upstream_error"
    assert error["message"]

    [metric] = await flushed_metrics()
    assert (metric.status, metric.stream, metric.http_status) == ("error", True, 502)
    assert metric.ttft_ms is not None
    # The two pieces sent were generated and billed upstream: they are counted, not lost.
    assert metric.output_tokens == 2 and metric.cost_usd > 0


async def test_a_connection_lost_mid_stream_ends_the_stream_with_an_error_event(http, api_key, model, fake_openai):
    fake_openai.reply(text="one two three four five")
    fake_openai.break_stream(after=2, drop=True)
    body = {"model": model, "messages": HELLO, "stream": True}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["message"]) == ("upstream_error", "The upstream model could not be reached.")

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)


async def test_the_sdk_raises_on_a_mid_stream_failure(sdk, model, fake_openai):
    fake_openai.reply(text="one two three four five")
    fake_openai.break_stream(after=3)
    stream = await sdk.chat.completions.create(model=model, messages=HELLO, stream=True)
    pieces = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "one two three "


async def test_a_stream_that_fails_before_its_first_token_gets_an_error_status(sdk, model, fake_openai):
    fake_openai.break_stream(after=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=model, messages=HELLO, stream=True)
    assert caught.value.status_code == 502


@pytest.mark.parametrize("with_base_url", [True, False])
async def test_a_missing_provider_key_is_a_502_naming_the_variable(
    http, api_key, fake_openai, monkeypatch, with_base_url
):
    monkeypatch.delenv("LLMOPS_TEST_UNSET_API_KEY", raising=False)
    await add_endpoint(
        name="keyless",
        provider="openai",
        upstream_model="gpt-fake-1",
        base_url=fake_openai.base_url if with_base_url else "",
        api_key_env="LLMOPS_TEST_UNSET_API_KEY",
    )
    response = await http.post(
        "/v1/chat/completions", json={"model": "keyless", "messages": HELLO}, headers=auth(api_key)
    )
    assert response.status_code == 502
    assert "LLMOPS_TEST_UNSET_API_KEY" in response.json()["error"]["message"]
    assert fake_openai.requests == []

    [metric] = await flushed_metrics()
    assert (metric.status, metric.http_status) == ("error", 502)


async def test_a_local_server_named_without_a_key_variable_is_called_without_a_key(sdk, fake_openai, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    await add_endpoint(name="local-vllm", provider="openai", upstream_model="llama", base_url=fake_openai.base_url)
    completion = await sdk.chat.completions.create(model="local-vllm", messages=HELLO)
    assert completion.choices[0].message.content == "Hello from the fake OpenAI."
    # No key at all, never the gateway's OpenAI key (see test_security.py).
    assert "authorization" not in fake_openai.last.headers


def test_the_fake_is_a_faithful_openai(fake_openai: FakeOpenAI):
    """The fake against the real SDK, no gateway: what the tests above rely on."""
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key=KEY, max_retries=0)
    fake_openai.reply(text="x y", prompt_tokens=3, completion_tokens=2, cached_tokens=1)
    chunks = list(
        client.chat.completions.create(model="m", messages=HELLO, stream=True, stream_options={"include_usage": True})
    )
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["x ", "y"]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1
    fake_openai.fail(429, retry_after="1")
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HELLO)
    assert caught.value.code == "rate_limit_exceeded"
    client.close()


# -- token logprobs (for confidence checks) ----------------------------------------------


async def test_it_reports_token_logprobs_when_asked(model, fake_openai):
    fake_openai.reply(text="Positive, surely.", token_logprobs=[-0.05, -1.5])
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    completion = await OpenAIProvider().complete(config, ProviderCall(messages=HELLO, logprobs=True))
    assert completion.text == "Positive, surely."
    assert completion.logprobs == [-0.05, -1.5]
    assert fake_openai.last.body["logprobs"] is True


async def test_it_asks_for_no_logprobs_unless_told_to(model, fake_openai):
    fake_openai.reply(text="Positive.", token_logprobs=[-0.05])
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    completion = await OpenAIProvider().complete(config, ProviderCall(messages=HELLO))
    assert completion.logprobs is None
    assert "logprobs" not in fake_openai.last.body
    assert set(fake_openai.last.body) == {"model", "messages"}


async def test_an_upstream_that_sends_no_logprobs_reports_none(model, fake_openai, monkeypatch):
    # Some compatible servers ignore the flag and answer `"logprobs": null`.
    monkeypatch.setattr(FakeOpenAI, "_logprobs", lambda self: None)
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    completion = await OpenAIProvider().complete(config, ProviderCall(messages=HELLO, logprobs=True))
    assert completion.text == "Hello from the fake OpenAI."
    assert completion.logprobs is None


def test_the_fake_sends_logprobs_in_openais_shape(fake_openai: FakeOpenAI):
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key=KEY, max_retries=0)
    fake_openai.reply(text="x é", token_logprobs=[-0.5, -0.25])
    choice = client.chat.completions.create(model="m", messages=HELLO, logprobs=True).choices[0]
    assert [(t.token, t.logprob, t.bytes, t.top_logprobs) for t in choice.logprobs.content] == [
        ("x ", -0.5, [120, 32], []),
        ("é", -0.25, [195, 169], []),
    ]
    assert choice.logprobs.refusal is None
    assert client.chat.completions.create(model="m", messages=HELLO).choices[0].logprobs is None
    client.close()
    with pytest.raises(ValueError, match="one value per piece"):
        fake_openai.reply(text="two words", token_logprobs=[-0.1])


async def test_a_server_that_reports_no_usage_is_billed_on_estimates(sdk, model, fake_openai):
    fake_openai.reply(text="one two three four five six seven eight", sends_usage=False)
    whole = await sdk.chat.completions.create(model=model, messages=HELLO)
    stream = await sdk.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    streamed_usage = None
    async for chunk in stream:
        streamed_usage = chunk.usage or streamed_usage
    # "Hello there" is 11 characters: 3 tokens at four characters a token.
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, 10)
    # Streamed, each piece counts as a token: the fake sends the text word by word.
    assert (streamed_usage.prompt_tokens, streamed_usage.completion_tokens) == (3, 8)
    metrics = await flushed_metrics()
    assert all(m.cost_usd > 0 for m in metrics)


# -- embeddings ------------------------------------------------------------------------


@pytest.fixture
async def embedding_model(fake_embeddings, monkeypatch, transactional_db) -> EndpointConfig:
    monkeypatch.setenv(KEY_ENV, KEY)
    fake_embeddings.expected_key = KEY
    row = await add_endpoint(
        name="fake-embed",
        provider="openai",
        upstream_model="text-embedding-fake",
        base_url=fake_embeddings.base_url,
        api_key_env=KEY_ENV,
    )
    return EndpointConfig.from_model(row)


@pytest.mark.parametrize("ignores_encoding_format", [False, True])
async def test_embed_returns_one_vector_per_text_in_order(embedding_model, fake_embeddings, ignores_encoding_format):
    fake_embeddings.ignores_encoding_format = ignores_encoding_format
    provider = OpenAIProvider()
    assert isinstance(provider, EmbeddingProvider)
    texts = ["the cat sat", "a dog ran far", "cat"]
    embeddings = await provider.embed(embedding_model, texts)
    assert len(embeddings.vectors) == 3
    for text, vector in zip(texts, embeddings.vectors, strict=True):
        assert vector == pytest.approx(word_vector(text, fake_embeddings.dimensions).tolist())
    assert embeddings.usage.input_tokens == 8  # the fake counts words
    [request] = fake_embeddings.requests
    assert request.path == "/v1/embeddings"
    assert request.body["model"] == "text-embedding-fake"
    assert request.body["input"] == texts
    assert request.headers["authorization"] == f"Bearer {KEY}"


async def test_embed_of_no_texts_calls_no_upstream(embedding_model, fake_embeddings):
    embeddings = await OpenAIProvider().embed(embedding_model, [])
    assert embeddings.vectors == [] and fake_embeddings.requests == []


@pytest.mark.parametrize(
    ("upstream_status", "status", "error_type"),
    [(429, 429, "rate_limit_exceeded"), (500, 502, "upstream_error"), (400, 400, "upstream_invalid_request")],
)
async def test_embed_failures_map_like_chat_after_one_request(
    embedding_model, fake_embeddings, upstream_status, status, error_type
):
    fake_embeddings.fail(upstream_status, times=3, retry_after="1")
    with pytest.raises(UpstreamError) as caught:
        await OpenAIProvider().embed(embedding_model, ["hello"])
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert len(fake_embeddings.requests) == 1


async def test_embed_on_a_server_of_its_own_sends_no_openai_key(fake_embeddings, monkeypatch, transactional_db):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    row = await add_endpoint(name="own-embed", provider="openai", base_url=fake_embeddings.base_url)
    await OpenAIProvider().embed(EndpointConfig.from_model(row), ["hello"])
    assert "sk-test-secret" not in str(fake_embeddings.last.headers)


async def test_embed_refuses_a_gateway_secret_as_its_key(fake_embeddings, monkeypatch, transactional_db):
    monkeypatch.setenv("SECRET_KEY", "django-secret-for-this-test")
    row = await add_endpoint(name="bad-embed", provider="openai", base_url=fake_embeddings.base_url)
    await ModelEndpoint.objects.filter(pk=row.pk).aupdate(api_key_env="SECRET_KEY")
    row = await ModelEndpoint.objects.aget(pk=row.pk)
    with pytest.raises(UpstreamError) as caught:
        await OpenAIProvider().embed(EndpointConfig.from_model(row), ["hello"])
    assert "bad-embed" in caught.value.message and "django-secret" not in caught.value.message
    assert fake_embeddings.requests == []


def test_the_upstream_proxy_comes_from_the_environment_with_no_proxy_honoured(monkeypatch):
    from llmops.providers import wire

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal,127.0.0.1")
    wire._proxy.cache_clear()
    try:
        assert wire._proxy("https://api.openai.com/v1/chat/completions") == "http://proxy.internal:3128"
        assert wire._proxy("http://gpu-box:8000/v1/chat/completions") == "http://plain-proxy.internal:3128"
        assert wire._proxy("http://vllm.internal:8000/v1/chat/completions") is None
        assert wire._proxy("http://127.0.0.1:8000/v1/chat/completions") is None
    finally:
        wire._proxy.cache_clear()


async def test_a_stream_left_after_its_first_piece_gives_its_upstream_response_back_at_once(model, fake_openai):
    # Closed by the provider, never left to the collector: an async generator dropped
    # unfinished reaches the loop's finalizer hook, which this test watches.
    fake_openai.event_delay_s = 0.05
    config = EndpointConfig.from_model(await ModelEndpoint.objects.aget(name=model))
    first_iter, finalizer = sys.get_asyncgen_hooks()
    dropped = []

    def watched(generator):
        dropped.append(generator.__qualname__)
        finalizer(generator)

    sys.set_asyncgen_hooks(firstiter=first_iter, finalizer=watched)
    try:
        stream = OpenAIProvider().stream(config, ProviderCall(messages=HELLO))
        await anext(stream)
        await stream.aclose()
        del stream
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter=first_iter, finalizer=finalizer)
    assert dropped == []
