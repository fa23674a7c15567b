from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from llmops.batches.executor import EXECUTOR
from llmops.batches.models import Batch, BatchItem


@pytest.fixture(autouse=True)
def _executor_stopped():
    yield
    EXECUTOR.stop()


def batch_line(custom_id: str, content: str = "Hello", *, model: str = "sim-small", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def upload(lines: list[Any], name: str = "requests.jsonl") -> tuple[str, io.BytesIO]:
    return name, io.BytesIO(jsonl(lines))


async def batch_ended(sdk, batch_id: str, timeout: float = 30.0):
    """The batch once it ended, read through the API as a client polls it."""
    deadline = time.monotonic() + timeout
    while True:
        batch = await sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        await asyncio.sleep(0.05)


async def output_lines(sdk, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await sdk.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


@sync_to_async
def items_of(batch_id: str) -> list[BatchItem]:
    return list(BatchItem.objects.filter(batch_id=batch_id).order_by("line"))


@sync_to_async
def batch_row(batch_id: str) -> Batch:
    return Batch.objects.get(id=batch_id)
