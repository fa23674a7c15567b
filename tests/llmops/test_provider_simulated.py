"""The simulated provider's scripted answers: token probabilities for confidence checks, and
the stand-in for a strong model that is told the correct label."""

from __future__ import annotations

import math

import pytest

from llmops.catalog import EndpointConfig
from llmops.models import ModelEndpoint
from llmops.providers.base import ProviderCall
from llmops.providers.simulated import SimulatedProvider, validate_overrides
from tests.conftest import auth

LABELS = ["positive", "negative", "neutral"]
REVIEW = [{"role": "user", "content": "Sentiment of: 'I loved it.'"}]


def endpoint(**simulation) -> EndpointConfig:
    return EndpointConfig.from_model(ModelEndpoint(name="sim", provider="simulated", simulation=simulation))


def review(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Sentiment of review #{n}: 'It was fine, I guess.'"}]


async def complete(messages=REVIEW, *, logprobs: bool = False, model: EndpointConfig | None = None, **simulate):
    call = ProviderCall(messages=messages, simulate=validate_overrides(simulate), logprobs=logprobs)
    return await SimulatedProvider().complete(model or endpoint(), call)


# -- token probabilities -----------------------------------------------------------------


async def test_it_reports_the_token_prob_for_every_output_token_when_asked():
    completion = await complete(logprobs=True, output_tokens=5, token_prob=0.8)
    assert completion.logprobs == pytest.approx([math.log(0.8)] * 5)
    assert completion.usage.output_tokens == 5


async def test_a_model_setting_token_prob_reports_it_too():
    completion = await complete(logprobs=True, model=endpoint(token_prob=1, output_tokens=3))
    assert completion.logprobs == [0.0, 0.0, 0.0]


async def test_it_reports_no_logprobs_unless_asked_or_without_a_token_prob():
    assert (await complete(token_prob=0.8)).logprobs is None
    assert (await complete(logprobs=True)).logprobs is None
    assert (await complete(logprobs=True, token_prob=0)).logprobs is None


# -- the stand-in told the correct label -------------------------------------------------


async def test_with_answer_accuracy_1_the_stand_in_always_gives_the_answer():
    for n in range(50):
        completion = await complete(review(n), answer="positive", answer_choices=LABELS)
        assert completion.text == "positive"
        assert completion.finish_reason == "stop"
        assert completion.simulated


async def test_with_answer_accuracy_0_it_never_does_and_gives_another_choice():
    answers = {
        (await complete(review(n), answer="positive", answer_accuracy=0, answer_choices=LABELS)).text for n in range(50)
    }
    assert answers == {"negative", "neutral"}


async def test_with_no_other_choice_a_wrong_answer_is_unknown():
    completion = await complete(answer="positive", answer_accuracy=0, answer_choices=["positive"])
    assert completion.text == "unknown"
    assert (await complete(answer="positive", answer_accuracy=0)).text == "unknown"


async def test_it_is_right_about_answer_accuracy_of_the_time():
    right = 0
    for n in range(400):
        completion = await complete(review(n), answer="negative", answer_accuracy=0.7, answer_choices=LABELS)
        right += completion.text == "negative"
    assert 0.6 <= right / 400 <= 0.8


async def test_the_same_messages_get_the_same_answer_every_time():
    for n in range(20):
        overrides = {"answer": "neutral", "answer_accuracy": 0.5, "answer_choices": LABELS}
        first = await complete(review(n), **overrides)
        again = await complete(review(n), **overrides)
        assert first.text == again.text


async def test_the_stand_in_counts_its_answer_and_takes_the_models_time(monkeypatch):
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr("llmops.providers.simulated.asyncio.sleep", sleep)
    answer = "a somewhat longer answer"  # 24 characters: 6 tokens at four characters a token
    model = endpoint(ttft_ms=100, tokens_per_s=60)
    completion = await complete(answer=answer, logprobs=True, token_prob=0.5, model=model)
    assert completion.text == answer
    assert completion.usage.output_tokens == 6
    assert completion.logprobs == pytest.approx([math.log(0.5)] * 6)
    assert slept == [pytest.approx(0.1 + 6 / 60)]
    assert (await complete(answer="", model=endpoint())).usage.output_tokens == 1


async def test_the_stand_in_streams_the_same_text_in_words():
    call = ProviderCall(messages=REVIEW, simulate=validate_overrides({"answer": "very positive indeed"}))
    deltas = [delta async for delta in SimulatedProvider().stream(endpoint(), call)]
    assert [d.text for d in deltas if d.text] == ["very ", "positive ", "indeed"]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.output_tokens == 5


# -- validation ----------------------------------------------------------------------------


def test_it_accepts_the_stand_in_settings():
    clean = validate_overrides(
        {"answer": "yes\x00", "answer_accuracy": 1, "answer_choices": ["yes", "no"], "token_prob": 0.25}
    )
    assert clean == {"answer": "yes\x00", "answer_accuracy": 1.0, "answer_choices": ["yes", "no"], "token_prob": 0.25}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"answer": 3}, "simulate.answer must be a string"),
        ({"answer": None}, "simulate.answer must be a string"),
        ({"answer": "x" * 1001}, "simulate.answer must be a string of at most 1000 characters"),
        ({"answer_accuracy": "high"}, "simulate.answer_accuracy must be a number"),
        ({"answer_accuracy": True}, "simulate.answer_accuracy must be a number"),
        ({"answer_accuracy": 1.5}, "simulate.answer_accuracy must be between 0 and 1"),
        ({"token_prob": -0.1}, "simulate.token_prob must be between 0 and 1"),
        ({"answer_choices": "yes"}, "simulate.answer_choices must be a list"),
        ({"answer_choices": ["yes", 2]}, "simulate.answer_choices must be a list"),
        ({"answer_choices": ["x"] * 101}, "simulate.answer_choices must be a list of at most 100 strings"),
        ({"answer_choices": ["x" * 1001]}, "simulate.answer_choices must be a list"),
        ({"answers": "yes"}, "simulate.answers is not a simulation setting"),
    ],
)
def test_it_refuses_bad_settings_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate_overrides(overrides)


@pytest.mark.django_db(transaction=True)
async def test_a_bad_setting_is_a_400_naming_it(http, api_key, seeded):
    body = {"model": "sim-small", "messages": REVIEW, "simulate": {"answer_accuracy": 2}}
    response = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert response.status_code == 400
    assert "simulate.answer_accuracy must be between 0 and 1" in response.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
async def test_the_stand_in_answers_through_the_api(sdk):
    completion = await sdk.chat.completions.create(
        model="sim-small",
        messages=REVIEW,
        extra_body={"simulate": {"answer": "positive", "answer_choices": LABELS, "ttft_ms": 0, "tokens_per_s": 0}},
    )
    assert completion.choices[0].message.content == "positive"
    assert completion.usage.completion_tokens == 2
