"""`manage.py evaluate`: a labelled dataset through each option of a route (each model it can
use, and the route itself), through the one pipeline, measured: accuracy, cost, cost per
1,000 requests and latency, the cost saved against always asking the strongest model and
the share of its accuracy kept. It can fit the threshold of a two-step cascade's first step
offline from the measured per-row results, then measures the cascade again at that
threshold, and stores one Evaluation (which feeds the Pareto page and limits-based routing).

A simulated model can stand in for a strong model: told the correct label, it answers it
with a stated accuracy. Every line of the table that such a stand-in answered says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction

from llmops.auth import api_key_create
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.models import ApiKey, ModelEndpoint, PromptTemplate
from llmops.pipeline import InferenceRequest, InferenceResult, infer
from llmops.prompts import parse_reference
from llmops.providers.base import UpstreamError
from llmops.providers.simulated import validate_overrides
from monitoring.selectors import percentile
from routing.checks import label_normalised
from routing.evaluation.dataset import EvaluationError, Row
from routing.evaluation.fit import Computed, FitRow, cascade_computed, threshold_fit
from routing.models import ROUTE_PREFIX, CascadeStep, Evaluation, Route, Strategy, missing_or_disabled, names_parsed

KEY_NAME = "evaluate"
PARAMS_FIXED = {"temperature": 0}
# A request's own fault (a prompt's missing variable, an unknown model): every row would fail alike.
REFUSED = (400, 401, 403, 404, 409, 422)


@dataclass(slots=True)
class Plan:
    """What an evaluation runs: each model on its own, then the route."""

    route: Route
    models: list[str]
    stand_ins: dict[str, float]
    prompt: str | None
    cascade_models: list[str] = field(default_factory=list)
    # A cascade step's answer cap applies to its model's own run too, so it answers alike.
    caps: dict[str, int] = field(default_factory=dict)
    route_stand_in: float | None = None  # the accuracy the route's simulated steps are told
    threshold: float | None = None  # the cascade's first step's, as it runs
    notes: list[str] = field(default_factory=list)


def _route_models(route: Route) -> tuple[list[str], list[CascadeStep]]:
    names: list[str] = []
    steps: list[CascadeStep] = []
    targets = [route, *route.rules.filter(enabled=True)]
    for target in targets:
        if target.strategy == Strategy.CASCADE and target.cascade_id is not None:
            steps.extend(target.cascade.steps.order_by("position", "id"))
            names.extend(step.model for step in target.cascade.steps.order_by("position", "id"))
        else:
            names.extend(name.partition(":")[0].strip() for name in names_parsed(target.model_names))
    return list(dict.fromkeys(names)), steps


def _prompt_checked(reference: str) -> str:
    try:
        name, version = parse_reference(reference)
    except GatewayError as exc:
        raise EvaluationError(f"--prompt: {exc.message}") from None
    rows = PromptTemplate.objects.filter(name=name, **({"version": version} if version else {"is_active": True}))
    prompt = rows.order_by("-version").first()
    if prompt is None:
        raise EvaluationError(f"--prompt: there is no prompt template {reference!r}.")
    if "text" not in prompt.variables:
        raise EvaluationError(f"--prompt: the template {prompt} has no {{{{text}}}} variable for the row's text.")
    return reference


def evaluation_plan(
    *, route_name: str, models: list[str], stand_ins: dict[str, float], prompt: str | None, fit: bool
) -> Plan:
    route = Route.objects.select_related("cascade").filter(name=route_name).first()
    if route is None:
        raise EvaluationError(f"There is no route named {route_name!r}.")
    if not route.enabled:
        raise EvaluationError(f"The route {route_name!r} is disabled.")
    usable, steps = _route_models(route)
    notes: list[str] = []
    if models:
        problem = missing_or_disabled(models)
        if problem:
            raise EvaluationError(f"--model: {problem}")
        chosen = list(dict.fromkeys(models))
    else:
        enabled = set(ModelEndpoint.objects.filter(name__in=usable, enabled=True).values_list("name", flat=True))
        chosen = [name for name in usable if name in enabled]
        if len(chosen) < len(usable):
            notes.append(f"Not run (disabled or missing): {', '.join(n for n in usable if n not in enabled)}.")
    if not chosen:
        raise EvaluationError(f"The route {route_name!r} has no enabled model to run: name one with --model.")
    cascade_models = list(dict.fromkeys(step.model for step in steps))
    if fit:
        if len({step.cascade_id for step in steps}) != 1 or len(steps) != 2:
            raise EvaluationError(
                f"--fit fits the cascade of a route that uses one, of two steps; {route_name!r} does not."
            )
        # The fit needs both steps' own answers.
        chosen += [name for name in cascade_models if name not in chosen]
    if prompt is None:
        exists = PromptTemplate.objects.filter(name=route_name, is_active=True).exists()
        prompt = route_name if exists else None
    else:
        prompt = _prompt_checked(prompt)
    simulated = set(ModelEndpoint.objects.filter(name__in=usable, provider="simulated").values_list("name", flat=True))
    told = {stand_ins[name] for name in usable if name in stand_ins}
    if len(told) > 1:
        raise EvaluationError(
            "A request's simulate settings apply to every simulated step of the route: its stand-ins "
            "must share one accuracy."
        )
    unused = sorted(set(stand_ins) - set(usable) - set(chosen))
    if unused:
        raise EvaluationError(f"--stand-in {', '.join(unused)}: neither run nor used by the route.")
    route_stand_in = told.pop() if told else None
    also = sorted(name for name in simulated if name not in stand_ins)
    if route_stand_in is not None and also:
        notes.append(f"In the route's run, {', '.join(also)} (simulated) was told the label too.")
    caps = {step.model: step.max_tokens for step in steps if step.max_tokens}
    threshold = steps[0].threshold if steps else None
    return Plan(route, chosen, stand_ins, prompt, cascade_models, caps, route_stand_in, threshold, notes)


def _evaluation_key() -> ApiKeyInfo:
    key = ApiKey.objects.filter(name=KEY_NAME, owner=None, is_active=True).first()
    if key is None:
        key, _ = api_key_create(name=KEY_NAME)
    return ApiKeyInfo.from_model(key)


class Progress:
    """A progress bar redrawn in place on a terminal, else a line every 10%."""

    WIDTH = 30

    def __init__(self, write: Callable[[str], None], *, tty: bool, total: int, label: str) -> None:
        self.write, self.tty, self.total, self.label = write, tty, total, label
        self.done = 0
        self._tenths = 0
        self.started = time.monotonic()

    def step(self) -> None:
        self.done += 1
        share = self.done / self.total
        if self.tty:
            filled = int(share * self.WIDTH)
            end = f" {time.monotonic() - self.started:.1f} s\n" if self.done == self.total else ""
            self.write(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}{end}")
        elif int(share * 10) > self._tenths:
            self._tenths = int(share * 10)
            self.write(f"{self.label}: {self.done}/{self.total} ({self._tenths * 10}%)\n")


@dataclass(slots=True)
class Answer:
    text: str = ""
    correct: bool = False
    cost: Decimal = Decimal(0)
    latency_ms: float | None = None
    option: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


async def _ask_all(
    *,
    rows: list[Row],
    model: str,
    key: ApiKeyInfo,
    prompt: str | None,
    simulate_accuracy: float | None,
    choices: list[str],
    concurrency: int,
    max_tokens: int,
    progress: Progress,
) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)

    async def ask(row: Row) -> Answer:
        simulate = None
        if simulate_accuracy is not None:
            simulate = validate_overrides(
                {"answer": row.label, "answer_accuracy": simulate_accuracy, "answer_choices": choices}
            )
        async with gate:
            request = InferenceRequest(
                api_key=key,
                model=model,
                messages=[] if prompt else [{"role": "user", "content": row.text}],
                prompt=prompt,
                variables={"text": row.text},
                params={**PARAMS_FIXED, "max_tokens": max_tokens},
                simulate=simulate,
                cache_mode="bypass",
            )
            try:
                result: InferenceResult = await infer(request)
            except GatewayError as exc:
                if exc.status in REFUSED:
                    raise EvaluationError(f"{model} refused line {row.line}: {exc.message}") from None
                answer = Answer(error=exc.message)
            except UpstreamError as exc:
                answer = Answer(error=exc.message)
            else:
                answer = Answer(
                    text=result.text,
                    correct=label_normalised(result.text) == label_normalised(row.label),
                    cost=result.cost_usd,
                    latency_ms=result.latency_ms,
                    option=result.option,
                    steps=result.cascade,
                )
        progress.step()
        return answer

    return list(await asyncio.gather(*(ask(row) for row in rows)))


def _stand_in_note(accuracy: float | None) -> str:
    return "" if accuracy is None else f"stand-in, told the label, accuracy {accuracy:g}"


def _summary(answers: list[Answer], **fields: Any) -> dict[str, Any]:
    n = len(answers)
    cost = sum((a.cost for a in answers), Decimal(0))
    latencies = sorted(a.latency_ms for a in answers if a.latency_ms is not None)
    found = {
        **fields,
        "accuracy": sum(a.correct for a in answers) / n,
        "cost_usd": float(cost),
        "cost_per_1k": float(cost) * 1000 / n,
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
        "n": n,
        "errors": sum(1 for a in answers if a.error),
    }
    if fields.get("kind") == "cascade":
        found["escalation_rate"] = sum(1 for a in answers if len(a.steps) > 1) / n
    return found


@dataclass(slots=True)
class Report:
    lines: list[str]
    results: list[dict[str, Any]]
    evaluation: Evaluation | None = None
    fitted_threshold: float | None = None


@dataclass(slots=True)
class _Runner:
    plan: Plan
    rows: list[Row]
    key: ApiKeyInfo
    concurrency: int
    max_tokens: int
    write: Callable[[str], None]
    tty: bool

    async def answers(self, model: str, accuracy: float | None) -> list[Answer]:
        return await _ask_all(
            rows=self.rows,
            model=model,
            key=self.key,
            prompt=self.plan.prompt,
            simulate_accuracy=accuracy,
            choices=sorted({row.label for row in self.rows}),
            concurrency=self.concurrency,
            max_tokens=min(self.max_tokens, self.plan.caps.get(model, self.max_tokens)),
            progress=Progress(self.write, tty=self.tty, total=len(self.rows), label=model),
        )

    @property
    def route_note(self) -> str:
        """What a line answered by the route says about its stand-ins."""
        if self.plan.route_stand_in is None:
            return ""
        told = [name for name in self.plan.cascade_models if name in self.plan.stand_ins] or ["its simulated steps"]
        return f" ({', '.join(told)}: {_stand_in_note(self.plan.route_stand_in)})"

    def route_row(self, answers: list[Answer], **fields: Any) -> dict[str, Any]:
        seen = {a.option for a in answers if a.option}
        suffix = ""
        option = seen.pop() if len(seen) == 1 else ROUTE_PREFIX + self.plan.route.name
        kind = "cascade" if option.startswith("cascade:") else "route"
        if kind == "cascade" and self.plan.threshold is not None:
            fields["threshold"] = self.plan.threshold
            suffix += f" at {self.plan.threshold:g}"
        return _summary(
            answers,
            option=option,
            kind=kind,
            label=option + suffix + self.route_note,
            stand_in=self.plan.route_stand_in is not None,
            **fields,
        )


def _step_zero(route: Route) -> CascadeStep:
    cascades = [route.cascade] if route.strategy == Strategy.CASCADE and route.cascade_id else []
    cascades += [rule.cascade for rule in route.rules.filter(enabled=True, strategy=Strategy.CASCADE)]
    return cascades[0].steps.order_by("position", "id").first()


def _threshold_store(route: Route, threshold: float, fitted: float | None) -> tuple[float, float | None]:
    """Set the first step's threshold and the route's record of the fit; returns the old ones."""
    with transaction.atomic():
        step = _step_zero(route)
        old = step.threshold, route.fitted_threshold
        step.threshold = threshold
        step.save(update_fields=["threshold"])
        route.fitted_threshold = fitted
        route.save(update_fields=["fitted_threshold"])
    return old


def _fit_rows(plan: Plan, answers: dict[str, list[Answer]], route_answers: list[Answer]) -> list[FitRow]:
    cheap, strong = plan.cascade_models
    found = []
    for index, routed in enumerate(route_answers):
        first = routed.steps[0] if routed.steps and routed.steps[0].get("model") == cheap else {}
        score = first.get("score")
        found.append(
            FitRow(
                score=float(score) if isinstance(score, (int, float)) else None,
                checks=dict(first.get("checks") or {}),
                cheap_correct=answers[cheap][index].correct,
                cheap_cost=answers[cheap][index].cost,
                strong_correct=answers[strong][index].correct,
                strong_cost=answers[strong][index].cost,
            )
        )
    return found


def _computed_row(runner: _Runner, option: str, check: str, found: Computed, n: int) -> dict[str, Any]:
    title = f"{option} [computed offline: {check}]"
    return {
        "option": title,
        "kind": "computed",
        "label": title + runner.route_note,
        "check": check,
        "threshold": found.threshold,
        "accuracy": found.accuracy,
        "cost_usd": float(found.cost),
        "cost_per_1k": float(found.cost) * 1000 / n,
        "p50_ms": None,
        "p95_ms": None,
        "n": n,
        "stand_in": runner.plan.route_stand_in is not None,
        "escalation_rate": found.escalation_rate,
    }


async def _fitted(
    runner: _Runner, *, fit_rows: list[FitRow], routed: dict[str, Any], target: float
) -> tuple[list[dict[str, Any]], list[str], tuple[float, float | None]]:
    """Fit the first step's threshold, store it, measure the cascade at it, and compute
    offline what each check alone would have done."""
    plan = runner.plan
    chosen, met = threshold_fit(rows=fit_rows, target_accuracy=target)
    threshold = chosen.threshold
    assert threshold is not None
    old = await sync_to_async(_threshold_store)(plan.route, threshold, threshold)
    lines = [
        f"Fitted the threshold of {routed['option']} step 0 ({plan.cascade_models[0]}): {threshold:g} (was "
        f"{old[0]:g}); computed offline: accuracy {chosen.accuracy:.3f}, escalated {chosen.escalation_rate:.1%}; "
        f"target accuracy {target:.3f}."
    ]
    if not met:
        lines.append("No threshold reaches the target on this data: the fitted one is the most accurate.")
    before = {**routed, "kind": "before_fit", "threshold": old[0]}
    before["option"] = f"{routed['option']} before fitting, at {old[0]:g}"
    before["label"] = before["option"] + runner.route_note
    plan.threshold = threshold
    again = runner.route_row(await runner.answers(ROUTE_PREFIX + plan.route.name, plan.route_stand_in))
    if abs(again["accuracy"] - chosen.accuracy) > 1e-9:
        lines.append(
            f"Measured at the fitted threshold: accuracy {again['accuracy']:.3f}, computed {chosen.accuracy:.3f} "
            "(the cheap model did not answer exactly as in its own run)."
        )
    step = await sync_to_async(_step_zero)(plan.route)
    n, computed = len(fit_rows), []
    both = bool(step.labels.strip()) and bool(step.confidence)
    if step.labels.strip():
        only = cascade_computed(fit_rows, lambda row: row.score is None or row.checks.get("labels", 1.0) < 1)
        computed.append(_computed_row(runner, again["option"], "label set only", only, n))
    if both:
        alone = cascade_computed(fit_rows, lambda row: row.score is None or row.checks.get("confidence", 0) < threshold)
        alone = Computed(threshold, alone.accuracy, alone.cost, alone.escalation_rate)
        computed.append(_computed_row(runner, again["option"], f"confidence only >= {threshold:g}", alone, n))
    checks = "label set + confidence" if both else "its checks"
    computed.append(_computed_row(runner, again["option"], f"{checks} >= {threshold:g}", chosen, n))
    return [before, again, *computed], lines, old


def _shares(row: dict[str, Any], strongest: dict[str, Any]) -> None:
    if strongest["cost_usd"] > 0:
        row["cost_saved_share"] = 1 - row["cost_usd"] / strongest["cost_usd"]
    if strongest["accuracy"] > 0:
        row["accuracy_kept_share"] = row["accuracy"] / strongest["accuracy"]


def _fmt(value: Any, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


def table_lines(results: list[dict[str, Any]]) -> list[str]:
    width = max(len("option"), *(len(row["label"]) for row in results))
    head = (
        f"{'option':<{width}}  {'accuracy':>8}  {'cost USD':>10}  {'per 1,000':>10}  {'p50 ms':>7}  {'p95 ms':>7}"
        f"  {'escalated':>9}  {'saved':>6}  {'kept':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in results:
        lines.append(
            f"{row['label']:<{width}}  {row['accuracy']:>8.3f}  {row['cost_usd']:>10.6f}  {row['cost_per_1k']:>10.4f}"
            f"  {_fmt(row['p50_ms'], '.0f'):>7}  {_fmt(row['p95_ms'], '.0f'):>7}"
            f"  {_fmt(row.get('escalation_rate'), '.1%'):>9}  {_fmt(row.get('cost_saved_share'), '.1%'):>6}"
            f"  {_fmt(row.get('accuracy_kept_share'), '.1%'):>6}"
        )
    return lines


def _summary_lines(plan: Plan, results: list[dict[str, Any]], *, concurrency: int, fit_lines: list[str]) -> list[str]:
    models = [row for row in results if row["kind"] == "model"]
    strongest = max(models, key=lambda r: (r["accuracy"], r["cost_usd"]))
    routed = next(row for row in results if row["kind"] in ("cascade", "route"))
    first = plan.cascade_models[0] if plan.cascade_models else None
    cheap = next((r for r in models if r["option"] == first), None) or min(models, key=lambda r: r["cost_usd"])
    saved, kept = routed.get("cost_saved_share"), routed.get("accuracy_kept_share")
    in_flight = f"{concurrency} request{'s' if concurrency > 1 else ''} in flight"
    lines = [
        f"{routed['n']} rows, {in_flight} (each latency is the request's own, waits included); "
        f"prompt {plan.prompt or '(none: the text as the user message)'}.",
        f"Strongest model: {strongest['label']}, measured accuracy {strongest['accuracy']:.3f}.",
        f"{routed['option']} against always {strongest['option']}: cost saved {_fmt(saved, '.1%', 'unknown')}, "
        f"accuracy kept {_fmt(kept, '.1%', 'unknown')}.",
        f"{routed['option']} against always {cheap['option']}: accuracy {cheap['accuracy']:.3f} -> "
        f"{routed['accuracy']:.3f} ({routed['accuracy'] - cheap['accuracy']:+.3f}), cost per 1,000 "
        f"${cheap['cost_per_1k']:.4f} -> ${routed['cost_per_1k']:.4f}.",
        *fit_lines,
    ]
    if saved is not None and kept is not None:
        lines.append(
            "Goal (at least 95% of the strongest's accuracy at less than half its cost): "
            f"{'reached' if kept >= 0.95 and saved > 0.5 else 'not reached'} (kept {kept:.1%}, "
            f"cost {1 - saved:.1%} of the strongest's)."
        )
    computed = [row for row in results if row["kind"] == "computed"]
    if computed:
        each = "; ".join(
            f"{row['check']}: kept {_fmt(row.get('accuracy_kept_share'), '.1%', '?')}, "
            f"saved {_fmt(row.get('cost_saved_share'), '.1%', '?')}"
            for row in computed
        )
        lines.append(f"Each check, computed offline: {each}.")
        lines.append("[computed offline]: from the per-row answers of the runs above, not run as such.")
    return lines


def evaluation_run(
    *,
    plan: Plan,
    rows: list[Row],
    dataset: str,
    write: Callable[[str], None],
    tty: bool = False,
    concurrency: int = 8,
    max_tokens: int = 16,
    fit: bool = False,
    target_share: float = 0.95,
    store: bool = True,
) -> Report:
    """Run every option over the rows, fit when asked, print and (unless told not to) store.
    Without storing, a fitted threshold is measured, then the old one is put back."""
    runner = _Runner(plan, rows, _evaluation_key(), concurrency, max_tokens, write, tty)

    async def measured() -> tuple[list[dict[str, Any]], list[str], tuple[float, float | None] | None]:
        answers: dict[str, list[Answer]] = {}
        results: list[dict[str, Any]] = []
        for model in plan.models:
            accuracy = plan.stand_ins.get(model)
            answers[model] = await runner.answers(model, accuracy)
            label = f"{model} ({_stand_in_note(accuracy)})" if accuracy is not None else model
            extra = {"stand_in_accuracy": accuracy} if accuracy is not None else {}
            results.append(
                _summary(answers[model], option=model, kind="model", label=label, stand_in=bool(extra), **extra)
            )
        route_answers = await runner.answers(ROUTE_PREFIX + plan.route.name, plan.route_stand_in)
        routed = runner.route_row(route_answers)
        if not fit:
            return [*results, routed], [], None
        strongest = max(results, key=lambda r: (r["accuracy"], r["cost_usd"]))
        fitted, lines, old = await _fitted(
            runner,
            fit_rows=_fit_rows(plan, answers, route_answers),
            routed=routed,
            target=target_share * strongest["accuracy"],
        )
        return [*results, *fitted], lines, old

    results, fit_lines, old = asyncio.run(measured())
    strongest = max((r for r in results if r["kind"] == "model"), key=lambda r: (r["accuracy"], r["cost_usd"]))
    for row in results:
        if row["kind"] != "model":
            _shares(row, strongest)
    summary = _summary_lines(plan, results, concurrency=concurrency, fit_lines=fit_lines) + plan.notes
    errors = sum(row["errors"] for row in results if row["kind"] != "computed")
    if errors:
        summary.append(f"{errors} requests failed; each counts as a wrong answer.")
    # A cascade row carries the threshold it ran at; only a fit chose it.
    ran_at = next((row["threshold"] for row in results if row["kind"] == "cascade" and "threshold" in row), None)
    fitted = ran_at if fit else None
    report = Report([*table_lines(results), "", *summary], results, fitted_threshold=fitted)
    if not store:
        if old is not None:
            _threshold_store(plan.route, *old)
            report.lines.append(f"Not stored: the threshold is back at {old[0]:g}.")
        return report
    routed = next(row for row in results if row["kind"] in ("cascade", "route"))
    report.evaluation = Evaluation.objects.create(
        route=plan.route,
        route_name=plan.route.name,
        dataset=dataset[:300],
        rows=len(rows),
        results=results,
        strongest=strongest["option"],
        cost_saved_share=routed.get("cost_saved_share"),
        accuracy_kept_share=routed.get("accuracy_kept_share"),
        fitted_threshold=fitted,
        notes="\n".join(summary),
    )
    report.lines.append(f"Stored evaluation {report.evaluation.pk}.")
    return report
