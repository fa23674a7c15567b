"""Routes, cascades and evaluations, as staff configure them in the admin.

A request names a route as its model (`route:support`), or names `auto` and declares a
task type, which picks the route staff mapped to it. The route's rules are tried in order;
the first whose conditions all hold gives the target, else the route's default does. A
target is one model, a set of models balanced by a strategy, or a cascade."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from llmops.models import ModelEndpoint
from routing.checks import json_schema_refusal, judge_rubric_refusal, labels_parsed

TASK_TYPES = ("classification", "extraction", "summarisation", "translation", "reasoning", "creative", "code")
COMPLEXITIES = ("low", "medium", "high")
ROUTE_PREFIX = "route:"
AUTO_MODEL = "auto"


class Strategy(models.TextChoices):
    SINGLE = "single", "one model"
    WEIGHTED = "weighted", "weighted random (name:weight)"
    LEAST_IN_FLIGHT = "least_in_flight", "the model with the fewest calls in flight"
    LOWEST_P95 = "lowest_p95", "the model with the lowest measured p95 latency"
    CASCADE = "cascade", "a cascade (cheap model first, escalate on a failed check)"


def names_parsed(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def weighted_models_parsed(text: str) -> list[tuple[str, float]]:
    """`a:3, b` -> [("a", 3.0), ("b", 1.0)]; raises ValueError naming the bad part."""
    parsed: list[tuple[str, float]] = []
    for part in names_parsed(text):
        name, _, weight = part.partition(":")
        name = name.strip()
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"{part!r}: the weight after ':' must be a number") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{part!r}: the weight must be a positive number")
        parsed.append((name, value))
    return parsed


def missing_or_disabled(names: list[str]) -> str | None:
    """Why these catalog names cannot be routed to, or None when all are enabled models."""
    rows = dict(ModelEndpoint.objects.filter(name__in=names).values_list("name", "enabled"))
    unknown = [name for name in names if name not in rows]
    if unknown:
        return f"Not in the catalog: {', '.join(unknown)}."
    disabled = [name for name in names if not rows[name]]
    if disabled:
        return f"Disabled in the catalog: {', '.join(disabled)}."
    return None


class Target(models.Model):
    """Where a rule (or a route's default) sends a request."""

    strategy = models.CharField(max_length=20, choices=Strategy.choices, default=Strategy.SINGLE)
    model_names = models.CharField(
        "models",
        max_length=1000,
        blank=True,
        help_text="Catalog models, comma-separated; for weighted, name:weight (e.g. sim-small:3, sim-large:1).",
    )
    cascade = models.ForeignKey(
        "routing.Cascade", null=True, blank=True, on_delete=models.PROTECT, help_text="For the cascade strategy."
    )

    class Meta:
        abstract = True

    def target_errors(self) -> dict[str, str]:
        if self.strategy == Strategy.CASCADE:
            if self.cascade_id is None:
                return {"cascade": "The cascade strategy needs a cascade."}
            if self.model_names.strip():
                return {"model_names": "A cascade target takes its models from the cascade; leave this empty."}
            return {}
        if self.cascade_id is not None:
            return {"cascade": "Only the cascade strategy takes a cascade."}
        try:
            weighted = weighted_models_parsed(self.model_names)
        except ValueError as exc:
            return {"model_names": str(exc)}
        names = [name for name, _ in weighted]
        if not names:
            return {"model_names": "Name at least one catalog model."}
        if len(set(names)) != len(names):
            return {"model_names": "Each model may appear only once."}
        if self.strategy == Strategy.SINGLE and len(names) != 1:
            return {"model_names": "The single strategy takes exactly one model; pick a balancing strategy for more."}
        if self.strategy != Strategy.WEIGHTED and any(":" in part for part in names_parsed(self.model_names)):
            return {"model_names": "Weights (name:weight) apply only to the weighted strategy."}
        problem = missing_or_disabled(names)
        return {"model_names": problem} if problem else {}

    def target_label(self) -> str:
        if self.strategy == Strategy.CASCADE:
            return f"cascade {self.cascade.name}" if self.cascade_id else "cascade ?"
        return (
            f"{self.get_strategy_display()}: {self.model_names}"
            if self.strategy != Strategy.SINGLE
            else self.model_names
        )


class Cascade(models.Model):
    """Models tried in order: each answer is scored by its step's checks, and below the
    step's threshold the next model is asked. The last step's answer is final."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Confidence(models.TextChoices):
    NONE = "", "no confidence check"
    MEAN = "mean", "mean token probability"
    MIN = "min", "lowest token probability"


class CascadeStep(models.Model):
    """One model of a cascade and the checks its answer must pass. Every check scores the
    answer from 0 to 1 (label set, pattern and schema: 1 or 0); the step's score is the
    lowest, and the answer is kept when it reaches the threshold."""

    cascade = models.ForeignKey(Cascade, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(default=0)
    model = models.CharField(max_length=100, help_text="A catalog model.")
    labels = models.CharField(
        max_length=2000,
        blank=True,
        help_text="Allowed answers, comma-separated: the answer, lower-cased and without surrounding "
        "punctuation, must be one of them.",
    )
    pattern = models.CharField(
        max_length=1000, blank=True, help_text="A regular expression the answer must match (Python syntax, searched)."
    )
    json_schema = models.JSONField(
        null=True, blank=True, help_text="A JSON Schema the answer, parsed as JSON, must satisfy."
    )
    confidence = models.CharField(
        max_length=10,
        choices=Confidence.choices,
        blank=True,
        default=Confidence.NONE,
        help_text="Score the answer by its token probabilities (local and OpenAI models report them).",
    )
    judge_model = models.CharField(max_length=100, blank=True, help_text="A catalog model that grades the answer.")
    judge_rubric = models.TextField(
        blank=True,
        help_text="What the judge grades. It must ask for a score from 0 to 1; the judge's first line "
        "must be that number.",
    )
    threshold = models.FloatField(default=0.5, help_text="The lowest score (0 to 1) at which the answer is kept.")
    max_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most tokens this step may answer with (a label needs a few): bounds the cheap step's time.",
    )

    class Meta:
        ordering = ["cascade", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["cascade", "position"], name="unique_cascade_step_position")]

    def __str__(self) -> str:
        return f"{self.cascade.name} step {self.position}: {self.model}"

    @property
    def has_checks(self) -> bool:
        return bool(
            self.labels.strip() or self.pattern or self.json_schema is not None or self.confidence or self.judge_model
        )

    def clean(self) -> None:
        errors: dict[str, str] = {}
        problem = missing_or_disabled([self.model]) if self.model else "Name a catalog model."
        if problem:
            errors["model"] = problem
        if self.labels.strip() and not labels_parsed(self.labels):
            errors["labels"] = "Name at least one label."
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                errors["pattern"] = f"Not a valid regular expression: {exc}."
        if self.json_schema is not None:
            refusal = json_schema_refusal(self.json_schema)
            if refusal:
                errors["json_schema"] = refusal
        if self.confidence and not errors.get("model"):
            provider = ModelEndpoint.objects.filter(name=self.model).values_list("provider", flat=True).first()
            if provider == "anthropic":
                errors["confidence"] = "Anthropic models report no token probabilities: choose another check."
        if self.judge_model or self.judge_rubric.strip():
            if not self.judge_model:
                errors["judge_model"] = "A judge needs a catalog model."
            else:
                problem = missing_or_disabled([self.judge_model])
                if problem:
                    errors["judge_model"] = problem
            refusal = judge_rubric_refusal(self.judge_rubric)
            if refusal:
                errors["judge_rubric"] = refusal
        if not 0 <= self.threshold <= 1:
            errors["threshold"] = "Must be between 0 and 1."
        if self.max_tokens == 0:
            errors["max_tokens"] = "Must be at least 1 (blank: the request's own limit)."
        if errors:
            raise ValidationError(errors)


class Route(Target):
    """A name clients send as `route:<name>`; the strategy, models and cascade are its default."""

    name = models.SlugField(max_length=100, unique=True, help_text="Clients send model=route:<name>.")
    task_type = models.SlugField(
        max_length=50,
        blank=True,
        help_text=f"Requests naming model=auto with this task_type come here ({', '.join(TASK_TYPES)}, or your own).",
    )
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    fitted_threshold = models.FloatField(
        null=True, blank=True, help_text="The cascade threshold `manage.py evaluate --fit` chose (it also sets it)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["task_type"], condition=~Q(task_type=""), name="one_route_per_task_type")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.task_type = self.task_type.lower()
        errors = self.target_errors()
        if errors:
            raise ValidationError(errors)


class RouteRule(Target):
    """Conditions on a request's features; all that are set must hold."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=100, blank=True, help_text="A label for previews and the answer's reason.")
    enabled = models.BooleanField(default=True)
    task_types = models.CharField(max_length=500, blank=True, help_text="The declared task_type is one of these.")
    complexities = models.CharField(
        max_length=200, blank=True, help_text=f"The declared complexity is one of these ({', '.join(COMPLEXITIES)}…)."
    )
    prompt = models.CharField(max_length=100, blank=True, help_text="The request uses this prompt template (name).")
    min_input_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Estimated input tokens ≥ this.")
    max_input_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Estimated input tokens ≤ this.")
    keywords = models.CharField(
        max_length=1000, blank=True, help_text="The last user turn contains one of these words (comma-separated)."
    )
    pattern = models.CharField(
        max_length=1000, blank=True, help_text="The last user turn matches this regular expression (searched)."
    )
    metadata = models.JSONField(
        default=dict, blank=True, help_text='The request\'s metadata has these values, e.g. {"tier": "free"}.'
    )

    class Meta:
        ordering = ["route", "position", "id"]

    def __str__(self) -> str:
        return self.name or f"rule {self.position}"

    def clean(self) -> None:
        errors = self.target_errors()
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                errors["pattern"] = f"Not a valid regular expression: {exc}."
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            # Requests send metadata as strings (as OpenAI's `metadata` is): a number here would never match.
            errors["metadata"] = 'Must be an object of strings, e.g. {"tier": "free"}.'
        if (
            self.min_input_tokens is not None
            and self.max_input_tokens is not None
            and self.min_input_tokens > self.max_input_tokens
        ):
            errors["max_input_tokens"] = "Must not be below min_input_tokens."
        if errors:
            raise ValidationError(errors)

    def conditions(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in ("task_types", "complexities", "prompt", "keywords", "pattern"):
            if getattr(self, name):
                found[name] = getattr(self, name)
        for name in ("min_input_tokens", "max_input_tokens"):
            if getattr(self, name) is not None:
                found[name] = getattr(self, name)
        if self.metadata:
            found["metadata"] = self.metadata
        return found


class Evaluation(models.Model):
    """One run of `manage.py evaluate`: a labelled dataset through each option of a route."""

    route = models.ForeignKey(Route, null=True, blank=True, on_delete=models.SET_NULL, related_name="evaluations")
    route_name = models.CharField(max_length=100)
    dataset = models.CharField(max_length=300)
    rows = models.PositiveIntegerField()
    results = models.JSONField(
        default=list,
        help_text="Per option: option, kind, accuracy, cost_usd, cost_per_1k, p50_ms, p95_ms, n, stand_in.",
    )
    strongest = models.CharField(max_length=120, blank=True)
    cost_saved_share = models.FloatField(null=True, blank=True, help_text="The cascade's saving against the strongest.")
    accuracy_kept_share = models.FloatField(null=True, blank=True, help_text="The cascade's share of its accuracy.")
    fitted_threshold = models.FloatField(null=True, blank=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.route_name} on {self.dataset} ({self.created_at:%Y-%m-%d %H:%M})"
