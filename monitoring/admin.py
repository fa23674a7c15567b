from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from monitoring.alerts.selectors import alert_message
from monitoring.models import RELATIVE_METRICS, Alert, AlertRule, QueryMetric


@admin.register(QueryMetric)
class QueryMetricAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "model",
        "provider",
        "status",
        "http_status",
        "latency_ms",
        "ttft_ms",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cache_status",
        "api_key",
    )
    list_filter = ("status", "model", "provider", "cache_status", "stream", "error_type", "api_key")
    search_fields = ("request_id", "model", "error_message", "prompt")
    date_hierarchy = "created_at"
    list_select_related = ("api_key",)
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: QueryMetric | None = None) -> bool:
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    """The regression checks' rules: each model and route's last minutes against the hours
    before them (monitoring.alerts). The first check makes one rule per metric with defaults."""

    list_display = ("metric", "enabled", "recent_minutes", "baseline_hours", "min_effect", "min_samples", "alpha")
    list_editable = ("enabled",)
    list_filter = ("enabled", "metric")
    fields = ("metric", "enabled", "recent_minutes", "baseline_hours", "min_effect", "min_samples", "alpha")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "opened_at",
        "metric",
        "model",
        "route",
        "status",
        "effect_shown",
        "p_value",
        "recent_samples",
        "baseline_samples",
        "recent_minutes",
        "resolved_at",
        "notify_outcome",
    )
    list_filter = ("status", "metric", "model")
    search_fields = ("model", "route")
    date_hierarchy = "opened_at"
    list_select_related = ("rule",)
    readonly_fields = ("message",)

    @admin.display(description="effect", ordering="effect")
    def effect_shown(self, alert: Alert) -> str:
        return f"+{alert.effect:.1f}%" if alert.metric in RELATIVE_METRICS else f"{alert.effect:+.1f} points"

    @admin.display(description="what regressed")
    def message(self, alert: Alert) -> str:
        return alert_message(alert)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False
