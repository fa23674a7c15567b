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


SERIES_DIMENSIONS = (
    "api_key_id",
    "endpoint",
    "model",
    "option",
    "route",
    "prompt",
    "provider",
    "stream",
    "status",
    "error_type",
    "cache_status",
)


class MetricSeries(models.Model):
    """One combination of the dimensions metrics are filtered and grouped by. Rollups and
    histograms point here, so each of their rows is a few integers."""

    api_key_id = models.IntegerField(default=0, help_text="The API key's id; 0 for none (a key's rows outlive it)")
    endpoint = models.CharField(max_length=40)
    model = models.CharField(max_length=200, help_text="The model or route the request named")
    option = models.CharField(max_length=120, help_text="What answered, as routing measures it")
    route = models.CharField(max_length=100)
    prompt = models.CharField(max_length=120)
    provider = models.CharField(max_length=20)
    stream = models.BooleanField()
    status = models.CharField(max_length=20)
    error_type = models.CharField(max_length=60)
    cache_status = models.CharField(max_length=20)

    DIMENSIONS = SERIES_DIMENSIONS

    class Meta:
        verbose_name_plural = "metric series"
        constraints = [models.UniqueConstraint(fields=list(SERIES_DIMENSIONS), name="metric_series_unique")]

    def __str__(self) -> str:
        return f"{self.model or '-'} {self.status} {self.cache_status}"


class MetricRollup(models.Model):
    """Sums of one series' requests over one minute, hour or day. Only integers, so the sums
    are the same on every database: costs in 1e-10 dollars (the precision costs are kept
    with), latencies in microseconds, quality scores in millionths."""

    class Resolution(models.IntegerChoices):
        MINUTE = 60, "minute"
        HOUR = 3600, "hour"
        DAY = 86400, "day"

    resolution = models.IntegerField(choices=Resolution.choices)
    start = models.DateTimeField()
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="+")
    requests = models.BigIntegerField(default=0)
    latency_us = models.BigIntegerField(default=0, help_text="Sum over the requests")
    ttft_count = models.BigIntegerField(default=0)
    ttft_us = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost = models.BigIntegerField(default=0, help_text="In 1e-10 US dollars")
    saved = models.BigIntegerField(default=0, help_text="What cache hits saved, in 1e-10 US dollars")
    quality_count = models.BigIntegerField(default=0)
    quality_micros = models.BigIntegerField(default=0, help_text="Sum of check scores, in millionths")
    cascades = models.BigIntegerField(default=0, help_text="Requests answered by a cascade")
    escalations = models.BigIntegerField(default=0, help_text="Cascade requests that went past the first step")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["resolution", "start", "series"], name="metric_rollup_unique")]

    def __str__(self) -> str:
        return f"{self.get_resolution_display()} {self.start:%Y-%m-%d %H:%M} #{self.series_id}"


class MetricHistogram(models.Model):
    """How many of one series' requests fell in one logarithmic bucket of latency (or time
    to first token) over one minute, hour or day. Percentiles over any window merge the
    bucket counts of its rollups (monitoring.buckets)."""

    class Metric(models.IntegerChoices):
        LATENCY = 1, "latency"
        TTFT = 2, "time to first token"

    resolution = models.IntegerField(choices=MetricRollup.Resolution.choices)
    start = models.DateTimeField()
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="+")
    metric = models.SmallIntegerField(choices=Metric.choices)
    bucket = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resolution", "start", "series", "metric", "bucket"], name="metric_histogram_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_metric_display()} bucket {self.bucket} x{self.count}"
