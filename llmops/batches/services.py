"""Batches as the API sees them: create, cancel, read and list, each scoped to one API key,
and their shapes in OpenAI's format. Synchronous ORM code (the views call it off the loop);
running them is the runner's (llmops.batches.runner), started by `batch_dispatch`."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from llmops.batches.executor import EXECUTOR
from llmops.batches.models import BATCH_ENDED, Batch, BatchFile, BatchStatus, Execution, FilePurpose
from llmops.celery import app as celery_app
from llmops.errors import GatewayError, InvalidRequest, NotFound

logger = logging.getLogger(__name__)

# What the gateway's file and batch ids look like (models.new_file_id, new_batch_id): anything
# else names nothing, and is never sent to the database (PostgreSQL refuses a NUL in text).
ID_PATTERN = re.compile(r"\A(?:file-|batch_)[0-9a-f]{24}\Z")

BATCH_RUN_TASK = "llmops.batches.run"  # llmops.tasks.batch_run_task

ENDPOINTS = ("/v1/chat/completions",)
# A duration of at most 24 hours, in hours, minutes or seconds (the OpenAPI document states
# it as this pattern too).
WINDOW_PATTERN = (
    r"^(?:([1-9]|1[0-9]|2[0-4])h|([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m"
    r"|([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s)$"
)
WINDOW = re.compile(WINDOW_PATTERN)
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_WINDOW_S = 24 * 3600


def completion_window_seconds(window: Any) -> int:
    match = WINDOW.match(window) if isinstance(window, str) else None
    seconds = int(window[:-1]) * WINDOW_UNITS[window[-1]] if match else 0
    if not match or seconds > MAX_WINDOW_S:
        raise InvalidRequest(
            "completion_window must be a duration of at most 24h, such as 24h, 30m or 90s.",
            param="completion_window",
            code="invalid_completion_window",
        )
    return seconds


def metadata_checked(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise InvalidRequest(
            "metadata must be an object of at most 16 strings (keys up to 64 characters, values up to 512).",
            param="metadata",
        )
    return metadata


def batch_create(
    *,
    api_key_id: int,
    input_file_id: Any,
    endpoint: Any,
    completion_window: Any,
    metadata: Any = None,
    execution: Any = Execution.GATEWAY,
) -> Batch:
    if not isinstance(input_file_id, str) or not input_file_id:
        raise InvalidRequest("input_file_id is required.", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(ENDPOINTS)} (the gateway runs chat completions).",
            param="endpoint",
            code="unsupported_endpoint",
        )
    window = completion_window_seconds(completion_window)
    if execution not in Execution.values:
        raise InvalidRequest(f"execution must be one of {', '.join(Execution.values)}.", param="execution")
    checked = metadata_checked(metadata)
    found = None
    if ID_PATTERN.match(input_file_id):
        found = BatchFile.objects.filter(id=input_file_id, api_key_id=api_key_id).first()
    if found is None:
        raise NotFound("No such file.", param="input_file_id", code="file_not_found")
    if found.purpose != FilePurpose.BATCH:
        raise InvalidRequest("The input file must have been uploaded with purpose 'batch'.", param="input_file_id")
    now = timezone.now()
    batch = Batch.objects.create(
        api_key_id=api_key_id,
        input_file=found,
        input_file_ref=found.id,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=checked,
        execution=execution,
        created_at=now,
        expires_at=now + timedelta(seconds=window),
    )
    transaction.on_commit(lambda: batch_dispatch(batch.id))
    return batch


def batch_get(*, api_key_id: int, batch_id: str) -> Batch:
    found = Batch.objects.filter(id=batch_id, api_key_id=api_key_id).first() if ID_PATTERN.match(batch_id) else None
    if found is None:
        raise NotFound("No such batch.", param="batch_id", code="batch_not_found")
    return found


def batch_cancel(*, api_key_id: int, batch_id: str) -> Batch:
    """Ask a batch to stop: it is cancelling until its runner stopped the remaining items,
    then cancelled, with the finished results kept."""
    batch = batch_get(api_key_id=api_key_id, batch_id=batch_id)
    if batch.status in BATCH_ENDED or batch.status == BatchStatus.FINALIZING:
        raise GatewayError(
            f"The batch is {batch.status}: it can no longer be cancelled.", status=409, code="batch_not_cancellable"
        )
    now = timezone.now()
    Batch.objects.filter(id=batch.id, status__in=(BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)).update(
        status=BatchStatus.CANCELLING, cancelling_at=now
    )
    batch.refresh_from_db()
    transaction.on_commit(lambda: batch_dispatch(batch.id))
    return batch


def page_after(
    queryset: QuerySet[Any], after: str | None, limit: int, *, newest_first: bool = True
) -> tuple[list[Any], bool]:
    """A page from after the object named `after` (OpenAI's cursor pagination), newest or
    oldest first."""
    if after:
        anchor = None
        if ID_PATTERN.match(after):
            anchor = queryset.filter(id=after).values_list("created_at", flat=True).first()
        if anchor is None:
            raise NotFound("after names no object of this list.", param="after", code="cursor_not_found")
        if newest_first:
            queryset = queryset.filter(Q(created_at__lt=anchor) | Q(created_at=anchor, id__lt=after))
        else:
            queryset = queryset.filter(Q(created_at__gt=anchor) | Q(created_at=anchor, id__gt=after))
    order = ("-created_at", "-id") if newest_first else ("created_at", "id")
    rows = list(queryset.order_by(*order)[: limit + 1])
    return rows[:limit], len(rows) > limit


def list_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit must be a whole number from 1 to {maximum}.", param="limit")
    return int(raw)


def _ts(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_body(batch: Batch) -> dict[str, Any]:
    """A batch in OpenAI's shape, and what the gateway adds in `llmops`."""
    estimate = None if batch.estimated_cost_usd is None else format(batch.estimated_cost_usd, "f")
    metadata = dict(batch.metadata or {})
    if estimate is not None:
        metadata.setdefault("llmops_estimated_cost_usd", estimate)
        metadata.setdefault("llmops_estimated_input_tokens", str(batch.estimated_input_tokens))
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model or None,
        "errors": batch.errors,
        "input_file_id": batch.input_file_ref,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.input_tokens + batch.output_tokens,
        },
        "metadata": metadata,
        "llmops": {
            "execution": batch.execution,
            "cost_usd": format(batch.cost_usd, "f"),
            "estimated_cost_usd": estimate,
            "estimated_input_tokens": batch.estimated_input_tokens,
        },
    }


def file_body(stored: BatchFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": _ts(stored.created_at),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_dispatch(batch_id: str) -> None:
    """Have the batch run: by a Celery worker, or by this process's embedded runner."""
    if settings.LLMOPS_BATCH_EXECUTOR == "celery":
        try:
            # By name: the task module is an entry point, which imports this one.
            celery_app.send_task(BATCH_RUN_TASK, args=[batch_id])
        except Exception as exc:  # the broker is down: the batch is stored, and the sweep starts it
            logger.warning("Batch %s could not be queued (%s); the next sweep starts it", batch_id, type(exc).__name__)
    elif settings.LLMOPS_BATCH_EXECUTOR == "in_process":
        EXECUTOR.wake()
