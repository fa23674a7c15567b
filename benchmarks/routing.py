"""What routing itself costs a request: the route step for a rule route and for a choice
under limits, against the same request naming the model directly.

Run it with `python -m benchmarks.routing` (about 30 s on 2 cores).

In one process, on a temporary SQLite database (migrated and seeded), the pipeline's own
route step (`llmops.pipeline.steps.route`: features, the route's rules or the limits over
the measured figures, the candidates with their fallbacks) is called for three requests:

  direct   model="sim-small": the model and its fallbacks, no route
  rules    model="route:bench-rules": eight rules (keywords, regular expressions, metadata,
           complexity, token bounds); only the last matches
  limits   model="route:bench-limits" with limits on latency, cost and quality: three
           models and a cascade judged by measured figures (40 QueryMetric rows each, read
           once into the in-process snapshot) and an evaluation

Each scenario runs --calls times after a warm-up, in --rounds interleaved rounds. Figures:
median and p99 wall time of one call, CPU per call (time.process_time over the phase), and
what routing adds against `direct` measured in the same run. Then the whole request
(`llmops.pipeline.infer`, sim-small answering at once, answer cache bypassed) for the same
three, to set the route step against everything else a request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time

from benchmarks.harness.command import options
from benchmarks.harness.figures import fmt, percentile, table
from benchmarks.harness.gateway import in_process

SIMULATE = {"latency_ms": 0, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": 16}
SCENARIOS = ("direct", "rules", "limits")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("routing", __doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="route-step calls per scenario (20000)")
    parser.add_argument("--requests", type=int, default=2000, help="whole requests per scenario (2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (10)")
    args = parser.parse_args(argv)
    if min(args.calls, args.requests, args.rounds) < 1:
        parser.error("--calls, --requests and --rounds must be at least 1")
    return args


def routes_create() -> None:
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from monitoring.models import QueryMetric
    from routing.models import Cascade, CascadeStep, Evaluation, Route, RouteRule

    rules = Route.objects.create(name="bench-rules", strategy="single", model_names="sim-small")
    conditions = [
        {"keywords": "refund, chargeback, dispute"},
        {"pattern": r"INV-\d{6}"},
        {"metadata": {"tier": "enterprise"}},
        {"complexities": "high"},
        {"min_input_tokens": 5000},
        {"task_types": "code"},
        {"pattern": r"(?i)\b(urgent|asap)\b"},
        {"keywords": "weather"},
    ]
    for position, condition in enumerate(conditions):
        RouteRule.objects.create(
            route=rules, position=position, strategy="single", model_names="sim-large", **condition
        )
    limits = Route.objects.create(name="bench-limits", strategy="weighted", model_names="sim-small, sim-large")
    RouteRule.objects.create(route=limits, position=0, keywords="zzz", strategy="single", model_names="smollm2-135m")
    cascade = Cascade.objects.create(name="bench")
    CascadeStep.objects.create(cascade=cascade, position=0, model="sim-small", labels="yes, no")
    CascadeStep.objects.create(cascade=cascade, position=1, model="sim-large")
    RouteRule.objects.create(route=limits, position=1, keywords="yyy", strategy="cascade", cascade=cascade)
    now = timezone.now()
    rows = []
    for option, latency, cost in (
        ("sim-small", 150.0, "0.00001"),
        ("sim-large", 900.0, "0.001"),
        ("smollm2-135m", 400.0, "0"),
        ("cascade:bench", 500.0, "0.0003"),
    ):
        rows += [
            QueryMetric(
                request_id=f"{option}-{i}",
                created_at=now - timedelta(seconds=i),
                model=option,
                option=option,
                status="ok",
                latency_ms=latency,
                cost_usd=Decimal(cost),
            )
            for i in range(40)
        ]
    QueryMetric.objects.bulk_create(rows)
    Evaluation.objects.create(
        route_name="bench-limits",
        dataset="bench",
        rows=1,
        results=[
            {"option": "sim-small", "accuracy": 0.7},
            {"option": "sim-large", "accuracy": 0.95},
            {"option": "smollm2-135m", "accuracy": 0.5},
            {"option": "cascade:bench", "accuracy": 0.93},
        ],
    )


def requests_for(key):
    from llmops.pipeline import InferenceRequest
    from routing.services import Limits

    text = "Could you please look into this for me? " * 4
    common = {"api_key": key, "messages": [{"role": "user", "content": text}], "cache_mode": "bypass"}
    return {
        "direct": lambda: InferenceRequest(model="sim-small", simulate=SIMULATE, **common),
        "rules": lambda: InferenceRequest(
            model="route:bench-rules", simulate=SIMULATE, metadata={"tier": "free"}, **common
        ),
        "limits": lambda: InferenceRequest(
            model="route:bench-limits",
            simulate=SIMULATE,
            limits=Limits(max_latency_ms=1000, max_cost_per_1k=0.5, min_quality=0.9),
            **common,
        ),
    }


async def route_step_phase(make, calls: int) -> tuple[list[float], float]:
    from llmops.pipeline import steps

    request = make()
    resolved = await steps.resolve(request)
    timings: list[float] = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter_ns()
        await steps.route(request, resolved)
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return timings, time.process_time() - cpu


async def infer_phase(make, count: int) -> tuple[list[float], float]:
    from llmops.pipeline import infer

    timings: list[float] = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter_ns()
        await infer(make())
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return timings, time.process_time() - cpu


async def measure(args: argparse.Namespace) -> None:
    from llmops import catalog
    from llmops.pipeline import infer

    key = next(iter((await catalog._current()).keys.values()))
    makers = requests_for(key)
    for make in makers.values():
        await infer(make())  # load the snapshots and the measured figures; check each answers
        await route_step_phase(make, 200)
    step: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in SCENARIOS}
    whole: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in SCENARIOS}
    gc.collect()
    for round_index in range(args.rounds):
        order = SCENARIOS[round_index % 3 :] + SCENARIOS[: round_index % 3]
        for name in order:
            timings, cpu = await route_step_phase(makers[name], args.calls // args.rounds)
            step[name] = (step[name][0] + timings, step[name][1] + cpu)
        for name in order:
            timings, cpu = await infer_phase(makers[name], args.requests // args.rounds)
            whole[name] = (whole[name][0] + timings, whole[name][1] + cpu)
    print(f"\nThe route step alone ({args.calls} calls per scenario, {args.rounds} interleaved rounds)")
    print(report(step))
    print(f"\nWhole requests through the pipeline ({args.requests} per scenario, sim-small answering at once)")
    print(report(whole))
    added = {
        name: statistics.median(step[name][0]) - statistics.median(step["direct"][0]) for name in ("rules", "limits")
    }
    print(
        f"\nRouting adds {added['rules']:.4f} ms (rules) and {added['limits']:.4f} ms (limits) per request at the "
        "median against naming the model directly; target under 0.2 ms."
    )


def report(results: dict[str, tuple[list[float], float]]) -> str:
    base_timings, base_cpu = results["direct"]
    base_median = statistics.median(base_timings)
    base_p99 = percentile(base_timings, 99)
    base_cpu_per = base_cpu / len(base_timings) * 1000
    rows = []
    for name in SCENARIOS:
        timings, cpu = results[name]
        median = statistics.median(timings)
        p99 = percentile(timings, 99)
        cpu_per = cpu / len(timings) * 1000
        rows.append(
            [
                name,
                fmt(median, 4),
                f"{median - base_median:+.4f}",
                fmt(p99, 4),
                f"{p99 - base_p99:+.4f}",
                fmt(cpu_per, 4),
                f"{cpu_per - base_cpu_per:+.4f}",
                f"{cpu_per / base_cpu_per:.2f}x",
            ]
        )
    headers = ["scenario", "median ms", "vs direct", "p99 ms", "vs direct", "CPU ms/call", "vs direct", "ratio"]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with in_process("llmops-routing-bench-"):
        routes_create()
        asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
