"""A batch's end: its output and error files in OpenAI's format, written once from the
items' rows, in the same transaction that gives the batch its final status. Every item is
in exactly one of the two files. Synchronous ORM code (the runner's store thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from llmops.batches.files import PART_BYTES, file_parts_write
from llmops.batches.models import BATCH_ENDED, Batch, BatchFile, BatchItem, BatchStatus, FilePurpose, ItemStatus

LINE_FIELDS = ("id", "custom_id", "status", "status_code", "request_id", "line")
# The answers' and errors' JSON as the database holds it: put into the lines as it is, not
# decoded and encoded again (most of the time of writing a large batch's files).
LINE_TEXT = {"response_text": Cast("response", TextField()), "error_text": Cast("error", TextField())}


def output_line(item: dict[str, Any]) -> bytes:
    """One item as a line of OpenAI's batch output (or error) file:
    {"id", "custom_id", "response": {"status_code", "request_id", "body"} or null, "error"}."""
    request_id = item["request_id"] or f"{item['id']}"
    if item["status"] in (ItemStatus.SUCCEEDED, ItemStatus.FAILED):
        status, body = int(item["status_code"] or 0), item["response_text"] or "null"
        response = f'{{"status_code": {status}, "request_id": {json.dumps(request_id)}, "body": {body}}}'
        error = "null"
    else:
        response, error = "null", item["error_text"] or "null"
    line_id, custom_id = json.dumps(f"batch_req_{request_id}"), json.dumps(item["custom_id"], ensure_ascii=False)
    return f'{{"id": {line_id}, "custom_id": {custom_id}, "response": {response}, "error": {error}}}\n'.encode()


def _chunks(lines: Iterator[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= PART_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _write(batch: Batch, kind: str, items: Any) -> BatchFile | None:
    stored = BatchFile.objects.create(
        api_key_id=batch.api_key_id, purpose=FilePurpose.BATCH_OUTPUT, filename=f"{batch.id}_{kind}.jsonl"
    )
    size, lines = file_parts_write(stored, _chunks(output_line(item) for item in items.iterator(chunk_size=2000)))
    if not size:
        stored.delete()
        return None
    stored.bytes, stored.line_count = size, lines
    stored.save(update_fields=["bytes", "line_count"])
    return stored


def final_status(batch: Batch) -> str:
    if batch.cancelling_at is not None:
        return BatchStatus.CANCELLED
    if batch.items.filter(status=ItemStatus.EXPIRED).exists():
        return BatchStatus.EXPIRED
    return BatchStatus.COMPLETED


def batch_finalizing(batch_id: str) -> bool:
    """Mark the batch finalizing (from in progress or cancelling); False when it already ended."""
    now = timezone.now()
    moved = Batch.objects.filter(
        id=batch_id, status__in=(BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.VALIDATING)
    ).update(status=BatchStatus.FINALIZING, finalizing_at=now, heartbeat_at=now)
    return bool(moved) or Batch.objects.filter(id=batch_id, status=BatchStatus.FINALIZING).exists()


def batch_finalize(batch_id: str) -> str | None:
    """Write the files and end the batch, once: the final status, or None when another
    runner ended it first."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(id=batch_id)
        if batch.status in BATCH_ENDED:
            return None
        items = BatchItem.objects.filter(batch_id=batch_id).order_by("line").values(*LINE_FIELDS, **LINE_TEXT)
        batch.output_file = _write(batch, "output", items.filter(status=ItemStatus.SUCCEEDED))
        batch.error_file = _write(batch, "error", items.exclude(status=ItemStatus.SUCCEEDED))
        status = final_status(batch)
        now = timezone.now()
        batch.status = status
        batch.completed = batch.items.filter(status=ItemStatus.SUCCEEDED).count()
        batch.failed = batch.items.filter(status=ItemStatus.FAILED).count()
        setattr(batch, f"{status}_at", now)
        batch.save()
        return status
