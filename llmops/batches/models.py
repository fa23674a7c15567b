"""Files and batches in the ORM. Every item of a batch is a row with its status, its
attempts and its lease: whatever runs it (a thread of the server on the embedded default, a
Celery worker in production) claims items for a while, renews the claim while it works,
and records each answer once; a claim that lapses (its worker died) is taken by another."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


class FilePurpose(models.TextChoices):
    BATCH = "batch", "batch input"
    BATCH_OUTPUT = "batch_output", "batch output"


class BatchFile(models.Model):
    """An uploaded JSONL file, or a batch's output or error file. Its bytes are stored in
    parts in the database, so that every worker on every machine reads the same file."""

    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    api_key = models.ForeignKey("llmops.ApiKey", on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=20, choices=FilePurpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    line_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "file"
        indexes = [models.Index(fields=["api_key", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"


class FilePart(models.Model):
    file = models.ForeignKey(BatchFile, on_delete=models.CASCADE, related_name="parts")
    index = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        ordering = ["file", "index"]
        constraints = [models.UniqueConstraint(fields=["file", "index"], name="unique_file_part")]

    def __str__(self) -> str:
        return f"{self.file_id} part {self.index}"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# A batch in one of these is over: nothing runs for it again.
BATCH_ENDED = (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class Execution(models.TextChoices):
    GATEWAY = "gateway", "by the gateway (every item through the pipeline, normal price)"
    PROVIDER = "provider", "by the provider's own batch API (its batch discount)"


class Batch(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    api_key = models.ForeignKey("llmops.ApiKey", on_delete=models.CASCADE, related_name="batches")
    input_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    input_file_ref = models.CharField(max_length=40, help_text="The input file's id, kept once the file is deleted.")
    endpoint = models.CharField(max_length=60)
    completion_window = models.CharField(max_length=10, default="24h")
    metadata = models.JSONField(default=dict, blank=True)
    execution = models.CharField(max_length=10, choices=Execution.choices, default=Execution.GATEWAY)
    model = models.CharField(max_length=200, blank=True, help_text="The model the items name, when they all name one.")
    status = models.CharField(max_length=20, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    errors = models.JSONField(null=True, blank=True, help_text="Why validation failed: each bad line and reason.")
    output_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0, help_text="Spent so far.")
    estimated_input_tokens = models.BigIntegerField(default=0)
    estimated_cost_usd = models.DecimalField(
        max_digits=18, decimal_places=10, null=True, blank=True, help_text="From the catalog's prices, at validation."
    )
    provider_batches = models.JSONField(
        default=list, blank=True, help_text="For provider execution: the provider's batch ids and their state."
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="When a runner last worked on it (a stale one is resumed elsewhere)."
    )
    validator = models.CharField(
        max_length=80, blank=True, help_text="The runner checking its input (one at a time; a stale one is replaced)."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        indexes = [models.Index(fields=["status", "created_at"]), models.Index(fields=["api_key", "created_at"])]

    def __str__(self) -> str:
        return self.id

    @property
    def ended(self) -> bool:
        return self.status in BATCH_ENDED


class ItemStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ITEM_OPEN = (ItemStatus.QUEUED, ItemStatus.RUNNING)


class BatchItem(models.Model):
    """One line of a batch's input: the request, and once it ran, its answer or error."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="items")
    line = models.PositiveIntegerField(help_text="Its line number in the input file (from 1).")
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=20, choices=ItemStatus.choices, default=ItemStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a runner took it.")
    lease_owner = models.CharField(max_length=80, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Retried after a transient failure: not before.")
    request_id = models.CharField(max_length=40, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True, help_text="The answer's body (or the error's).")
    error = models.JSONField(null=True, blank=True, help_text="Why it never got an answer: code and message.")
    model = models.CharField(max_length=200, blank=True, help_text="The model that answered.")
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "line"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "line"], name="unique_batch_line"),
            models.UniqueConstraint(fields=["batch", "custom_id"], name="unique_batch_custom_id"),
        ]
        indexes = [models.Index(fields=["batch", "status", "lease_until"])]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.custom_id}"
