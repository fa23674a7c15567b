from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from llmops.errors import GatewayError, NotFound
from routing.models import Cascade, CascadeStep, Evaluation, Route, RouteRule
from routing.pareto_chart import pareto_svg
from routing.selectors import pareto_options, window_parsed

PARETO_WINDOWS = ("15m", "1h", "24h", "7d")


class RouteRuleInline(admin.StackedInline):
    model = RouteRule
    extra = 0
    ordering = ("position", "id")
    fieldsets = (
        (None, {"fields": (("position", "name", "enabled"),)}),
        (
            "When (every condition that is set must hold)",
            {
                "fields": (
                    ("task_types", "complexities", "prompt"),
                    ("min_input_tokens", "max_input_tokens"),
                    "keywords",
                    "pattern",
                    "metadata",
                )
            },
        ),
        ("Then send to", {"fields": (("strategy", "model_names", "cascade"),)}),
    )


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ("name", "task_type", "default_target", "rule_count", "enabled", "pareto_link")
    list_filter = ("enabled", "task_type")
    search_fields = ("name", "description")
    inlines = [RouteRuleInline]
    readonly_fields = ("fitted_threshold", "pareto_link")
    fieldsets = (
        (None, {"fields": ("name", "task_type", "description", "enabled")}),
        ("Default (when no rule matches)", {"fields": (("strategy", "model_names", "cascade"),)}),
        ("Measured", {"fields": ("fitted_threshold", "pareto_link")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Route]:
        return super().get_queryset(request).select_related("cascade").prefetch_related("rules")

    @admin.display(description="default")
    def default_target(self, obj: Route) -> str:
        return obj.target_label()

    @admin.display(description="rules")
    def rule_count(self, obj: Route) -> int:
        return len(obj.rules.all())

    @admin.display(description="Pareto")
    def pareto_link(self, obj: Route) -> str:
        if not obj.pk:
            return "—"
        url = f"{reverse('admin:routing_route_pareto')}?{urlencode({'route': obj.name})}"
        return format_html('<a href="{}">cost, latency and quality</a>', url)

    def get_urls(self) -> list[URLPattern]:
        pareto = path("pareto/", self.admin_site.admin_view(self.pareto_view), name="routing_route_pareto")
        return [pareto, *super().get_urls()]

    def pareto_view(self, request: HttpRequest) -> HttpResponse:
        """Every option of a route with its p95 latency, cost per 1,000 requests and quality,
        as a chart and a table; the same figures as GET /api/routing/pareto."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        routes = list(Route.objects.filter(enabled=True).order_by("name").values_list("name", flat=True))
        route_name = request.GET.get("route") or (routes[0] if routes else "")
        window = request.GET.get("window") or "24h"
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Cost, latency and quality",
            "routes": routes,
            "route_name": route_name,
            "windows": PARETO_WINDOWS,
            "window": window,
        }
        status = 200
        try:
            if not route_name:
                raise NotFound("No route is enabled: add or enable one first.", param="route")
            window_s = window_parsed(window)
            if window not in PARETO_WINDOWS:  # any window the API takes, such as 30m
                context["windows"] = (*PARETO_WINDOWS, window)
            # The selector is async, for the gateway's async views; the admin's views are sync.
            found = pareto_options(route_name=route_name, window_s=window_s)
        except GatewayError as error:
            context["error"], status = error.message, error.status
        else:
            context.update(
                rows=[_pareto_row(option) for option in found["options"]],
                min_samples=found["min_samples"],
                # pareto_svg escapes every text it draws.
                chart=mark_safe(pareto_svg(found["options"])),
            )
        return TemplateResponse(request, "admin/routing/pareto.html", context, status=status)


class CascadeStepInline(admin.StackedInline):
    model = CascadeStep
    extra = 0
    ordering = ("position", "id")
    fieldsets = (
        (None, {"fields": (("position", "model", "threshold", "max_tokens"),)}),
        (
            "Checks (all that are set must pass; the last step's answer is kept whatever it scores)",
            {"fields": ("labels", "pattern", "json_schema", "confidence", ("judge_model", "judge_rubric"))},
        ),
    )


@admin.register(Cascade)
class CascadeAdmin(admin.ModelAdmin):
    list_display = ("name", "step_list", "updated_at")
    search_fields = ("name", "description")
    inlines = [CascadeStepInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Cascade]:
        return super().get_queryset(request).prefetch_related("steps")

    @admin.display(description="steps")
    def step_list(self, obj: Cascade) -> str:
        return " → ".join(step.model for step in obj.steps.all()) or "—"


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "route_name", "dataset", "rows", "strongest", "saved", "kept", "fitted_threshold")
    list_filter = ("route_name",)
    readonly_fields = [f.name for f in Evaluation._meta.fields] + ["table"]
    exclude = ("results",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by `manage.py evaluate`

    def has_change_permission(self, request: HttpRequest, obj: Evaluation | None = None) -> bool:
        return False

    @admin.display(description="cost saved")
    def saved(self, obj: Evaluation) -> str:
        return "—" if obj.cost_saved_share is None else f"{obj.cost_saved_share:.0%}"

    @admin.display(description="accuracy kept")
    def kept(self, obj: Evaluation) -> str:
        return "—" if obj.accuracy_kept_share is None else f"{obj.accuracy_kept_share:.1%}"

    @admin.display(description="results")
    def table(self, obj: Evaluation) -> str:
        rows = [r for r in obj.results or [] if isinstance(r, dict)]
        header = mark_safe(  # a constant
            "<tr><th>option</th><th>accuracy</th><th>cost (USD)</th><th>per 1,000</th>"
            "<th>p50 ms</th><th>p95 ms</th><th>n</th></tr>"
        )
        body = format_html_join(
            "",
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r.get("label") or r.get("option"),
                    " (stand-in)" if r.get("stand_in") and not r.get("label") else "",
                    _fmt(r.get("accuracy"), "{:.3f}"),
                    _fmt(r.get("cost_usd"), "{:.6f}"),
                    _fmt(r.get("cost_per_1k"), "{:.4f}"),
                    _fmt(r.get("p50_ms"), "{:.0f}"),
                    _fmt(r.get("p95_ms"), "{:.0f}"),
                    r.get("n", "—"),
                )
                for r in rows
            ),
        )
        return format_html("<table>{}{}</table>", header, body)


def _pareto_row(option: dict[str, Any]) -> dict[str, Any]:
    sources = option.get("sources") or {}
    return {
        **option,
        "p95": _fmt(option.get("p95_ms"), "{:.1f}"),
        "cost": _fmt(option.get("cost_per_1k"), "{:.6f}"),
        "quality_shown": _fmt(option.get("quality"), "{:.4f}"),
        "sources_shown": "; ".join(
            f"{name}: {sources[name]}" for name in ("latency", "cost", "quality") if name in sources
        ),
    }


def _fmt(value: object, spec: str) -> str:
    return spec.format(float(value)) if isinstance(value, (int, float)) else "—"
