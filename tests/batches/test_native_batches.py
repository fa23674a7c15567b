"""Provider-native batches (`execution: "provider"`): the openai SDK as a client -> the
gateway's batch API -> the runner -> the provider modules' clients -> the fake OpenAI and
Anthropic servers' own batch APIs on loopback ports, and back into the gateway's output file."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from llmops.batches.runner import batch_run
from tests.batches.conftest import batch_line, batch_row, items_of, output_lines, upload
from tests.conftest import add_endpoint, flushed_metrics
from tests.fakes.anthropic_server import FakeAnthropic, fake_anthropic_fixture, presented_key  # noqa: F401
from tests.fakes.openai_server import FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.fakes.upstream import running
from tests.routing.conftest import route_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream_under_test", "run_here")]

OPENAI_KEY_ENV = "LLMOPS_TEST_OPENAI_API_KEY"
OPENAI_KEY = "sk-fake-openai-NATIVE-4b1d7e"
ANTHROPIC_KEY_ENV = "LLMOPS_TEST_ANTHROPIC_API_KEY"
ANTHROPIC_KEY = "sk-ant-fake-NATIVE-93ac05"
GPT, CLAUDE = "fake-gpt", "fake-claude"
# At half price: OpenAI's 11 in at $2.50 and 7 out at $10.00 per million; Anthropic's 13 in
# at $3.00 and 9 out at $15.00.
GPT_ITEM_COST = Decimal("0.00004875")
CLAUDE_ITEM_COST = Decimal("0.000087")


@pytest.fixture
def run_here(settings):
    """No runner but the test's own (batch_run), polling the fakes often."""
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    settings.LLMOPS_BATCH_POLL_S = 0.02
    settings.LLMOPS_BATCH_PROVIDER_POLL_S = 0.05


@pytest.fixture
async def gpt(fake_openai, monkeypatch, transactional_db) -> str:
    monkeypatch.setenv(OPENAI_KEY_ENV, OPENAI_KEY)
    fake_openai.expected_key = OPENAI_KEY
    await add_endpoint(
        name=GPT,
        provider="openai",
        upstream_model="gpt-fake-1",
        base_url=fake_openai.base_url,
        api_key_env=OPENAI_KEY_ENV,
        input_price_per_mtok=Decimal("2.50"),
        output_price_per_mtok=Decimal("10.00"),
        cached_input_price_per_mtok=Decimal("1.25"),
        batch_discount=Decimal("0.5"),
    )
    return GPT


@pytest.fixture
async def claude(fake_anthropic, monkeypatch, transactional_db) -> str:
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)
    fake_anthropic.expected_key = ANTHROPIC_KEY
    await add_endpoint(
        name=CLAUDE,
        provider="anthropic",
        upstream_model="claude-fake-4-5",
        base_url=fake_anthropic.base_url,
        api_key_env=ANTHROPIC_KEY_ENV,
        input_price_per_mtok=Decimal("3.00"),
        output_price_per_mtok=Decimal("15.00"),
        cached_input_price_per_mtok=Decimal("0.30"),
        cache_write_price_per_mtok=Decimal("3.75"),
        batch_discount=Decimal("0.5"),
    )
    return CLAUDE


async def native_batch(sdk, lines: list[dict]) -> str:
    """A batch created as an app would, asking for the providers' batch APIs."""
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"execution": "provider"},
    )
    assert created.model_extra["llmops"]["execution"] == "provider"
    return created.id


async def submitted(batch_id: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        entries = (await batch_row(batch_id)).provider_batches
        if len(entries) == count and all(entry["id"] for entry in entries):
            return entries
        assert time.monotonic() < deadline, f"not submitted: {entries}"
        await asyncio.sleep(0.02)


async def test_an_openai_batch_runs_on_the_providers_batch_api_at_its_discount(sdk, gpt, fake_openai):
    fake_openai.reply(text="Native answer.", prompt_tokens=11, completion_tokens=7)
    lines = [batch_line(f"req-{i}", f"Question {i}", model=gpt, max_tokens=16) for i in range(3)]
    batch_id = await native_batch(sdk, lines)

    assert await batch_run(batch_id) == "ended"

    ended = await sdk.batches.retrieve(batch_id)
    assert ended.status == "completed", ended.errors
    assert (ended.request_counts.total, ended.request_counts.completed, ended.request_counts.failed) == (3, 3, 0)
    assert ended.error_file_id is None
    out = await output_lines(sdk, ended.output_file_id)
    assert sorted(line["custom_id"] for line in out) == ["req-0", "req-1", "req-2"]
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == gpt
        assert body["choices"][0]["message"]["content"] == "Native answer."
        assert body["choices"][0]["finish_reason"] == "stop"
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (11, 7)
        assert body["llmops"]["execution"] == "provider" and body["llmops"]["provider"] == "openai"
        assert Decimal(body["llmops"]["cost_usd"]) == GPT_ITEM_COST
        assert line["response"]["request_id"] == body["llmops"]["request_id"]
    row = await batch_row(batch_id)
    assert row.cost_usd == 3 * GPT_ITEM_COST
    assert (row.input_tokens, row.output_tokens) == (33, 21)
    [entry] = row.provider_batches
    assert (entry["provider"], entry["model"], entry["status"]) == ("openai", gpt, "completed")
    assert entry["id"] in fake_openai.batches

    # The provider was given each request as the provider module sends one, and no chat call.
    sent = fake_openai.batch_lines()
    assert [line["custom_id"] for line in sent] == ["line-1", "line-2", "line-3"]
    assert {line["url"] for line in sent} == {"/v1/chat/completions"}
    assert sent[0]["body"] == {
        "model": "gpt-fake-1",
        "messages": [{"role": "user", "content": "Question 0"}],
        "max_tokens": 16,
    }
    assert not [r for r in fake_openai.requests if r.path == "/v1/chat/completions"]
    upload_request = next(r for r in fake_openai.requests if r.path == "/v1/files")
    assert upload_request.headers["content-type"].startswith("multipart/form-data")

    metrics = await flushed_metrics(endpoint="batch_native")
    assert len(metrics) == 3
    assert {m.request_id for m in metrics} == {line["response"]["request_id"] for line in out}
    for metric in metrics:
        assert (metric.status, metric.model, metric.answered_by, metric.provider) == ("ok", gpt, gpt, "openai")
        assert (metric.input_tokens, metric.output_tokens, metric.cost_usd) == (11, 7, GPT_ITEM_COST)
        assert metric.option == ""  # a provider batch's hours are not the model's latency for routing
    assert not await flushed_metrics(endpoint="batch")


async def test_an_anthropic_batch_runs_on_the_message_batches_api_at_its_discount(sdk, claude, fake_anthropic):
    fake_anthropic.reply(text="Native Claude.", input_tokens=13, output_tokens=9)
    lines = [
        batch_line("a", "First", model=claude, max_tokens=32),
        {
            **batch_line("b", model=claude),
            "body": {
                "model": claude,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Second"}],
            },
        },
    ]
    batch_id = await native_batch(sdk, lines)

    assert await batch_run(batch_id) == "ended"

    ended = await sdk.batches.retrieve(batch_id)
    assert ended.status == "completed", ended.errors
    assert (ended.request_counts.completed, ended.request_counts.failed) == (2, 0)
    out = await output_lines(sdk, ended.output_file_id)
    assert sorted(line["custom_id"] for line in out) == ["a", "b"]
    for line in out:
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == "Native Claude."
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (13, 9)
        assert body["llmops"]["execution"] == "provider" and body["llmops"]["provider"] == "anthropic"
        assert Decimal(body["llmops"]["cost_usd"]) == CLAUDE_ITEM_COST
    row = await batch_row(batch_id)
    assert row.cost_usd == 2 * CLAUDE_ITEM_COST
    [entry] = row.provider_batches
    assert (entry["provider"], entry["model"], entry["status"]) == ("anthropic", claude, "ended")

    # Each request's params are what the provider module sends for that chat request.
    first, second = fake_anthropic.batch_requests()
    assert first == {
        "custom_id": "line-1",
        "params": {"model": "claude-fake-4-5", "messages": [{"role": "user", "content": "First"}], "max_tokens": 32},
    }
    assert second["params"]["system"] == "Be brief."
    assert second["params"]["messages"] == [{"role": "user", "content": "Second"}]
    assert not [r for r in fake_anthropic.requests if r.path == "/v1/messages"]

    metrics = await flushed_metrics(endpoint="batch_native")
    assert len(metrics) == 2
    assert {(m.status, m.provider, m.cost_usd) for m in metrics} == {("ok", "anthropic", CLAUDE_ITEM_COST)}


async def test_each_model_s_key_reaches_only_its_own_provider_host(sdk, gpt, claude, fake_openai, fake_anthropic):
    lines = [batch_line("g1", model=gpt), batch_line("c1", model=claude), batch_line("g2", model=gpt)]
    batch_id = await native_batch(sdk, lines)

    assert await batch_run(batch_id) == "ended"

    row = await batch_row(batch_id)
    assert row.status == "completed" and row.completed == 3
    assert sorted((entry["provider"], entry["model"]) for entry in row.provider_batches) == [
        ("anthropic", claude),
        ("openai", gpt),
    ]
    assert row.cost_usd == 2 * GPT_ITEM_COST + CLAUDE_ITEM_COST
    assert fake_openai.requests and fake_anthropic.requests
    for request in fake_openai.requests:
        assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert ANTHROPIC_KEY not in str(request.headers) + str(request.body)
    for request in fake_anthropic.requests:
        assert presented_key(request) == ANTHROPIC_KEY
        assert OPENAI_KEY not in str(request.headers) + str(request.body)
    for item in await items_of(batch_id):
        assert OPENAI_KEY not in str(item.response) and ANTHROPIC_KEY not in str(item.response)


async def test_results_the_provider_names_on_another_host_are_not_fetched_with_the_key(sdk, claude, fake_anthropic):
    for elsewhere in running(FakeAnthropic()):
        fake_anthropic.results_root = elsewhere.root_url
        batch_id = await native_batch(sdk, [batch_line("a", model=claude), batch_line("b", model=claude)])

        assert await batch_run(batch_id) == "ended"

        assert elsewhere.requests == []
    row = await batch_row(batch_id)
    assert (row.status, row.completed, row.failed) == ("completed", 0, 2)
    for item in await items_of(batch_id):
        assert item.status == "failed"
        assert "on another host" in item.response["error"]["message"]


async def test_a_route_or_a_simulated_model_fails_provider_execution_naming_the_line(sdk, gpt, fake_openai):
    await route_create("to-gpt", strategy="single", model_names=gpt)  # a route, even to an OpenAI model
    lines = [
        batch_line("ok", model=gpt),
        batch_line("sim", model="sim-small"),
        batch_line("routed", model="route:to-gpt"),
    ]
    batch_id = await native_batch(sdk, lines)

    assert await batch_run(batch_id) == "ended"

    ended = await sdk.batches.retrieve(batch_id)
    assert ended.status == "failed"
    errors = {error.line: error for error in ended.errors.data}
    assert sorted(errors) == [2, 3], ended.errors
    assert "simulated" in errors[2].message and "'sim-small'" in errors[2].message
    assert "route" in errors[3].message and "'route:to-gpt'" in errors[3].message
    assert {error.param for error in errors.values()} == {"body.model"}
    assert ended.request_counts.total == 0
    assert fake_openai.requests == []  # nothing was submitted
    assert await items_of(batch_id) == []


async def test_provider_errors_and_lost_results_fail_their_items(sdk, gpt, fake_openai):
    fake_openai.batch_fail("line-2", 400, "This request is malformed.")
    fake_openai.batch_drop("line-3")
    lines = [batch_line(f"req-{i}", model=gpt) for i in range(3)]
    batch_id = await native_batch(sdk, lines)

    assert await batch_run(batch_id) == "ended"

    ended = await sdk.batches.retrieve(batch_id)
    assert ended.status == "completed"
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1, 2)
    [good] = await output_lines(sdk, ended.output_file_id)
    assert good["custom_id"] == "req-0"
    bad = {line["custom_id"]: line for line in await output_lines(sdk, ended.error_file_id)}
    assert sorted(bad) == ["req-1", "req-2"]
    assert bad["req-1"]["response"]["status_code"] == 400
    assert "This request is malformed." in bad["req-1"]["response"]["body"]["error"]["message"]
    assert "returned no result for this request" in bad["req-2"]["response"]["body"]["error"]["message"]
    assert (await batch_row(batch_id)).cost_usd == GPT_ITEM_COST
    metrics = await flushed_metrics(endpoint="batch_native")
    assert sorted(m.status for m in metrics) == ["error", "error", "ok"]


async def test_a_resumed_runner_polls_the_provider_batch_instead_of_submitting_again(sdk, gpt, fake_openai):
    fake_openai.batch_delay_s = 1.0
    batch_id = await native_batch(sdk, [batch_line("a", model=gpt), batch_line("b", model=gpt)])

    assert await batch_run(batch_id, until=time.monotonic() + 0.2) == "paused"
    [entry] = await submitted(batch_id)
    assert (await batch_row(batch_id)).status == "in_progress"

    assert await batch_run(batch_id) == "ended"

    row = await batch_row(batch_id)
    assert (row.status, row.completed) == ("completed", 2)
    assert [entry["id"] for entry in row.provider_batches] == [entry["id"]]
    assert len([r for r in fake_openai.requests if r.path == "/v1/batches"]) == 1
    assert len([r for r in fake_openai.requests if r.path == "/v1/files"]) == 1
    assert len(await flushed_metrics(endpoint="batch_native")) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_cancelling_cancels_the_provider_batch_and_keeps_what_finished(
    sdk, gpt, claude, fake_openai, fake_anthropic, provider
):
    model = gpt if provider == "openai" else claude
    fake: FakeOpenAI | FakeAnthropic = fake_openai if provider == "openai" else fake_anthropic
    fake.batch_delay_s = 60.0
    fake.batch_early_lines = 1  # the provider had answered the first request when the cancel came
    batch_id = await native_batch(sdk, [batch_line(f"req-{i}", model=model) for i in range(3)])
    runner = asyncio.ensure_future(batch_run(batch_id))
    try:
        [entry] = await submitted(batch_id)

        await sdk.batches.cancel(batch_id)

        assert await asyncio.wait_for(runner, timeout=10) == "ended"
    finally:
        runner.cancel()
    cancel_path = "/v1/batches" if provider == "openai" else "/v1/messages/batches"
    assert [r.method for r in fake.requests if r.path == f"{cancel_path}/{entry['id']}/cancel"] == ["POST"]
    ended = await sdk.batches.retrieve(batch_id)
    assert ended.status == "cancelled"
    assert [item.status for item in await items_of(batch_id)] == ["succeeded", "cancelled", "cancelled"]
    [kept] = await output_lines(sdk, ended.output_file_id)
    assert kept["custom_id"] == "req-0"
    stopped = await output_lines(sdk, ended.error_file_id)
    assert [(line["custom_id"], line["error"]["code"]) for line in stopped] == [
        ("req-1", "batch_cancelled"),
        ("req-2", "batch_cancelled"),
    ]
    row = await batch_row(batch_id)
    assert row.cost_usd == (GPT_ITEM_COST if provider == "openai" else CLAUDE_ITEM_COST)
    assert row.provider_batches[0]["cancel_requested"] is True


async def test_a_submission_that_fails_transiently_is_tried_again_once_it_works(sdk, gpt, fake_openai):
    fake_openai.fail(503)  # the first upload
    batch_id = await native_batch(sdk, [batch_line("a", model=gpt)])

    assert await batch_run(batch_id) == "ended"

    row = await batch_row(batch_id)
    assert (row.status, row.completed) == ("completed", 1)
    assert [r.path for r in fake_openai.requests if r.method == "POST"] == ["/v1/files", "/v1/files", "/v1/batches"]
    assert row.provider_batches[0]["submit_runs"] == 2


async def test_the_completion_window_ending_cancels_the_provider_batch_and_expires_the_rest(sdk, gpt, fake_openai):
    fake_openai.batch_delay_s = 60.0
    fake_openai.batch_early_lines = 1
    uploaded = await sdk.files.create(
        file=upload([batch_line(f"req-{i}", model=gpt) for i in range(2)]), purpose="batch"
    )
    created = await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="2s",
        extra_body={"execution": "provider"},
    )

    assert await asyncio.wait_for(batch_run(created.id), timeout=10) == "ended"

    [entry] = (await batch_row(created.id)).provider_batches
    assert [r.method for r in fake_openai.requests if r.path == f"/v1/batches/{entry['id']}/cancel"] == ["POST"]
    ended = await sdk.batches.retrieve(created.id)
    assert ended.status == "expired"
    assert [item.status for item in await items_of(created.id)] == ["succeeded", "expired"]
