"""The official openai SDK's batch flow against the gateway, unchanged."""

from __future__ import annotations

import httpx2
import openai
import pytest

from tests.batches.conftest import batch_ended, batch_line, jsonl, output_lines, upload
from tests.conftest import flushed_metrics


async def test_the_sdk_batch_flow_runs_every_item_through_the_pipeline(sdk, settings):
    settings.LLMOPS_BATCH_POLL_S = 0.05
    lines = [batch_line(f"req-{i}", f"Question {i}", max_tokens=8) for i in range(5)]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0 and uploaded.filename == "requests.jsonl"

    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"}
    )
    assert batch.status == "validating"
    assert batch.metadata["job"] == "t"

    ended = await batch_ended(sdk, batch.id)
    assert ended.status == "completed", ended.errors
    assert ended.request_counts.total == 5 and ended.request_counts.completed == 5
    assert ended.request_counts.failed == 0
    assert ended.in_progress_at and ended.finalizing_at and ended.completed_at
    assert float(ended.metadata["llmops_estimated_cost_usd"]) > 0
    assert ended.error_file_id is None

    lines_out = await output_lines(sdk, ended.output_file_id)
    assert sorted(line["custom_id"] for line in lines_out) == [f"req-{i}" for i in range(5)]
    first = lines_out[0]
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert first["response"]["request_id"] == body["llmops"]["request_id"]

    metrics = await flushed_metrics(endpoint="batch")
    assert len(metrics) == 5
    assert {m.request_id for m in metrics} == {line["response"]["request_id"] for line in lines_out}


async def test_a_key_sees_only_its_own_files_and_batches(sdk, asgi_app, other_api_key, settings):

    settings.LLMOPS_BATCH_EXECUTOR = "off"
    uploaded = await sdk.files.create(file=upload([batch_line("a")]), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    other = openai.AsyncOpenAI(
        base_url="http://testserver/v1",
        api_key=other_api_key,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi_app)),
        max_retries=0,
    )
    for call in (
        other.files.retrieve(uploaded.id),
        other.files.content(uploaded.id),
        other.files.delete(uploaded.id),
        other.batches.retrieve(batch.id),
        other.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.NotFoundError):
        await other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [f async for f in other.files.list()] == []
    assert [b async for b in other.batches.list()] == []
    assert (await sdk.batches.retrieve(batch.id)).status == "validating"  # untouched
    await other.close()


async def test_batches_and_files_are_listed_newest_first_a_page_at_a_time(sdk, settings):
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    uploaded = await sdk.files.create(file=upload([batch_line("a")]), purpose="batch")
    made = [
        (
            await sdk.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        ).id
        for _ in range(5)
    ]
    page = await sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    assert [b.id async for b in sdk.batches.list(limit=2)] == made[::-1]  # the SDK follows the cursor
    second = await sdk.files.create(file=upload([batch_line("b")]), purpose="batch")
    assert [f.id async for f in sdk.files.list()] == [second.id, uploaded.id]
    assert [f.id for f in (await sdk.files.list(order="asc")).data] == [uploaded.id, second.id]
    assert [f.id async for f in sdk.files.list(purpose="batch_output")] == []


async def test_a_file_reads_back_as_uploaded_and_deletes(sdk):

    lines = [batch_line(f"r{i}", "é" * 100) for i in range(50)]
    uploaded = await sdk.files.create(file=upload(lines), purpose="batch")
    assert (await sdk.files.retrieve(uploaded.id)).bytes == len(jsonl(lines))
    assert (await sdk.files.content(uploaded.id)).content == jsonl(lines)
    deleted = await sdk.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(uploaded.id)


async def test_bad_ids_and_cursors_name_nothing_and_never_fail(sdk, http, api_key):
    from tests.conftest import auth

    for path in ("/v1/batches/batch_%00x", "/v1/files/file-%00", "/v1/batches?after=%00", "/v1/files?after=x"):
        response = await http.get(path, headers=auth(api_key))
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["type"] == "not_found_error"
    response = await http.get("/v1/batches?limit=\u00b2", headers=auth(api_key))
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


async def test_files_listed_oldest_first_page_forward(sdk):
    made = [(await sdk.files.create(file=upload([batch_line(f"f{i}")]), purpose="batch")).id for i in range(5)]
    first = await sdk.files.list(order="asc", limit=2)
    assert [f.id for f in first.data] == made[:2] and first.has_more
    following = await sdk.files.list(order="asc", limit=2, after=first.data[-1].id)
    assert [f.id for f in following.data] == made[2:4]
