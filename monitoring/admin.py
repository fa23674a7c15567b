from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import QueryMetric


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
