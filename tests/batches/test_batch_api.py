"""The official openai SDK's batch flow against the gateway, unchanged."""

from __future__ import annotations

from tests.batches.conftest import batch_ended, batch_line, output_lines, upload
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
