"""Batches, their items and files in the admin, to look at: staff watch batches, they don't
edit them (a batch changes only through its runner, or the API's cancel). Imported by
llmops/admin.py, the module admin autodiscovery loads."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from llmops.batches.models import Batch, BatchFile, BatchItem

# How many batches the items' batch filter offers; any other is reached from its batch's link.
FILTER_BATCHES = 20


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "api_key",
        "status",
        "model",
        "execution",
        "total",
        "completed",
        "failed",
        "cost_usd",
        "estimated_cost_usd",
        "created_at",
        "items_link",
    )
    list_filter = ("status", "execution", "api_key")
    search_fields = ("id", "input_file_ref")
    list_select_related = ("api_key",)
    readonly_fields = ("id", "items_link")
    fieldsets = (
        (None, {"fields": ("id", "api_key", "status", "model", "execution", "items_link")}),
        (
            "Progress",
            {
                "fields": (
                    ("total", "completed", "failed"),
                    ("cost_usd", "estimated_cost_usd"),
                    ("input_tokens", "cached_tokens", "output_tokens", "estimated_input_tokens"),
                )
            },
        ),
        (
            "Request",
            {"fields": ("endpoint", "completion_window", "metadata", "input_file", "input_file_ref", "errors")},
        ),
        ("Results", {"fields": ("output_file", "error_file")}),
        (
            "Times",
            {
                "fields": (
                    ("created_at", "expires_at"),
                    ("in_progress_at", "finalizing_at", "completed_at"),
                    ("failed_at", "expired_at", "cancelling_at", "cancelled_at"),
                    "heartbeat_at",
                )
            },
        ),
        ("Provider execution", {"fields": ("provider_batches",), "classes": ("collapse",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        # The list shows none of these, and a failed validation's errors can be long (the
        # view page reads them when it shows them).
        return super().get_queryset(request).defer("errors", "metadata", "provider_batches")

    @admin.display(description="items")
    def items_link(self, obj: Batch) -> str:
        url = reverse("admin:llmops_batchitem_changelist")
        return format_html('<a href="{}?batch={}">items</a>', url, obj.pk)


class BatchFilter(admin.SimpleListFilter):
    """The newest batches, by id: Django's own filter on a foreign key would read and list
    every batch there is on every page of items."""

    title = "batch"
    parameter_name = "batch"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = Batch.objects.order_by("-created_at", "-id").values_list("id", flat=True)[:FILTER_BATCHES]
        return [(batch_id, batch_id) for batch_id in ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet[BatchItem]) -> QuerySet[BatchItem]:
        return queryset.filter(batch_id=self.value()) if self.value() else queryset


@admin.register(BatchItem)
class BatchItemAdmin(ReadOnlyAdmin):
    list_display = (
        "batch_ref",
        "line",
        "custom_id",
        "status",
        "attempts",
        "status_code",
        "model",
        "cost_usd",
        "finished_at",
    )
    list_filter = ("status", BatchFilter)
    search_fields = ("custom_id", "=batch__id")
    # A batch's items run to tens of thousands: no count of the whole table on each page.
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[BatchItem]:
        # Requests and answers are the heavy part of each row, and the list shows neither.
        return super().get_queryset(request).defer("body", "response", "error")

    @admin.display(description="batch", ordering="batch_id")
    def batch_ref(self, obj: BatchItem) -> str:
        return obj.batch_id  # its id is all the list shows: no join to the batch for it


@admin.register(BatchFile)
class BatchFileAdmin(ReadOnlyAdmin):
    list_display = ("id", "api_key", "purpose", "filename", "bytes", "line_count", "created_at")
    list_filter = ("purpose",)
    search_fields = ("=id", "filename")
    list_select_related = ("api_key",)
    fields = ("id", "api_key", "purpose", "filename", "bytes", "line_count", "created_at")
    readonly_fields = ("id",)
