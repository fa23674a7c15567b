from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from routing.models import Cascade, CascadeStep, Evaluation, Route, RouteRule


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
        return format_html('<a href="{}?route={}">cost, latency and quality</a>', "/admin/routing/pareto/", obj.name)


class CascadeStepInline(admin.StackedInline):
    model = CascadeStep
    extra = 0
    ordering = ("position", "id")
    fieldsets = (
        (None, {"fields": (("position", "model", "threshold"),)}),
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
        header = format_html(
            "<tr><th>option</th><th>accuracy</th><th>cost (USD)</th><th>per 1,000</th>"
            "<th>p50 ms</th><th>p95 ms</th><th>n</th></tr>"
        )
        body = format_html_join(
            "",
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r.get("option"),
                    " (stand-in)" if r.get("stand_in") else "",
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


def _fmt(value: object, spec: str) -> str:
    return spec.format(float(value)) if isinstance(value, (int, float)) else "—"
