"""A batch's life: every item answered once, cancel and expiry keep what finished, a dead
runner's items are taken over, transient failures are retried, and whatever a runner holds
is given back however it stops."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from caching.models import CachePolicy
from llmops import catalog
from llmops.batches.executor import EXECUTOR
from llmops.batches.models import Batch, BatchFile, BatchItem, ItemStatus
from llmops.batches.runner import batch_run
from llmops.batches.store import Outcome, outcomes_record
from llmops.models import ApiKey
from llmops.upstream import InFlight
from tests.batches.conftest import batch_ended, batch_line, batch_row, items_of, output_lines, upload
from tests.conftest import add_endpoint, flushed_metrics
from tests.fakes.openai_server import FakeOpenAI, fake_openai_fixture  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"simulate": {"latency_ms": 150}}


@pytest.fixture(autouse=True)
def _nobody_runs_batches(settings):
    settings.LLMOPS_BATCH_EXECUTOR = "off"  # each test runs its batch itself
    settings.LLMOPS_BATCH_POLL_S = 0.02


async def fake_gpt_added(fake_openai, monkeypatch):
    """The catalog model `fake-gpt`, answered by the fake OpenAI upstream."""
    monkeypatch.setenv("LLMOPS_TEST_OPENAI_API_KEY", "sk-fake")
    await add_endpoint(
        name="fake-gpt",
        provider="openai",
        upstream_model="gpt-fake-1",
        base_url=fake_openai.base_url,
        api_key_env="LLMOPS_TEST_OPENAI_API_KEY",
    )
    catalog.reset()


async def created(sdk, lines, window="24h"):
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    return await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window=window
    )


async def both_files(sdk, batch):
    return await output_lines(sdk, batch.output_file_id), await output_lines(sdk, batch.error_file_id)


def assert_each_custom_id_once(ids, out, errors):
    seen = [line["custom_id"] for line in out + errors]
    assert sorted(seen) == sorted(ids)


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_cancel_stops_the_rest_and_keeps_what_finished(sdk, settings):
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 4  # a few at a time, so most are still queued
    ids = [f"c{i}" for i in range(24)]
    batch = await created(sdk, [batch_line(i, f"q {i}", **SLOW) for i in ids])
    runner = asyncio.ensure_future(batch_run(batch.id))

    async def some_finished():
        return (await batch_row(batch.id)).completed >= 4

    await until(some_finished)
    cancelling = await sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert await runner == "ended"

    ended = await sdk.batches.retrieve(batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at
    out, errors = await both_files(sdk, ended)
    assert 4 <= len(out) < len(ids) and ended.request_counts.completed == len(out)
    assert all(line["response"]["status_code"] == 200 for line in out)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    assert_each_custom_id_once(ids, out, errors)
    assert InFlight.current == 0


async def test_an_ended_batch_cannot_be_cancelled(sdk):
    batch = await created(sdk, [batch_line("a")])
    await batch_run(batch.id)
    with pytest.raises(openai.ConflictError):
        await sdk.batches.cancel(batch.id)


async def test_a_batch_past_its_window_expires_keeping_its_results(sdk, settings):
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 4
    ids = [f"e{i}" for i in range(30)]
    batch = await created(sdk, [batch_line(i, f"q {i}", **SLOW) for i in ids], window="1s")
    assert await batch_run(batch.id) == "ended"
    ended = await sdk.batches.retrieve(batch.id)
    assert ended.status == "expired" and ended.expired_at
    out, errors = await both_files(sdk, ended)
    assert out, "the items answered within the window are kept"
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert_each_custom_id_once(ids, out, errors)


async def test_a_dead_runners_items_are_taken_over_and_recorded_answers_are_not_asked_again(
    sdk, fake_openai, monkeypatch, settings, upstream_under_test
):
    await fake_gpt_added(fake_openai, monkeypatch)
    ids = [f"d{i}" for i in range(10)]
    batch = await created(sdk, [batch_line(i, f"q {i}", model="fake-gpt") for i in ids])
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 1
    # One item at a time; the upstream answers three and holds the fourth, so the runner is
    # stopped with exactly three answers recorded (the five items below are unanswered).
    fake_openai.hold_after(3)
    # A runner that died: it recorded three answers, held four items whose lease has
    # lapsed, and one whose lease still runs (it may live yet); two were never taken.
    first = asyncio.ensure_future(batch_run(batch.id))

    async def three_done():
        return (await batch_row(batch.id)).completed >= 3

    await until(three_done)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    fake_openai.release()
    rows = [item for item in await items_of(batch.id) if item.status != ItemStatus.SUCCEEDED]
    recorded = {item.custom_id for item in await items_of(batch.id) if item.status == ItemStatus.SUCCEEDED}
    lapsed, live = rows[:4], rows[4]
    past, soon = timezone.now() - timedelta(seconds=5), timezone.now() + timedelta(seconds=0.5)

    @sync_to_async
    def die():
        BatchItem.objects.filter(id__in=[i.id for i in lapsed]).update(
            status=ItemStatus.RUNNING, lease_owner="dead", lease_until=past, attempts=1
        )
        BatchItem.objects.filter(id=live.id).update(
            status=ItemStatus.RUNNING, lease_owner="slow", lease_until=soon, attempts=1
        )

    await die()
    asked_before = len(fake_openai.requests)
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 64
    assert await batch_run(batch.id) == "ended"

    ended = await sdk.batches.retrieve(batch.id)
    assert ended.status == "completed" and ended.request_counts.completed == 10
    assert len(fake_openai.requests) - asked_before == 10 - len(recorded)
    out, errors = await both_files(sdk, ended)
    assert errors == [] and sorted(line["custom_id"] for line in out) == sorted(ids)
    taken = {item.custom_id: item.attempts for item in await items_of(batch.id)}
    assert all(taken[item.custom_id] == 2 for item in [*lapsed, live])


def running_batch(*, total: int) -> Batch:
    """A batch in progress, made directly in the database (its items are the test's)."""
    key = ApiKey.objects.create(name="k", prefix="p", key_hash=f"h{ApiKey.objects.count()}")
    stored = BatchFile.objects.create(api_key=key, purpose="batch", filename="f.jsonl")
    return Batch.objects.create(
        api_key=key,
        input_file=stored,
        input_file_ref=stored.id,
        endpoint="/v1/chat/completions",
        expires_at=timezone.now() + timedelta(hours=1),
        status="in_progress",
        total=total,
    )


async def test_a_recorded_answer_is_never_overwritten():
    @sync_to_async
    def scenario():
        batch = running_batch(total=1)
        item = BatchItem.objects.create(batch=batch, line=1, custom_id="a", body={}, status=ItemStatus.RUNNING)
        first = Outcome(item.id, ItemStatus.SUCCEEDED, status_code=200, response={"n": 1}, cost_usd=Decimal("0.5"))
        late = Outcome(item.id, ItemStatus.SUCCEEDED, status_code=200, response={"n": 2}, cost_usd=Decimal("0.5"))
        results = outcomes_record(batch.id, [first]), outcomes_record(batch.id, [late])
        batch.refresh_from_db()
        item.refresh_from_db()
        return results, batch, item

    (first, late), batch, item = await scenario()
    assert first == [True] and late == [False]
    assert item.response == {"n": 1}
    assert batch.completed == 1 and batch.cost_usd == Decimal("0.5")


async def test_a_transient_failure_is_run_again_and_a_lasting_one_fails_the_item(
    sdk, fake_openai, monkeypatch, settings, upstream_under_test
):
    await fake_gpt_added(fake_openai, monkeypatch)
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 1  # one at a time: the failures land on the first item
    settings.LLMOPS_BATCH_ITEM_RUNS = 2
    fake_openai.fail(503, "overloaded", retry_after="0")  # the first run of the first item
    fake_openai.fail(400, "bad request", error_type="invalid_request_error")  # the second item, for good
    batch = await created(sdk, [batch_line("t1", model="fake-gpt"), batch_line("t2", "other", model="fake-gpt")])
    assert await batch_run(batch.id) == "ended"
    ended = await sdk.batches.retrieve(batch.id)
    assert ended.status == "completed"
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1, 1)
    out, errors = await both_files(sdk, ended)
    assert [line["custom_id"] for line in out] == ["t1"]
    [failed] = errors
    assert failed["custom_id"] == "t2" and failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["message"]
    items = {item.custom_id: item for item in await items_of(batch.id)}
    assert items["t1"].attempts == 2 and items["t2"].attempts == 1


async def test_identical_items_are_sent_to_the_provider_once(sdk, fake_openai, monkeypatch, settings, seeded):
    await fake_gpt_added(fake_openai, monkeypatch)
    assert await CachePolicy.objects.filter(enabled=True).aexists()  # the seeded default policy
    fake_openai.delay_s = 0.2  # all ten are in flight together
    batch = await created(sdk, [batch_line(f"same-{i}", "The same question", model="fake-gpt") for i in range(10)])
    await batch_run(batch.id)
    ended = await sdk.batches.retrieve(batch.id)
    assert ended.request_counts.completed == 10
    assert len(fake_openai.requests) == 1
    metrics = await flushed_metrics(endpoint="batch")
    assert sorted(m.cache_status for m in metrics).count("miss") == 1
    assert sum((m.cost_usd for m in metrics), Decimal(0)) == (await batch_row(batch.id)).cost_usd


async def test_a_runner_stopped_mid_batch_gives_back_every_slot_and_item(sdk, settings):
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 6
    batch = await created(sdk, [batch_line(f"s{i}", f"q {i}", simulate={"latency_ms": 2000}) for i in range(12)])
    runner = asyncio.ensure_future(batch_run(batch.id))

    async def in_flight():
        return InFlight.current == 6

    await until(in_flight)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert InFlight.current == 0
    items = await items_of(batch.id)
    assert {item.status for item in items} == {ItemStatus.QUEUED}
    assert all(item.attempts == 0 and not item.lease_owner for item in items)
    row = await batch_row(batch.id)
    assert row.status == "in_progress" and row.heartbeat_at is None


async def test_the_embedded_executor_resumes_a_batch_after_a_restart(
    sdk, settings, fake_openai, monkeypatch, upstream_under_test
):
    await fake_gpt_added(fake_openai, monkeypatch)
    settings.LLMOPS_BATCH_EXECUTOR = "in_process"
    settings.LLMOPS_BATCH_RUNNER_ITEMS = 4
    # Four answers, then the upstream holds every call: the server stops mid-batch.
    fake_openai.hold_after(4)
    ids = [f"r{i}" for i in range(16)]
    batch = await created(sdk, [batch_line(i, f"q {i}", model="fake-gpt") for i in ids])

    async def four_done():
        return (await batch_row(batch.id)).completed >= 4

    await until(four_done)
    # The server stops: its runner and the calls it has in flight are given up at once
    # (not when the held calls time out, nor after the runner took more items).
    began = time.monotonic()
    await asyncio.to_thread(EXECUTOR.stop)
    assert time.monotonic() - began < settings.LLMOPS_UPSTREAM_TIMEOUT_S
    stopped = await batch_row(batch.id)
    assert stopped.status == "in_progress" and (stopped.completed, stopped.failed) == (4, 0)
    fake_openai.release()
    EXECUTOR.start()  # and starts again
    ended = await batch_ended(sdk, batch.id)
    assert ended.status == "completed" and ended.request_counts.completed == len(ids)
    out, errors = await both_files(sdk, ended)
    assert errors == [] and sorted(line["custom_id"] for line in out) == sorted(ids)
    answered = [r.body["messages"][0]["content"] for r in fake_openai.requests if r.path.endswith("/completions")]
    assert sorted(set(answered)) == sorted(f"q {i}" for i in ids)


async def test_an_answer_the_database_refuses_holds_back_no_other_answer_of_its_turn():
    @sync_to_async
    def scenario():
        batch = running_batch(total=2)
        odd, plain = (
            BatchItem.objects.create(batch=batch, line=n, custom_id=c, body={}, status=ItemStatus.RUNNING)
            for n, c in ((1, "odd"), (2, "plain"))
        )
        # PostgreSQL refuses a NUL character in JSON: the answer is kept without it.
        outcomes = [
            Outcome(odd.id, ItemStatus.SUCCEEDED, status_code=200, response={"text": "a\u0000b"}),
            Outcome(plain.id, ItemStatus.SUCCEEDED, status_code=200, response={"text": "fine"}),
        ]
        recorded = outcomes_record(batch.id, outcomes)
        batch.refresh_from_db()
        return recorded, batch, {i.custom_id: i for i in BatchItem.objects.filter(batch=batch)}

    recorded, batch, items = await scenario()
    assert recorded == [True, True] and batch.completed == 2
    assert items["plain"].response == {"text": "fine"}
    assert items["odd"].status == ItemStatus.SUCCEEDED and items["odd"].response["text"] in ("ab", "a\u0000b")
