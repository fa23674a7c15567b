from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest

from llmops.auth import key_material
from llmops.models import ApiKey, ModelEndpoint, PromptTemplate


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "provider",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "max_concurrency",
        "enabled",
        "prices_read_on",
    )
    list_filter = ("provider", "enabled")
    list_editable = ("enabled",)
    search_fields = ("name", "upstream_model")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "provider", "upstream_model", "base_url", "api_key_env", "enabled")}),
        (
            "Prices (USD per million tokens)",
            {
                "fields": (
                    "input_price_per_mtok",
                    "output_price_per_mtok",
                    "cached_input_price_per_mtok",
                    "cache_write_price_per_mtok",
                    "batch_discount",
                    "prices_read_on",
                )
            },
        ),
        ("Limits", {"fields": ("context_window", "max_concurrency")}),
        ("Simulation", {"fields": ("simulation",), "classes": ("collapse",)}),
    )


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "is_active", "variable_list", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "description")
    readonly_fields = ("variable_list", "created_at")

    @admin.display(description="variables")
    def variable_list(self, obj: PromptTemplate) -> str:
        return ", ".join(obj.variables) or "—"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "owner", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "prefix")
    fields = ("name", "owner", "is_active", "prefix", "created_at")
    readonly_fields = ("prefix", "created_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        raw = None
        if not change:
            raw, obj.prefix, obj.key_hash = key_material()
        super().save_model(request, obj, form, change)
        if raw:
            messages.warning(request, f"The new key is {raw} — copy it now, it is not shown again.")
