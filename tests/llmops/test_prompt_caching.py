"""Provider prompt caching and what it costs, to the exact dollar.

- The anthropic provider marks the static prefix with `cache_control` when the call asks
  for it (a cache policy with prompt caching on), and sends exactly what it sent before
  when it does not.
- The fake Anthropic measures usage and runs a prompt cache like the real one
  (`measure_usage`), so a first request writes the prefix and the next ones read it.
- Through the gateway, a cache write is charged once at the write price (never also at the
  input price), reads at the read price, and a stream's output once (message_delta's count
  is cumulative), whole or streamed: in the x-llmops-cost-usd header, the `llmops` field and
  the QueryMetric row.
- OpenAI's cached prefix tokens (usage.prompt_tokens_details.cached_tokens) cost the cached
  price, and nothing is ever charged at a cache-write price for OpenAI.

Prices per million tokens: Claude $3.00 input, $3.75 cache write, $0.30 cache read, $15.00
output; GPT $2.50 input, $1.25 cached input, $10.00 output."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import pytest
from asgiref.sync import sync_to_async

from caching.models import CachePolicy
from llmops import catalog
from llmops.catalog import EndpointConfig
from llmops.providers.anthropic import CACHE_MIN_ESTIMATED_TOKENS, AnthropicProvider, with_cache_breakpoints
from llmops.providers.base import ProviderCall, Usage, estimate_tokens
from tests.conftest import add_endpoint, auth, flushed_metrics
from tests.fakes.anthropic_server import FakeAnthropic, fake_anthropic_fixture  # noqa: F401
from tests.fakes.openai_server import fake_openai_fixture  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream_under_test")]

KEY_ENV = "LLMOPS_TEST_ANTHROPIC_API_KEY"
KEY = "sk-ant-fake-SECRET-9c4e11"
OPENAI_KEY_ENV = "LLMOPS_TEST_OPENAI_API_KEY"
CLAUDE = "fake-claude"
GPT = "fake-gpt"
EPHEMERAL = {"type": "ephemeral"}


def text_of(tokens: int, word: str) -> str:
    """A text of exactly `tokens` tokens for the fake's tokenizer (and for estimate_tokens)."""
    return (word * (tokens * 4 // len(word) + 1))[: tokens * 4]


# A long static system prompt and an earlier exchange: the prefix worth caching.
SYSTEM = text_of(1500, "Clause 7: refunds are due within thirty days. ")
EARLIER_QUESTION = text_of(200, "What does the manual say about refunds? ")
EARLIER_ANSWER = text_of(300, "The manual says refunds are due within thirty days. ")
PREFIX_TOKENS = 1500 + 200 + 300


def question(n: int) -> str:
    """A final user turn of exactly 20 tokens, different for each n (so that no answer cache
    could ever answer it: every request below must reach the upstream)."""
    return text_of(20, f"And question number {n}? ")


def conversation(n: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": EARLIER_QUESTION},
        {"role": "assistant", "content": EARLIER_ANSWER},
        {"role": "user", "content": question(n)},
    ]


def claude_endpoint(fake: FakeAnthropic, upstream_model: str = "claude-fake-4-5") -> EndpointConfig:
    return EndpointConfig(
        name=CLAUDE,
        provider="anthropic",
        upstream_model=upstream_model,
        base_url=fake.base_url,
        api_key_env=KEY_ENV,
        input_price_per_mtok=Decimal("3.00"),
        output_price_per_mtok=Decimal("15.00"),
        cached_input_price_per_mtok=Decimal("0.30"),
        cache_write_price_per_mtok=Decimal("3.75"),
        batch_discount=Decimal(0),
        context_window=200_000,
        max_concurrency=0,
        simulation={},
        enabled=True,
    )


async def provider_usage(endpoint: EndpointConfig, call: ProviderCall, *, stream: bool) -> Usage:
    """Call the anthropic provider directly (no gateway) and return the usage it reports."""
    provider = AnthropicProvider()
    if not stream:
        return (await provider.complete(endpoint, call)).usage
    usage = None
    async for delta in provider.stream(endpoint, call):
        usage = delta.usage or usage
    assert usage is not None
    return usage


@pytest.fixture
def claude_key(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


# -- what the provider sends ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_without_prompt_cache_the_request_is_sent_as_before(fake_anthropic, claude_key, stream):
    await provider_usage(claude_endpoint(fake_anthropic), ProviderCall(messages=conversation(1)), stream=stream)
    body = fake_anthropic.last.body
    assert body["system"] == SYSTEM
    assert body["messages"] == [
        {"role": "user", "content": EARLIER_QUESTION},
        {"role": "assistant", "content": EARLIER_ANSWER},
        {"role": "user", "content": question(1)},
    ]
    assert "cache_control" not in json.dumps(body)


@pytest.mark.parametrize("stream", [False, True])
async def test_with_prompt_cache_the_system_prompt_and_conversation_prefix_are_marked(
    fake_anthropic, claude_key, stream
):
    call = ProviderCall(messages=conversation(1), prompt_cache=True)
    await provider_usage(claude_endpoint(fake_anthropic), call, stream=stream)
    body = fake_anthropic.last.body
    # The system prompt as a list of text blocks, the breakpoint on the last one.
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": EPHEMERAL}]
    # The turn before the final user turn as a content-block list, the breakpoint on its
    # last block; the final question stays a plain string.
    assert body["messages"] == [
        {"role": "user", "content": EARLIER_QUESTION},
        {"role": "assistant", "content": [{"type": "text", "text": EARLIER_ANSWER, "cache_control": EPHEMERAL}]},
        {"role": "user", "content": question(1)},
    ]
    assert json.dumps(body).count("cache_control") == 2  # within Anthropic's four
    assert "ttl" not in json.dumps(body)  # the default five minutes, which the write price is for
    assert bool(body.get("stream")) is stream


async def test_prefixes_too_short_to_be_cached_are_left_unmarked(fake_anthropic, claude_key):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    endpoint = claude_endpoint(fake_anthropic)
    await provider_usage(endpoint, ProviderCall(messages=messages), stream=False)
    await provider_usage(endpoint, ProviderCall(messages=messages, prompt_cache=True), stream=False)
    plain, asked = fake_anthropic.requests
    assert asked.body == plain.body  # exactly the request sent without prompt caching
    assert plain.body["system"] == "Be brief."


def test_the_threshold_is_half_the_smallest_minimum_by_the_rough_estimate():
    # Anthropic's smallest minimum is 1,024 tokens; chars/4 undercounts Claude's tokenizer,
    # and a mark on a too-short prefix costs nothing, so the floor is half of it.
    assert CACHE_MIN_ESTIMATED_TOKENS == 512
    at_floor, under = "s" * (512 * 4), "s" * (511 * 4)
    assert (estimate_tokens(at_floor), estimate_tokens(under)) == (512, 511)
    turns = [{"role": "user", "content": "Hi"}]
    assert with_cache_breakpoints(at_floor, turns)[0] == [
        {"type": "text", "text": at_floor, "cache_control": EPHEMERAL}
    ]
    assert with_cache_breakpoints(under, turns)[0] == under


def test_the_conversation_prefix_counts_the_system_prompt_and_every_earlier_turn():
    system = "s" * (300 * 4)  # 300 tokens: too short on its own
    turns = [
        {"role": "user", "content": "u" * (100 * 4)},
        {"role": "assistant", "content": "a" * (112 * 4)},  # 300 + 100 + 112 = 512: marked
        {"role": "user", "content": "Now?"},
    ]
    marked_system, marked = with_cache_breakpoints(system, turns)
    assert marked_system == system
    assert marked[0] == turns[0] and marked[2] == turns[2]
    assert marked[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": turns[1]["content"], "cache_control": EPHEMERAL}],
    }
    # One token less and nothing is marked.
    turns[1] = {"role": "assistant", "content": "a" * (111 * 4)}
    assert with_cache_breakpoints(system, turns) == (system, turns)


def test_the_anchor_is_the_turn_before_the_last_user_turn_and_never_an_empty_one():
    system = "s" * (600 * 4)
    cached_system = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    # One user turn: only the system prompt is marked.
    assert with_cache_breakpoints(system, [{"role": "user", "content": "Hi"}]) == (
        cached_system,
        [{"role": "user", "content": "Hi"}],
    )
    # A prefilled assistant answer last: the anchor is still the turn before the last user turn.
    turns = [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "The answer is"},
    ]
    _, marked = with_cache_breakpoints(system, turns)
    assert marked[1] == {"role": "assistant", "content": [{"type": "text", "text": "a1", "cache_control": EPHEMERAL}]}
    assert [marked[0], marked[2], marked[3]] == [turns[0], turns[2], turns[3]]
    # Anthropic refuses cache_control on an empty (or blank) text block: no mark there.
    blank = [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "  "},
        {"role": "user", "content": "u2"},
    ]
    assert with_cache_breakpoints(system, blank) == (cached_system, blank)


# -- the fake's prompt cache, through the provider -----------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_first_request_writes_the_prefix_and_the_next_ones_read_it(fake_anthropic, claude_key, stream):
    fake_anthropic.measure_usage = True
    endpoint = claude_endpoint(fake_anthropic)
    first = await provider_usage(endpoint, ProviderCall(messages=conversation(1), prompt_cache=True), stream=stream)
    # Our input_tokens counts every input token; Anthropic's leaves out reads and writes.
    assert first == Usage(input_tokens=PREFIX_TOKENS + 20, output_tokens=9, cached_tokens=0, cache_write_tokens=2000)
    assert (fake_anthropic.cache_results[0].input_tokens, fake_anthropic.cache_results[0].breakpoints) == (20, 2)

    for n in (2, 3):
        again = await provider_usage(endpoint, ProviderCall(messages=conversation(n), prompt_cache=True), stream=stream)
        assert again == Usage(input_tokens=2020, output_tokens=9, cached_tokens=2000, cache_write_tokens=0)


async def test_a_growing_conversation_reads_the_old_prefix_and_writes_only_the_new_turns(fake_anthropic, claude_key):
    fake_anthropic.measure_usage = True
    endpoint = claude_endpoint(fake_anthropic)
    await provider_usage(endpoint, ProviderCall(messages=conversation(1), prompt_cache=True), stream=False)
    longer = [
        *conversation(1),
        {"role": "assistant", "content": text_of(100, "Within thirty days. ")},
        {"role": "user", "content": question(2)},
    ]
    usage = await provider_usage(endpoint, ProviderCall(messages=longer, prompt_cache=True), stream=False)
    # The breakpoint moved to the new assistant turn; the old one is found by looking back:
    # 2,000 read, the 20 + 100 tokens since written, the new question ordinary input.
    assert usage == Usage(input_tokens=2140, output_tokens=9, cached_tokens=2000, cache_write_tokens=120)


async def test_without_prompt_cache_nothing_is_written_or_read(fake_anthropic, claude_key):
    fake_anthropic.measure_usage = True
    endpoint = claude_endpoint(fake_anthropic)
    for n in (1, 2):
        usage = await provider_usage(endpoint, ProviderCall(messages=conversation(n)), stream=False)
        assert usage == Usage(input_tokens=2020, output_tokens=9)
    assert fake_anthropic.cache.entries == {}


async def test_a_changed_prefix_or_model_is_a_new_write(fake_anthropic, claude_key):
    fake_anthropic.measure_usage = True
    endpoint = claude_endpoint(fake_anthropic)
    call = ProviderCall(messages=conversation(1), prompt_cache=True)
    assert (await provider_usage(endpoint, call, stream=False)).cache_write_tokens == 2000
    # Another model has its own cache.
    other_model = claude_endpoint(fake_anthropic, upstream_model="claude-other-4-5")
    assert (await provider_usage(other_model, call, stream=False)).cache_write_tokens == 2000
    # One character changed in the earlier answer: the system prompt is still read, the rest written.
    changed = conversation(2)
    changed[2] = {"role": "assistant", "content": EARLIER_ANSWER[:-1] + "!"}
    usage = await provider_usage(endpoint, ProviderCall(messages=changed, prompt_cache=True), stream=False)
    assert (usage.cached_tokens, usage.cache_write_tokens) == (1500, 500)


async def test_an_entry_lives_five_minutes_from_its_last_use(fake_anthropic, claude_key):
    fake_anthropic.measure_usage = True
    now = [1000.0]
    fake_anthropic.cache.clock = lambda: now[0]
    endpoint = claude_endpoint(fake_anthropic)

    async def cache_columns(n: int) -> tuple[int, int]:
        usage = await provider_usage(endpoint, ProviderCall(messages=conversation(n), prompt_cache=True), stream=False)
        return usage.cached_tokens, usage.cache_write_tokens

    assert await cache_columns(1) == (0, 2000)
    now[0] += 299
    assert await cache_columns(2) == (2000, 0)  # a hit, which refreshes the entry
    now[0] += 299
    assert await cache_columns(3) == (2000, 0)
    now[0] += 301
    assert await cache_columns(4) == (0, 2000)  # expired: written again


async def test_a_marked_prefix_under_anthropics_minimum_is_processed_uncached(fake_anthropic, claude_key):
    fake_anthropic.measure_usage = True
    messages = [{"role": "system", "content": text_of(800, "Short manual. ")}, {"role": "user", "content": "Hi?"}]
    usage = await provider_usage(
        claude_endpoint(fake_anthropic), ProviderCall(messages=messages, prompt_cache=True), stream=False
    )
    # Marked (800 >= 512 by the estimate) but under the fake's 1,024: no write, no error.
    assert "cache_control" in json.dumps(fake_anthropic.last.body["system"])
    assert usage == Usage(input_tokens=801, output_tokens=9)


def test_the_fakes_cache_checks_are_anthropics(fake_anthropic: FakeAnthropic):
    client = anthropic.Anthropic(base_url=fake_anthropic.base_url, api_key=KEY, max_retries=0)
    block = {"type": "text", "text": "x", "cache_control": EPHEMERAL}
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks with cache_control"):
        client.messages.create(
            model="m", max_tokens=8, system=[block] * 3, messages=[{"role": "user", "content": [block, block]}]
        )
    with pytest.raises(anthropic.BadRequestError, match="cache_control cannot be set for empty text blocks"):
        client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": [{**block, "text": ""}]}])
    # A one-hour breakpoint is reported in the TTL breakdown the SDK parses.
    fake_anthropic.measure_usage = True
    fake_anthropic.cache.min_tokens = 1
    long_block = {"type": "text", "text": "y" * 40, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    message = client.messages.create(
        model="m", max_tokens=8, system=[long_block], messages=[{"role": "user", "content": "Hi"}]
    )
    assert (message.usage.cache_creation_input_tokens, message.usage.input_tokens) == (10, 1)
    assert (
        message.usage.cache_creation.ephemeral_1h_input_tokens,
        message.usage.cache_creation.ephemeral_5m_input_tokens,
    ) == (10, 0)
    client.close()


# -- through the gateway: exact dollars ------------------------------------------------------


@pytest.fixture
async def claude(fake_anthropic, claude_key, transactional_db) -> str:
    await add_endpoint(
        name=CLAUDE,
        provider="anthropic",
        upstream_model="claude-fake-4-5",
        base_url=fake_anthropic.base_url,
        api_key_env=KEY_ENV,
        input_price_per_mtok=Decimal("3.00"),
        output_price_per_mtok=Decimal("15.00"),
        cached_input_price_per_mtok=Decimal("0.30"),
        cache_write_price_per_mtok=Decimal("3.75"),
    )
    return CLAUDE


async def prompt_caching_on(model: str) -> None:
    """A cache policy for the model with prompt caching on and the answer cache off."""
    await CachePolicy.objects.acreate(name="prompt-caching", model_pattern=model, enabled=False, prompt_caching=True)
    await sync_to_async(catalog.reset)()


async def ask(sdk, model: str, messages, *, stream: bool, include_usage: bool = True):
    """One request through the openai SDK: (text, prompt tokens, cached tokens, the llmops field,
    the cost in dollars). Whole answers give the cost in the header and the `llmops` field
    alike (they must agree); streams in the `llmops` field of their last chunk."""
    if not stream:
        raw = await sdk.chat.completions.with_raw_response.create(model=model, messages=messages)
        completion = raw.parse()
        llmops = completion.model_extra["llmops"]
        cost = Decimal(raw.headers["x-llmops-cost-usd"])
        assert Decimal(llmops["cost_usd"]) == cost
        usage = completion.usage
        return (
            completion.choices[0].message.content,
            usage.prompt_tokens,
            usage.prompt_tokens_details.cached_tokens,
            llmops,
            cost,
        )
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = await sdk.chat.completions.create(model=model, messages=messages, stream=True, **options)
    pieces, usage, llmops = [], None, None
    async for chunk in chunks:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
        llmops = (chunk.model_extra or {}).get("llmops") or llmops
    prompt_tokens = usage.prompt_tokens if usage else None
    cached = usage.prompt_tokens_details.cached_tokens if usage else None
    return "".join(pieces), prompt_tokens, cached, llmops, Decimal(llmops["cost_usd"])


ANSWER = "Refunds are due within thirty days of the purchase, says clause seven of the manual."


@pytest.mark.parametrize("stream", [False, True])
async def test_a_measured_cache_write_then_reads_cost_exactly(sdk, claude, fake_anthropic, stream):
    """End to end: the policy turns prompt caching on, the provider marks the prefix, the
    fake's cache writes it once and reads it after, and each answer costs exactly its due."""
    await prompt_caching_on(claude)
    fake_anthropic.measure_usage = True
    fake_anthropic.reply(text=ANSWER, output_tokens=40)

    text, prompt_tokens, cached, llmops, cost = await ask(sdk, claude, conversation(1), stream=stream)
    assert text == ANSWER
    assert fake_anthropic.last.body["system"][0]["cache_control"] == EPHEMERAL
    # Written: 2,000 at $3.75 (once: not also at $3.00); 20 input at $3.00; 40 out at $15.00.
    # 7,500 + 60 + 600 = 8,160 millionths of a dollar.
    assert cost == Decimal("0.00816")
    assert (prompt_tokens, cached, llmops["cache_write_tokens"]) == (2020, 0, 2000)

    for n in (2, 3):
        _, prompt_tokens, cached, llmops, cost = await ask(sdk, claude, conversation(n), stream=stream)
        # Read: 2,000 at $0.30; 20 input at $3.00; 40 out at $15.00: 600 + 60 + 600 = 1,260.
        assert cost == Decimal("0.00126")
        assert (prompt_tokens, cached, llmops["cache_write_tokens"]) == (2020, 2000, 0)

    metrics = await flushed_metrics()
    assert [(m.cost_usd, m.cached_tokens, m.cache_write_tokens) for m in metrics] == [
        (Decimal("0.00816"), 0, 2000),
        (Decimal("0.00126"), 2000, 0),
        (Decimal("0.00126"), 2000, 0),
    ]
    # Output counted once per answer: message_start's 1 and message_delta's cumulative 40 make 40.
    assert {(m.input_tokens, m.output_tokens, m.stream, m.provider) for m in metrics} == {
        (2020, 40, stream, "anthropic")
    }
    assert sum(m.cost_usd for m in metrics) == Decimal("0.01068")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reported_cache_write_then_reads_cost_exactly(sdk, claude, fake_anthropic, stream):
    """The same accounting with the cache numbers forced by the fake's script, whatever the
    request holds (here without any policy: the cost depends only on the reported usage)."""
    fake_anthropic.reply(text=ANSWER, input_tokens=25, cache_creation_input_tokens=3000, output_tokens=120)
    _, prompt_tokens, cached, llmops, cost = await ask(sdk, claude, conversation(1), stream=stream)
    # 3,000 * 3.75 + 25 * 3.00 + 120 * 15.00 = 11,250 + 75 + 1,800 = 13,125 millionths.
    # (Charged at the input price too it would be 22,125; with the output counted per
    # streamed piece, or message_start's token added, it would not be 1,800.)
    assert cost == Decimal("0.013125")
    assert (prompt_tokens, cached, llmops["cache_write_tokens"]) == (3025, 0, 3000)

    fake_anthropic.reply(text=ANSWER, input_tokens=25, cache_read_input_tokens=3000, output_tokens=120)
    for n in (2, 3):
        _, prompt_tokens, cached, llmops, cost = await ask(sdk, claude, conversation(n), stream=stream)
        # 3,000 * 0.30 + 25 * 3.00 + 120 * 15.00 = 900 + 75 + 1,800 = 2,775 millionths.
        assert cost == Decimal("0.002775")
        assert (prompt_tokens, cached, llmops["cache_write_tokens"]) == (3025, 3000, 0)

    metrics = await flushed_metrics()
    assert [(m.cost_usd, m.input_tokens, m.cached_tokens, m.cache_write_tokens, m.output_tokens) for m in metrics] == [
        (Decimal("0.013125"), 3025, 0, 3000, 120),
        (Decimal("0.002775"), 3025, 3000, 0, 120),
        (Decimal("0.002775"), 3025, 3000, 0, 120),
    ]


async def test_a_stream_without_include_usage_still_bills_the_cache_exactly(sdk, claude, fake_anthropic):
    fake_anthropic.reply(text=ANSWER, input_tokens=25, cache_read_input_tokens=3000, output_tokens=120)
    _, _, _, llmops, cost = await ask(sdk, claude, conversation(1), stream=True, include_usage=False)
    assert cost == Decimal("0.002775")
    assert llmops["cache_write_tokens"] == 0
    [metric] = await flushed_metrics()
    assert (metric.cost_usd, metric.cached_tokens, metric.output_tokens) == (Decimal("0.002775"), 3000, 120)


# -- OpenAI: cached prefixes read from usage ---------------------------------------------------


@pytest.fixture
async def gpt(fake_openai, monkeypatch, transactional_db) -> str:
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-fake-openai-7f3a9c")
    await add_endpoint(
        name=GPT,
        provider="openai",
        upstream_model="gpt-fake-1",
        base_url=fake_openai.base_url,
        api_key_env=OPENAI_KEY_ENV,
        input_price_per_mtok=Decimal("2.50"),
        output_price_per_mtok=Decimal("10.00"),
        cached_input_price_per_mtok=Decimal("1.25"),
        # A write price set by mistake must not apply: OpenAI reports no cache writes.
        cache_write_price_per_mtok=Decimal("3.125"),
    )
    return GPT


@pytest.mark.parametrize(("stream", "include_usage"), [(False, True), (True, True), (True, False)])
async def test_openai_cached_prefix_tokens_cost_the_cached_price(sdk, gpt, fake_openai, stream, include_usage):
    await prompt_caching_on(gpt)  # nothing for OpenAI to send: its caching is automatic
    fake_openai.reply(text=ANSWER, prompt_tokens=2020, cached_tokens=0, completion_tokens=40)
    _, _, _, llmops, cost = await ask(sdk, gpt, conversation(1), stream=stream, include_usage=include_usage)
    # The first request: 2,020 at $2.50 + 40 at $10.00 = 5,050 + 400 = 5,450 millionths.
    assert cost == Decimal("0.00545")
    assert "cache_control" not in json.dumps(fake_openai.last.body)

    fake_openai.reply(text=ANSWER, prompt_tokens=2020, cached_tokens=1920, completion_tokens=40)
    _, prompt_tokens, cached, llmops, cost = await ask(
        sdk, gpt, conversation(2), stream=stream, include_usage=include_usage
    )
    # 1,920 cached at $1.25 + 100 at $2.50 + 40 at $10.00 = 2,400 + 250 + 400 = 3,050.
    assert cost == Decimal("0.00305")
    assert llmops["cache_write_tokens"] == 0
    if include_usage:
        assert (prompt_tokens, cached) == (2020, 1920)
    # The gateway asks the upstream for usage whether or not its client did.
    assert fake_openai.last.body.get("stream_options") == ({"include_usage": True} if stream else None)

    first, second = await flushed_metrics()
    assert (first.cost_usd, first.cached_tokens, first.cache_write_tokens) == (Decimal("0.00545"), 0, 0)
    assert (second.cost_usd, second.cached_tokens, second.cache_write_tokens) == (Decimal("0.00305"), 1920, 0)
    assert (second.input_tokens, second.output_tokens) == (2020, 40)


async def test_an_answer_cache_hit_reports_no_prompt_cache_tokens(http, api_key, seeded, fake_anthropic, monkeypatch):
    """A hit calls no provider: it neither reads nor writes a provider's prompt cache."""
    monkeypatch.setenv("LLMOPS_TEST_ANTHROPIC_API_KEY", "sk-ant-test")
    await add_endpoint(
        name="claude-cached",
        provider="anthropic",
        upstream_model="claude-fake",
        base_url=fake_anthropic.base_url,
        api_key_env="LLMOPS_TEST_ANTHROPIC_API_KEY",
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
        cache_write_price_per_mtok=Decimal("3.75"),
    )
    await CachePolicy.objects.filter(name="default").aupdate(enabled=True)
    catalog.reset()
    fake_anthropic.reply(text="cached", input_tokens=20, cache_creation_input_tokens=2000, output_tokens=40)
    body = {"model": "claude-cached", "messages": [{"role": "user", "content": "Summarise the manual."}]}
    first = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    hit = await http.post("/v1/chat/completions", json=body, headers=auth(api_key))
    assert hit.headers["x-llmops-cache"] == "hit"
    assert first.json()["llmops"]["cache_write_tokens"] == 2000
    assert hit.json()["llmops"]["cache_write_tokens"] == 0
    assert hit.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _, metric = await flushed_metrics()
    assert (metric.cache_write_tokens, metric.cached_tokens, metric.cost_usd) == (0, 0, 0)
