from __future__ import annotations

from django.db import models


class QueryMetric(models.Model):
    """One row per gateway request, success or failure. Written in bulk, off the hot path."""

    class Status(models.TextChoices):
        OK = "ok", "ok"
        ERROR = "error", "error"
        CANCELLED = "cancelled", "cancelled"

    request_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    api_key = models.ForeignKey("llmops.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    endpoint = models.CharField(max_length=40, default="chat.completions")
    model = models.CharField(max_length=200, blank=True, db_index=True, help_text="The model the request named")
    answered_by = models.CharField(max_length=200, blank=True, help_text="The model that finally answered")
    route = models.CharField(max_length=100, blank=True, help_text="The route the request went through, if any")
    option = models.CharField(
        max_length=120, blank=True, help_text="What answered: a model, or cascade:<name> (routing's measurements)"
    )
    quality_score = models.FloatField(null=True, blank=True, help_text="The answer's score from a cascade's checks")
    attempts = models.JSONField(
        default=list, blank=True, help_text="Every upstream attempt: model, outcome, latency_ms (and status)"
    )
    provider = models.CharField(max_length=20, blank=True)
    prompt = models.CharField(max_length=120, blank=True, help_text="name@version when a prompt template was used")
    stream = models.BooleanField(default=False)
    latency_ms = models.FloatField(null=True)
    ttft_ms = models.FloatField(null=True, help_text="Time to first token, for streamed requests")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(
        default=0, help_text="Input tokens read from the provider's prompt cache"
    )
    cache_write_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    cache_status = models.CharField(max_length=20, default="miss", help_text="hit, semantic_hit, miss or bypass")
    cost_saved_usd = models.DecimalField(
        max_digits=18, decimal_places=10, default=0, help_text="What a cache hit saved: the answer's original cost"
    )
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    http_status = models.PositiveSmallIntegerField(default=200)
    error_type = models.CharField(max_length=60, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["model", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["option", "created_at"]),
        ]

    def __str__(self) -> str:
        return self.request_id
