from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from llmops.auth import key_material
from llmops.breakers import breaker_for
from llmops.keys import EDITABLE_FIELDS, api_key_update
from llmops.models import ApiKey, BudgetPeriod, ModelEndpoint, PromptTemplate


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "provider",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "max_concurrency",
        "fallbacks",
        "breaker",
        "enabled",
        "prices_read_on",
    )
    list_filter = ("provider", "enabled")
    list_editable = ("enabled",)
    search_fields = ("name", "upstream_model")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ("breaker",)

    @admin.display(description="circuit breaker")
    def breaker(self, obj: ModelEndpoint) -> str:
        """As this gateway process sees it (shared through Redis when REDIS_URL is set)."""
        if not obj.pk:
            return "—"
        state = breaker_for(obj.name).describe()
        if state["state"] == "open":
            return f"open (retry in {state['retry_after_s']:.0f} s)"
        return f"{state['state']} ({state['failures_in_window']} of {state['calls_in_window']} calls failed lately)"

    fieldsets = (
        (None, {"fields": ("name", "provider", "upstream_model", "base_url", "api_key_env", "enabled")}),
        ("Failures", {"fields": ("fallbacks", "breaker")}),
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
        ("Limits", {"fields": ("context_window", "max_concurrency", "requests_per_minute", "tokens_per_minute")}),
        ("Routing priors", {"fields": ("latency_prior_ms", "quality_prior"), "classes": ("collapse",)}),
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


class ApiKeyForm(forms.ModelForm):
    # The select always sends a period; a post without one (a script, an older page) keeps
    # the key's period rather than failing.
    budget_period = forms.ChoiceField(choices=BudgetPeriod.choices, required=False)

    class Meta:
        model = ApiKey
        fields = EDITABLE_FIELDS

    def clean_budget_period(self) -> str:
        return self.cleaned_data.get("budget_period") or self.instance.budget_period or BudgetPeriod.MONTH


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = (
        "name",
        "prefix",
        "owner",
        "is_active",
        "requests_per_minute",
        "tokens_per_minute",
        "budget",
        "expires_at",
        "created_at",
    )
    list_filter = ("is_active", "budget_period")
    search_fields = ("name", "prefix")
    fieldsets = (
        (None, {"fields": ("name", "owner", "is_active", "expires_at", "prefix", "created_at")}),
        (
            "Limits",
            {
                "fields": ("requests_per_minute", "tokens_per_minute", ("budget_usd", "budget_period")),
                "description": "Blank: no limit. Requests over a limit are answered 429, as OpenAI does.",
            },
        ),
    )
    readonly_fields = ("prefix", "created_at")
    actions = ("revoke",)

    @admin.display(description="budget", ordering="budget_usd")
    def budget(self, obj: ApiKey) -> str:
        return "—" if obj.budget_usd is None else f"${obj.budget_usd:.2f} per {obj.budget_period}"

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(is_active=True).update(is_active=False)
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            api_key_update(key=obj, **{name: form.cleaned_data[name] for name in form.changed_data})
            return
        raw, obj.prefix, obj.key_hash = key_material()
        obj.save()
        # For response_add to show, in this response only: a message would keep the raw key
        # in a cookie (or the session) until it is displayed.
        request._llmops_new_key = raw  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)
        raw = getattr(request, "_llmops_new_key", None)
        if raw is None:
            return response
        if isinstance(response, HttpResponseRedirect):
            next_url = response.url
        else:  # a popup's answer: the key matters more than closing it
            next_url = reverse("admin:llmops_apikey_change", args=[obj.pk])
        page = TemplateResponse(
            request,
            "admin/llmops/apikey/key_created.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Copy the new API key",
                "key": obj,
                "raw_key": raw,
                "next_url": next_url,
            },
        )
        add_never_cache_headers(page)  # no copy of the key in a browser or proxy cache either
        return page


# Autodiscovery imports only `llmops.admin`: the batch models' admin lives with them.
from llmops.batches import admin as batches_admin  # noqa: E402, F401
