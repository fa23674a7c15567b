"""Nothing runs until every line is a request the chat endpoint would take."""

from __future__ import annotations

import json
from datetime import timedelta

import openai
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from llmops.batches import runner
from llmops.batches.models import Batch, BatchFile, BatchItem
from llmops.batches.runner import batch_run
from tests.batches.conftest import batch_line, upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _nobody_runs_batches(settings):
    settings.LLMOPS_BATCH_EXECUTOR = "off"  # the test runs each batch itself


async def test_each_bad_line_is_named_and_nothing_runs(sdk):
    good = batch_line("ok-1")
    lines = [
        good,
        b"{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": good["body"]},
        {**batch_line("ok-1")},
        {**batch_line("get"), "method": "GET"},
        {**batch_line("url"), "url": "/v1/embeddings"},
        batch_line("model", model="no-such-model"),
        batch_line("temp", temperature=5),
        batch_line("stream", stream=True),
        b"",  # a blank line carries no request and is no error
        [1, 2],
    ]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert await batch_run(batch.id) == "ended"

    failed = await sdk.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at
    found = {(error.line, error.code) for error in failed.errors.data}
    assert found == {
        (2, "invalid_json"),
        (3, "missing_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_method"),
        (6, "invalid_url"),
        (7, "model_not_found"),
        (8, "invalid_request"),
        (9, "invalid_request"),
        (11, "invalid_json"),
    }
    by_line = {error.line: error for error in failed.errors.data}
    assert "temperature" in by_line[8].message and by_line[8].param == "body.temperature"
    assert "stream" in by_line[9].message
    assert await BatchItem.objects.filter(batch_id=batch.id).acount() == 0
    assert failed.output_file_id is None and failed.error_file_id is None


async def test_a_file_of_no_requests_fails_saying_so(sdk):
    uploaded = await sdk.files.create(file=("blank.jsonl", b"\n\n"), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await batch_run(batch.id)
    failed = await sdk.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert [error.code for error in failed.errors.data] == ["empty_file"]


async def test_an_input_file_deleted_before_the_batch_ran_fails_it(sdk):
    uploaded = await sdk.files.create(file=upload([batch_line("a")]), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await sdk.files.delete(uploaded.id)
    await batch_run(batch.id)
    failed = await sdk.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.input_file_id == uploaded.id
    assert "deleted" in failed.errors.data[0].message


async def test_the_estimate_comes_from_the_catalog_prices_and_the_input(sdk):
    lines = [batch_line(f"r{i}", "word " * 40, max_tokens=10) for i in range(3)]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.metadata.get("llmops_estimated_cost_usd") is None  # not validated yet
    await batch_run(batch.id)
    done = await sdk.batches.retrieve(batch.id)
    tokens = int(done.metadata["llmops_estimated_input_tokens"])
    assert tokens > 3 * 40
    # sim-small: $0.10 per million input tokens, $0.40 per million output tokens, at most 10 out each.
    expected = (tokens * 0.10 + 3 * 10 * 0.40) / 1_000_000
    assert float(done.metadata["llmops_estimated_cost_usd"]) == pytest.approx(expected)
    assert done.model_extra["llmops"]["estimated_cost_usd"] == done.metadata["llmops_estimated_cost_usd"]


async def test_a_file_over_the_size_limit_is_refused_at_upload_and_nothing_is_kept(sdk, settings):
    settings.LLMOPS_BATCH_MAX_FILE_BYTES = 2000
    big = [batch_line(f"r{i}", "x" * 200) for i in range(10)]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(file=upload(big), purpose="batch")
    assert refused.value.body["code"] == "file_too_large"
    assert await BatchFile.objects.acount() == 0


async def test_a_file_of_too_many_lines_is_refused_at_upload(sdk, settings):
    settings.LLMOPS_BATCH_MAX_LINES = 3
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(file=upload([batch_line(f"r{i}") for i in range(4)]), purpose="batch")
    assert refused.value.body["code"] == "too_many_lines"
    assert await BatchFile.objects.acount() == 0
    # Three lines, the last without its newline, are within the limit.
    body = b"\n".join(json.dumps(batch_line(f"r{i}")).encode() for i in range(3))
    kept = await sdk.files.create(file=("three.jsonl", body), purpose="batch")
    assert (await sync_to_async(BatchFile.objects.get)(id=kept.id)).line_count == 3


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "25h"}, "completion_window"),
        ({"completion_window": "forever"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"execution": "teleport"}, "execution"),
    ],
)
async def test_a_bad_batch_request_is_a_400_naming_its_field(sdk, fields, param):
    uploaded = await sdk.files.create(file=upload([batch_line("a")]), purpose="batch")
    request = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.post("/batches", body=request, cast_to=object)
    assert refused.value.body["param"] == param


async def test_a_purpose_other_than_batch_is_refused(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.files.create(file=upload([batch_line("a")]), purpose="assistants")
    assert refused.value.body["param"] == "purpose"


async def test_a_large_file_is_checked_and_written_in_turns(sdk, monkeypatch):
    monkeypatch.setattr(runner, "ITEMS_PER_INSERT", 10)
    monkeypatch.setattr(runner, "LINES_PER_READ", 7)
    lines = [batch_line(f"r{i}") for i in range(35)]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await batch_run(batch.id)
    done = await sdk.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.total == 35 == done.request_counts.completed
    assert [i.line for i in await sync_to_async(list)(BatchItem.objects.filter(batch_id=batch.id))] == list(
        range(1, 36)
    )

    lines[31] = batch_line("r31", model="no-such-model")  # a bad line after three turns were written
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await batch_run(batch.id)
    failed = await sdk.batches.retrieve(batch.id)
    assert failed.status == "failed" and [e.line for e in failed.errors.data] == [32]
    assert await BatchItem.objects.filter(batch_id=batch.id).acount() == 0


async def test_a_line_the_database_could_not_store_is_refused_naming_it(sdk):
    lines = [
        batch_line("ok"),
        b'{"custom_id": "nul\\u0000", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        b'{"custom_id": "s\\ud800", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        json.dumps(batch_line("body", "a\u0000b")).encode(),
    ]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await batch_run(batch.id)
    failed = await sdk.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert [(e.line, e.code) for e in failed.errors.data] == [
        (2, "invalid_json"),
        (3, "invalid_json"),
        (4, "invalid_json"),
    ]


async def test_one_validator_at_a_time_and_a_stale_one_is_replaced(sdk, settings):
    uploaded = await sdk.files.create(file=upload([batch_line("a"), batch_line("b")]), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert await sync_to_async(runner._validation_begin)(batch.id, "first", 60.0) is not None
    assert await sync_to_async(runner._validation_begin)(batch.id, "second", 60.0) is None  # the first lives
    with pytest.raises(runner.ValidationTaken):  # a validator replaced meanwhile writes nothing
        await sync_to_async(runner._items_insert)(batch.id, "second", [])
    await Batch.objects.filter(id=batch.id).aupdate(heartbeat_at=timezone.now() - timedelta(seconds=120))
    assert await sync_to_async(runner._validation_begin)(batch.id, "second", 60.0) is not None
    with pytest.raises(runner.ValidationTaken):
        await sync_to_async(runner._items_insert)(batch.id, "first", [])
    assert await batch_run(batch.id) == "ended"  # the second validator lives: this runner leaves it be
    row = await Batch.objects.aget(id=batch.id)
    assert row.status == "validating" and row.validator == "second"
