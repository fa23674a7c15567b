"""A batch's end: its output and error files in OpenAI's format, written once from the
items' rows, in the same transaction that gives the batch its final status. Every item is
in exactly one of the two files. Synchronous ORM code (the runner's store thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db import transaction
from django.utils import timezone

from llmops.batches.files import PART_BYTES, file_parts_write
from llmops.batches.models import BATCH_ENDED, Batch, BatchFile, BatchItem, BatchStatus, FilePurpose, ItemStatus

LINE_FIELDS = ("id", "custom_id", "status", "status_code", "request_id", "response", "error", "line")


def output_line(item: dict[str, Any]) -> bytes:
    """One item as a line of OpenAI's batch output (or error) file."""
    request_id = item["request_id"] or f"{item['id']}"
    if item["status"] in (ItemStatus.SUCCEEDED, ItemStatus.FAILED):
        response: dict[str, Any] | None = {
            "status_code": item["status_code"],
            "request_id": request_id,
            "body": item["response"],
        }
        error = None
    else:
        response, error = None, item["error"]
    line = {"id": f"batch_req_{request_id}", "custom_id": item["custom_id"], "response": response, "error": error}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


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
        items = BatchItem.objects.filter(batch_id=batch_id).order_by("line").values(*LINE_FIELDS)
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
