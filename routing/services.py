"""The route step: from a request's model and features, the candidates in order and why.

A model named directly is its own candidate, then its fallbacks. `route:<name>` (or `auto`
with a declared task type) goes through the route's rules: the first rule whose conditions
all hold gives the target, else the route's default. With limits, the route's options (each
model, each cascade) are judged by what they measured and the cheapest that meets every
limit is chosen. The choice costs no query: configuration and measurements are snapshots."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from llmops import catalog
from llmops.catalog import EndpointConfig
from llmops.errors import GatewayError, InvalidRequest, NotFound
from llmops.upstream import InFlight
from monitoring.selectors import Measured
from routing.config import (
    CascadeConfig,
    RouteConfig,
    RoutingSnapshot,
    RuleConfig,
    StepConfig,
    TargetConfig,
    routing_snapshot,
)
from routing.models import AUTO_MODEL, ROUTE_PREFIX, Strategy
from routing.stats import MEASURED, Figures, figures_for
from routing.types import Features, Limits


@dataclass(slots=True)
class CascadeStepPlan:
    step: StepConfig
    candidates: list[EndpointConfig]  # the step's model, then its fallbacks
    judge: EndpointConfig | None = None


@dataclass(slots=True)
class RoutePlan:
    """The route step's result: candidates to try in order (or a cascade), and why."""

    candidates: list[EndpointConfig]
    option: str  # what answers, as measured: a model name, or cascade:<name>
    reason: str
    route: str = ""
    rule: str = ""
    fingerprint: str = ""  # the route's configuration, for its answers' cache key
    cascade: CascadeConfig | None = None
    cascade_steps: list[CascadeStepPlan] = field(default_factory=list)
    considered: list[dict[str, Any]] = field(default_factory=list)  # under limits: every option judged
    features: Features | None = None

    @property
    def first(self) -> EndpointConfig:
        """The model that answers first (a cascade's first step)."""
        return self.cascade_steps[0].candidates[0] if self.cascade_steps else self.candidates[0]

    @property
    def endpoints(self) -> list[EndpointConfig]:
        """Every model the request may ask: a cascade's steps and judges (for its budget)."""
        if self.cascade_steps:
            steps = [step.candidates[0] for step in self.cascade_steps]
            return steps + [step.judge for step in self.cascade_steps if step.judge is not None]
        return self.candidates[:1]


async def _enabled(name: str) -> EndpointConfig | None:
    endpoint = await catalog.endpoint_get(name)
    return endpoint if endpoint is not None and endpoint.enabled else None


async def with_fallbacks(endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
    """Each model followed by its enabled fallbacks, each model once."""
    found: list[EndpointConfig] = []
    for endpoint in endpoints:
        for candidate in [endpoint, *[await _enabled(name) for name in endpoint.fallbacks]]:
            if candidate is not None and candidate not in found:
                found.append(candidate)
    return found


def _rule_matches(rule: RuleConfig, features: Features) -> bool:
    if rule.task_types and features.task_type.lower() not in rule.task_types:
        return False
    if rule.complexities and features.complexity.lower() not in rule.complexities:
        return False
    if rule.prompt and features.prompt != rule.prompt:
        return False
    if rule.min_input_tokens is not None and features.input_tokens < rule.min_input_tokens:
        return False
    if rule.max_input_tokens is not None and features.input_tokens > rule.max_input_tokens:
        return False
    if rule.keywords:
        text = features.last_user.lower()
        if not any(word in text for word in rule.keywords):
            return False
    if rule.pattern is not None and not rule.pattern.search(features.last_user):
        return False
    return all(features.metadata.get(key) == value for key, value in rule.metadata)


def rule_matching(route: RouteConfig, features: Features) -> RuleConfig | None:
    for rule in route.rules:
        if _rule_matches(rule, features):
            return rule
    return None


def _where(route: RouteConfig, rule: RuleConfig | None) -> str:
    return f"route {route.name}, {'rule ' + repr(rule.label) if rule else 'default'}"


async def _cascade_plan(cascade: CascadeConfig, where: str) -> tuple[list[CascadeStepPlan], list[str]]:
    steps: list[CascadeStepPlan] = []
    skipped: list[str] = []
    for step in cascade.steps:
        endpoint = await _enabled(step.model)
        if endpoint is None:
            skipped.append(step.model)
            continue
        judge = None
        if step.checks.judge_model:
            judge = await _enabled(step.checks.judge_model)
            if judge is None:
                raise GatewayError(
                    f"{where} uses cascade {cascade.name}, whose judge {step.checks.judge_model} is missing or "
                    "disabled in the catalog.",
                    status=409,
                    param="model",
                    code="route_target_unavailable",
                )
        steps.append(CascadeStepPlan(step, await with_fallbacks([endpoint]), judge))
    if not steps:
        raise GatewayError(
            f"{where} uses cascade {cascade.name}, which has no enabled model.",
            status=409,
            param="model",
            code="route_target_unavailable",
        )
    return steps, skipped


async def _p95_of(names: list[str]) -> dict[str, float]:
    measured = await MEASURED.get(names)
    return {name: measured[name].p95_ms for name in names if name in measured}


async def _target_plan(route: RouteConfig, rule: RuleConfig | None, target: TargetConfig) -> RoutePlan:
    where = _where(route, rule)
    common: dict[str, Any] = {"route": route.name, "rule": rule.label if rule else "default"}
    common["fingerprint"] = route.fingerprint
    if target.cascade is not None:
        steps, skipped = await _cascade_plan(target.cascade, where)
        note = f"; skipped {', '.join(skipped)} (disabled or missing)" if skipped else ""
        return RoutePlan(
            [],
            target.cascade.label,
            f"{where}: cascade {target.cascade.name}{note}",
            cascade=target.cascade,
            cascade_steps=steps,
            **common,
        )
    available = [(name, weight, await _enabled(name)) for name, weight in target.models]
    usable = [(name, weight, e) for name, weight, e in available if e is not None]
    missing = [name for name, _, e in available if e is None]
    if not usable:
        raise GatewayError(
            f"{where} sends to {', '.join(missing)}, which is missing or disabled in the catalog.",
            status=409,
            param="model",
            code="route_target_unavailable",
        )
    note = f"; skipped {', '.join(missing)} (disabled or missing)" if missing else ""
    if target.strategy == Strategy.WEIGHTED and len(usable) > 1:
        first = random.choices(range(len(usable)), weights=[w for _, w, _ in usable])[0]
        order = [usable[first], *(u for i, u in enumerate(usable) if i != first)]
        why = f"weighted choice of {usable[first][0]}"
    elif target.strategy == Strategy.LEAST_IN_FLIGHT and len(usable) > 1:
        order = sorted(usable, key=lambda u: InFlight.by_model.get(u[0], 0))
        why = f"{order[0][0]} has the fewest calls in flight ({InFlight.by_model.get(order[0][0], 0)})"
    elif target.strategy == Strategy.LOWEST_P95 and len(usable) > 1:
        p95 = await _p95_of([name for name, _, _ in usable])
        # Unmeasured models go first, one at a time, so that each gets measured.
        order = sorted(usable, key=lambda u: p95.get(u[0], -1.0))
        best = order[0][0]
        why = f"{best} has the lowest p95 ({p95[best]:.0f} ms)" if best in p95 else f"{best} is not measured yet"
    else:
        order = usable
        why = usable[0][0]
    candidates = await with_fallbacks([e for _, _, e in order])
    return RoutePlan(candidates, candidates[0].name, f"{where}: {why}{note}", **common)


def _option_endpoints(
    option: str, cascades: dict[str, CascadeConfig], enabled: dict[str, EndpointConfig]
) -> list[EndpointConfig] | None:
    if option.startswith("cascade:"):
        cascade = cascades.get(option.removeprefix("cascade:"))
        if cascade is None:
            return None
        usable = [enabled[step.model] for step in cascade.steps if step.model in enabled]
        return usable or None
    return [enabled[option]] if option in enabled else None


def options_figures(
    route: RouteConfig,
    snapshot: RoutingSnapshot,
    *,
    enabled: dict[str, EndpointConfig],
    measured: dict[str, Measured],
    input_tokens: int,
) -> list[tuple[Figures, list[EndpointConfig]]]:
    """Every option of the route with its figures (measured, evaluated or prior)."""
    evaluated = snapshot.evaluated.get(route.name, {})
    judged: list[tuple[Figures, list[EndpointConfig]]] = []
    for option in route.options:
        endpoints = _option_endpoints(option, snapshot.cascades, enabled)
        if endpoints is None:
            continue
        cascade = snapshot.cascades.get(option.removeprefix("cascade:")) if option.startswith("cascade:") else None
        figures = figures_for(
            option,
            endpoints=endpoints,
            cascade=cascade,
            measured=measured,
            evaluated=evaluated,
            input_tokens=input_tokens,
        )
        judged.append((figures, endpoints))
    return judged


async def options_judged(route: RouteConfig, *, input_tokens: int) -> list[tuple[Figures, list[EndpointConfig]]]:
    """The route's options judged by this process's snapshots (no query on the hot path)."""
    enabled = {e.name: e for e in await catalog.endpoint_list_enabled()}
    measured = await MEASURED.get(route.options)
    return options_figures(
        route, await routing_snapshot(), enabled=enabled, measured=measured, input_tokens=input_tokens
    )


def _explain(figures: Figures) -> str:
    parts = []
    if figures.p95_ms is not None:
        parts.append(f"p95 {figures.p95_ms:.0f} ms ({figures.sources['latency']})")
    if figures.cost_per_1k is not None:
        parts.append(f"${figures.cost_per_1k:.4f}/1k ({figures.sources['cost']})")
    if figures.quality is not None:
        parts.append(f"quality {figures.quality:.3f} ({figures.sources['quality']})")
    return ", ".join(parts)


async def _limits_plan(route: RouteConfig, limits: Limits, features: Features) -> RoutePlan:
    judged = await options_judged(route, input_tokens=features.input_tokens)
    considered = []
    meeting: list[tuple[Figures, list[EndpointConfig]]] = []
    for figures, endpoints in judged:
        misses = limits.misses(figures)
        considered.append({**figures.dump(), "meets": not misses, "misses": misses})
        if not misses:
            meeting.append((figures, endpoints))
    if not meeting:
        if not judged:
            raise GatewayError(
                f"route {route.name} has no enabled option.", status=409, param="model", code="route_target_unavailable"
            )
        closest = min(judged, key=lambda item: limits.shortfall(item[0]))[0]
        misses = "; ".join(f"{name}: {why}" for name, why in limits.misses(closest).items())
        raise GatewayError(
            f"No option of route {route.name} meets the limits. The closest is {closest.option}: {misses}.",
            status=422,
            param="limits",
            code="limits_unmet",
        )
    meeting.sort(key=lambda item: (item[0].cost_per_1k or 0.0, item[0].p95_ms or 0.0))
    chosen, endpoints = meeting[0]
    left_out = [item["option"] for item in considered if not item["meets"]]
    why = f"route {route.name}, limits: {chosen.option} is the cheapest that meets them ({_explain(chosen)})"
    if left_out:
        why += f"; removed {', '.join(left_out)}"
    common: dict[str, Any] = {"route": route.name, "rule": "limits", "fingerprint": route.fingerprint}
    if chosen.option.startswith("cascade:"):
        snapshot = await routing_snapshot()
        cascade = snapshot.cascades[chosen.option.removeprefix("cascade:")]
        steps, _ = await _cascade_plan(cascade, f"route {route.name}")
        return RoutePlan([], chosen.option, why, cascade=cascade, cascade_steps=steps, considered=considered, **common)
    # The next cheapest models that meet the limits follow as alternatives.
    others = [e for f, es in meeting[1:] if not f.option.startswith("cascade:") for e in es]
    candidates = await with_fallbacks([*endpoints, *others])
    return RoutePlan(candidates, chosen.option, why, considered=considered, **common)


async def route_named(model: str, task_type: str) -> RouteConfig | None:
    """The route a request's model names (`route:<name>`, or `auto` with a task type), None
    for a plain model. An unknown route is a 404 naming it."""
    if model.startswith(ROUTE_PREFIX):
        name = model.removeprefix(ROUTE_PREFIX)
        route = (await routing_snapshot()).routes.get(name)
        if route is None:
            raise NotFound(
                f"The route {name!r} does not exist or is not enabled.", param="model", code="route_not_found"
            )
        return route
    if model == AUTO_MODEL:
        if not task_type:
            raise InvalidRequest(
                "model=auto needs a task_type (e.g. extra_body={'task_type': 'classification'}).", param="task_type"
            )
        route = (await routing_snapshot()).by_task_type.get(task_type.lower())
        if route is None:
            raise NotFound(
                f"No route is mapped to the task type {task_type!r}.", param="task_type", code="route_not_found"
            )
        return route
    return None


async def route_choose(model: str, features: Features, limits: Limits | None) -> RoutePlan:
    """The candidates for a request, in order, and why."""
    plan = await _chosen(model, features, limits)
    plan.features = features
    return plan


async def _chosen(model: str, features: Features, limits: Limits | None) -> RoutePlan:
    route = await route_named(model, features.task_type)
    if route is None:
        endpoint = await _enabled(model)
        if endpoint is None:
            raise NotFound(
                f"The model {model!r} does not exist or is not enabled.", param="model", code="model_not_found"
            )
        plan = RoutePlan(await with_fallbacks([endpoint]), endpoint.name, "the model named")
        if limits is not None:
            await _check_model_limits(plan, limits, features)
        return plan
    if limits is not None:
        return await _limits_plan(route, limits, features)
    rule = rule_matching(route, features)
    return await _target_plan(route, rule, rule.target if rule else route.default)


async def _check_model_limits(plan: RoutePlan, limits: Limits, features: Features) -> None:
    """A model named directly with limits: answered only if it meets them."""
    endpoint = plan.candidates[0]
    measured = await MEASURED.get([endpoint.name])
    figures = figures_for(
        endpoint.name,
        endpoints=[endpoint],
        cascade=None,
        measured=measured,
        evaluated={},
        input_tokens=features.input_tokens,
    )
    misses = limits.misses(figures)
    plan.considered = [{**figures.dump(), "meets": not misses, "misses": misses}]
    if misses:
        text = "; ".join(f"{name}: {why}" for name, why in misses.items())
        raise GatewayError(
            f"The model {endpoint.name} does not meet the limits: {text}.",
            status=422,
            param="limits",
            code="limits_unmet",
        )
    plan.reason = f"the model named, within the limits ({_explain(figures)})"
