from __future__ import annotations

import json

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from monitoring.buckets import packed_text


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
    cascade_steps = models.PositiveSmallIntegerField(
        default=0, help_text="The cascade steps run (0: no cascade ran; past 1: it escalated)"
    )
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
    """One combination of the dimensions metrics are filtered and grouped by. Rollups point
    here, so each of their rows holds integers and its histograms only. Cube 0 holds every
    dimension; the others (monitoring.rollups.CUBES) keep only a few, blank the rest, and are
    what a read narrowed by those few (or by none) adds up: far fewer rows."""

    cube = models.PositiveSmallIntegerField(default=0)

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

    DIMENSIONS = ("cube", *SERIES_DIMENSIONS)

    class Meta:
        verbose_name_plural = "metric series"
        constraints = [models.UniqueConstraint(fields=["cube", *SERIES_DIMENSIONS], name="metric_series_cube_unique")]

    def __str__(self) -> str:
        return f"{self.model or '-'} {self.status} {self.cache_status}"


class PackedCountsField(models.Field):
    """A histogram's bucket counts packed as one flat list [bucket, count, ...] in bucket order
    (monitoring.buckets): bigint[] on PostgreSQL, a JSON array on SQLite."""

    description = "Packed histogram bucket counts"

    def db_type(self, connection) -> str:
        return "bigint[]" if connection.vendor == "postgresql" else "text"

    def from_db_value(self, value, expression, connection):
        return json.loads(value) if isinstance(value, str) else value

    def to_python(self, value):
        return json.loads(value) if isinstance(value, str) else value

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        value = [int(n) for n in value]
        return value if connection.vendor == "postgresql" else packed_text(value)


class MetricRollup(models.Model):
    """Sums of one series' requests over one minute, hour or day, and the latency and time to
    first token histograms of them in fixed logarithmic buckets (a percentile over any window
    adds up the histograms of its rows). Only integers, so the sums are the
    same on every database: costs in 1e-10 dollars (the precision costs are kept with),
    latencies in microseconds, quality scores in millionths."""

    class Resolution(models.IntegerChoices):
        MINUTE = 60, "minute"
        HOUR = 3600, "hour"
        DAY = 86400, "day"

    resolution = models.IntegerField(choices=Resolution.choices)
    start = models.DateTimeField()
    # Indexed by the unique constraint, which starts with it.
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="+", db_index=False)
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
    latency = PackedCountsField(null=True, blank=True, editable=False, help_text="Latency histogram, packed")
    ttft = PackedCountsField(null=True, blank=True, editable=False, help_text="Time to first token histogram, packed")

    class Meta:
        # Series first: a read picks its series, then takes each one's window as a range.
        constraints = [models.UniqueConstraint(fields=["series", "resolution", "start"], name="metric_rollup_key")]

    def __str__(self) -> str:
        return f"{self.get_resolution_display()} {self.start:%Y-%m-%d %H:%M} #{self.series_id}"


class AlertMetric(models.TextChoices):
    LATENCY_P95 = "latency_p95", "p95 latency"
    TTFT_P95 = "ttft_p95", "p95 time to first token"
    ERROR_RATE = "error_rate", "error rate"
    COST_PER_REQUEST = "cost_per_request", "cost per request"
    CACHE_HIT_RATE = "cache_hit_rate", "cache hit rate"
    QUALITY = "quality", "quality"


# Effects of these are relative (in percent of the baseline); of the others, absolute (in
# percentage points: rates and quality scores are between 0 and 1).
RELATIVE_METRICS = (AlertMetric.LATENCY_P95, AlertMetric.TTFT_P95, AlertMetric.COST_PER_REQUEST)


class AlertRule(models.Model):
    """When to raise an alert on one metric: per model and route, the last `recent_minutes`
    compared with the `baseline_hours` before them, by a statistical test (monitoring.alerts)."""

    metric = models.CharField(max_length=20, choices=AlertMetric.choices)
    enabled = models.BooleanField(default=True)
    recent_minutes = models.PositiveIntegerField(
        default=15,
        validators=[MinValueValidator(5), MaxValueValidator(24 * 60)],
        help_text="The recent window, in whole minutes up to the last complete one.",
    )
    baseline_hours = models.PositiveIntegerField(
        default=7 * 24,
        validators=[MinValueValidator(1), MaxValueValidator(90 * 24)],
        help_text="The baseline: this many whole hours before the hour the recent window starts in (168 = 7 days).",
    )
    min_effect = models.FloatField(
        validators=[MinValueValidator(0.0)],
        help_text=(
            "The smallest worsening that raises an alert: in percent of the baseline for p95 latency, p95 time "
            "to first token and cost per request; in percentage points for error rate, cache hit rate and quality "
            "(a score of 0.80 to 0.75 is 5 points). An open alert resolves once the test is no longer significant "
            "at 0.05, or the effect is shown (at 95% confidence) to be under this minimum."
        ),
    )
    min_samples = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(10)],
        help_text=(
            "Both windows need at least this many samples: requests for error rate, successful requests for "
            "latency and cost, streamed ones for time to first token, cache lookups for hit rate, scored answers "
            "for quality."
        ),
    )
    alpha = models.FloatField(
        default=1e-5,
        validators=[MinValueValidator(1e-12), MaxValueValidator(0.05)],
        verbose_name="significance level",
        help_text=(
            "An alert opens only when the test's one-sided p-value is below this. The default 0.00001 keeps false "
            "alarms from a week of checks every minute, over every rule and model, to about one at most."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["metric", "id"]

    def __str__(self) -> str:
        return f"{self.get_metric_display()}: {self.recent_minutes} min against {self.baseline_hours} h"

    @property
    def relative(self) -> bool:
        return self.metric in RELATIVE_METRICS


class Alert(models.Model):
    """One regression of one rule's metric for one model and route, from when a check found
    it until one found it recovered. The figures are the latest check's."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        RESOLVED = "resolved", "resolved"

    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    metric = models.CharField(max_length=20, choices=AlertMetric.choices)
    model = models.CharField(max_length=200, blank=True, help_text="The model or route the requests named")
    route = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=60, blank=True, help_text="Why it resolved")
    last_checked_at = models.DateTimeField()
    baseline_value = models.FloatField(
        null=True, help_text="Milliseconds for p95s, US dollars for cost, a share (0 to 1) for rates and quality"
    )
    recent_value = models.FloatField(null=True)
    effect = models.FloatField(help_text="How much worse: percent of the baseline, or percentage points")
    p_value = models.FloatField()
    recent_samples = models.BigIntegerField()
    baseline_samples = models.BigIntegerField()
    recent_minutes = models.PositiveIntegerField(
        null=True, help_text="The recent window the figures are over: the last third, two thirds or all of the rule's"
    )
    notified_at = models.DateTimeField(null=True, blank=True, help_text="When the webhook was last called")
    notify_outcome = models.CharField(max_length=200, blank=True, help_text="How the last webhook call went")

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["status", "metric"])]
        constraints = [
            # Two checkers (two servers' loops, a cron beside beat) cannot open one regression twice.
            models.UniqueConstraint(
                fields=["rule", "model", "route"], condition=Q(status="open"), name="alert_one_open_per_scope"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_metric_display()} {self.model or '-'} {self.route or '-'} ({self.status})"
