"""Routes, cascades and the latest evaluation of each route as the hot path reads them:
frozen and compiled (regular expressions, label sets) in this app's own configuration
snapshot (llmops.config), reloaded when any of them changes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from llmops.config import ConfigSnapshot, config_watch
from routing.checks import CheckSpec, labels_parsed
from routing.models import Cascade, CascadeStep, Evaluation, Route, RouteRule, Strategy, weighted_models_parsed


@dataclass(frozen=True, slots=True)
class StepConfig:
    model: str
    checks: CheckSpec
    threshold: float
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    name: str
    steps: tuple[StepConfig, ...]

    @property
    def label(self) -> str:
        return f"cascade:{self.name}"


@dataclass(frozen=True, slots=True)
class TargetConfig:
    strategy: str
    models: tuple[tuple[str, float], ...] = ()
    cascade: CascadeConfig | None = None

    @property
    def options(self) -> list[str]:
        """What can answer: each model on its own, or the cascade as one."""
        return [self.cascade.label] if self.cascade is not None else [name for name, _ in self.models]


@dataclass(frozen=True, slots=True)
class RuleConfig:
    position: int
    name: str
    target: TargetConfig
    task_types: frozenset[str] = frozenset()
    complexities: frozenset[str] = frozenset()
    prompt: str = ""
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    keywords: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return self.name or f"rule {self.position}"


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    task_type: str
    default: TargetConfig
    rules: tuple[RuleConfig, ...]
    fingerprint: str  # changes with any change to the route: part of its answers' cache key

    @property
    def options(self) -> list[str]:
        seen: list[str] = []
        for target in (*(rule.target for rule in self.rules), self.default):
            for option in target.options:
                if option not in seen:
                    seen.append(option)
        return seen


@dataclass(slots=True)
class RoutingSnapshot:
    routes: dict[str, RouteConfig]
    by_task_type: dict[str, RouteConfig]
    cascades: dict[str, CascadeConfig]
    # The latest evaluation's accuracy of each option, per route.
    evaluated: dict[str, dict[str, float]] = field(default_factory=dict)


def _checks(step: CascadeStep) -> CheckSpec:
    return CheckSpec(
        labels=labels_parsed(step.labels) if step.labels.strip() else (),
        pattern=re.compile(step.pattern) if step.pattern else None,
        json_schema=step.json_schema,
        confidence=step.confidence,
        judge_model=step.judge_model,
        judge_rubric=step.judge_rubric,
    )


def _target(row: Route | RouteRule, cascades: dict[int, CascadeConfig]) -> TargetConfig:
    if row.strategy == Strategy.CASCADE:
        return TargetConfig(row.strategy, (), cascades.get(row.cascade_id))
    return TargetConfig(row.strategy, tuple(weighted_models_parsed(row.model_names)))


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip().lower() for word in text.split(",") if word.strip())


def _rule(row: RouteRule, cascades: dict[int, CascadeConfig]) -> RuleConfig:
    return RuleConfig(
        position=row.position,
        name=row.name,
        target=_target(row, cascades),
        task_types=frozenset(_words(row.task_types)),
        complexities=frozenset(_words(row.complexities)),
        prompt=row.prompt.strip(),
        min_input_tokens=row.min_input_tokens,
        max_input_tokens=row.max_input_tokens,
        keywords=_words(row.keywords),
        pattern=re.compile(row.pattern) if row.pattern else None,
        metadata=tuple(sorted((str(k), str(v)) for k, v in (row.metadata or {}).items())),
    )


def _fingerprint(parts: list[Any]) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _load() -> RoutingSnapshot:
    cascades_by_id: dict[int, CascadeConfig] = {}
    steps: dict[int, list[StepConfig]] = {}
    for step in CascadeStep.objects.order_by("cascade_id", "position", "id"):
        steps.setdefault(step.cascade_id, []).append(
            StepConfig(step.model, _checks(step), step.threshold, step.max_tokens)
        )
    for cascade in Cascade.objects.all():
        cascades_by_id[cascade.id] = CascadeConfig(cascade.name, tuple(steps.get(cascade.id, ())))
    rules: dict[int, list[RuleConfig]] = {}
    for rule in RouteRule.objects.filter(enabled=True).order_by("route_id", "position", "id"):
        rules.setdefault(rule.route_id, []).append(_rule(rule, cascades_by_id))
    routes: dict[str, RouteConfig] = {}
    for row in Route.objects.filter(enabled=True):
        default = _target(row, cascades_by_id)
        route_rules = tuple(rules.get(row.id, ()))
        routes[row.name] = RouteConfig(
            name=row.name,
            task_type=row.task_type,
            default=default,
            rules=route_rules,
            fingerprint=_fingerprint([default, route_rules]),
        )
    evaluated: dict[str, dict[str, float]] = {}
    for evaluation in Evaluation.objects.order_by("route_name", "-created_at"):
        if evaluation.route_name in evaluated:
            continue
        evaluated[evaluation.route_name] = {
            str(item["option"]): float(item["accuracy"])
            for item in evaluation.results or []
            # Measured rows only: not those computed offline, nor the cascade before its fit.
            if isinstance(item, dict)
            and item.get("kind", "model") in ("model", "cascade")
            and "option" in item
            and isinstance(item.get("accuracy"), (int, float))
        }
    return RoutingSnapshot(
        routes=routes,
        by_task_type={route.task_type.lower(): route for route in routes.values() if route.task_type},
        cascades={c.name: c for c in cascades_by_id.values()},
        evaluated=evaluated,
    )


_snapshot = ConfigSnapshot(_load)


def routing_config_read() -> RoutingSnapshot:
    """The configuration read now, for sync callers (the admin, staff pages): the hot path
    uses the snapshot instead."""
    return _load()


async def routing_snapshot() -> RoutingSnapshot:
    return await _snapshot.get()


def connect_invalidation() -> None:
    config_watch(Route, RouteRule, Cascade, CascadeStep, Evaluation)
