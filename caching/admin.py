from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from caching.models import CacheEntry, CachePolicy
from caching.services import cache_forget
from caching.store import hot_delete


@admin.register(CachePolicy)
class CachePolicyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "model_pattern",
        "enabled",
        "ttl_seconds",
        "scope",
        "normalisation",
        "semantic",
        "similarity_threshold",
        "prompt_caching",
    )
    list_filter = ("enabled", "scope", "semantic", "prompt_caching")
    list_editable = ("enabled",)
    search_fields = ("name", "model_pattern")
    fieldsets = (
        (None, {"fields": ("name", "model_pattern", "enabled", "ttl_seconds", "scope", "normalisation")}),
        ("Sampling", {"fields": ("max_temperature", "cache_above_max_temperature")}),
        ("Semantic cache", {"fields": ("semantic", "similarity_threshold", "embedder")}),
        ("Provider prompt caching", {"fields": ("prompt_caching",)}),
    )


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"

    def lookups(self, request, model_admin):
        return [("1h", "older than an hour"), ("1d", "older than a day"), ("7d", "older than a week")]

    def queryset(self, request, queryset):
        hours = {"1h": 1, "1d": 24, "7d": 24 * 7}.get(self.value() or "")
        return queryset.filter(created_at__lt=timezone.now() - timedelta(hours=hours)) if hours else queryset


class LiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("live", "live"), ("expired", "expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "live":
            return queryset.filter(expires_at__gt=now)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


def _drop_answers(request: HttpRequest, queryset: QuerySet[CacheEntry]) -> list[str]:
    keys = list(queryset.values_list("key_hash", flat=True))
    cache_forget(keys)
    try:
        hot_delete(keys)
    except Exception as exc:
        # The rows still change: a hot copy left behind lives out its TTL at most.
        messages.warning(request, f"The hot cache could not be reached ({exc}); its copies expire with their TTL.")
    return keys


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    list_display = (
        "short_query",
        "model",
        "prompt",
        "scope",
        "created_at",
        "expires_at",
        "hit_count",
        "cost_saved_usd",
    )
    list_filter = (LiveFilter, AgeFilter, "model", "prompt", "scope")
    search_fields = ("query", "key_hash", "model", "prompt")
    date_hierarchy = "created_at"
    actions = ["expire_entries", "purge_entries"]
    readonly_fields = [f.name for f in CacheEntry._meta.fields if f.name != "id"]
    show_full_result_count = False

    @admin.display(description="query")
    def short_query(self, obj: CacheEntry) -> str:
        return obj.query[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Expire the selected entries (answers stop being served)")
    def expire_entries(self, request: HttpRequest, queryset: QuerySet[CacheEntry]) -> None:
        keys = _drop_answers(request, queryset)
        CacheEntry.objects.filter(key_hash__in=keys).update(expires_at=timezone.now())
        self.message_user(request, f"Expired {len(keys)} cached answers.", messages.SUCCESS)

    @admin.action(description="Purge the selected entries (delete them)")
    def purge_entries(self, request: HttpRequest, queryset: QuerySet[CacheEntry]) -> None:
        keys = _drop_answers(request, queryset)
        CacheEntry.objects.filter(key_hash__in=keys).delete()
        self.message_user(request, f"Purged {len(keys)} cached answers.", messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: CacheEntry) -> None:
        _drop_answers(request, CacheEntry.objects.filter(pk=obj.pk))
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CacheEntry]) -> None:
        _drop_answers(request, queryset)
        super().delete_queryset(request, queryset)
