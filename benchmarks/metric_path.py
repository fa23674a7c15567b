"""The metric path's own CPU per request, measured in process where a whole server's noise
(its other threads, collector pauses, a phase's fixed costs spread over its requests)
cannot hide a tenth of a millisecond.

    .venv/bin/python -m benchmarks.metric_path [--requests 20000] [--rounds 5]

On a fresh SQLite database (the embedded default: migrated, seeded, 25 API keys), the two
parts of what every request costs in `monitoring` beyond writing its metric row are timed
against that row alone, in alternating rounds, as this process's CPU (`time.process_time`):

1. Prometheus: `prometheus_request_observed(outcome)` for every request, on against
   LLMOPS_PROMETHEUS_ENABLED=false (which returns at once).
2. Rollups: the metric writer's `_write(batch)` of the requests' rows (`outcome_row`, what
   the pipeline queues) in batches of LLMOPS_METRICS_BATCH_SIZE, with LLMOPS_METRICS_ROLLUPS
   on against off: with rollups, the same transaction also adds the rows to the minute,
   hour and day sums and histograms of every cube (`monitoring.rollups.rollups_add`).

Each for two workloads: one key and one model answering (what `gateway_overhead` sends),
and a varied one (25 keys, each with two of 8 models of 4 providers and maybe one of 2
routes and of 2 prompts; streams, cache results and 3% errors at random), both timed at
--rate requests a second, so that a batch holds a second of traffic as a busy gateway's
does. It prints the CPU per request of each part on and off, the difference (what the
metric path adds: target under 0.1 ms in all) and the ratio, from the same run.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks.harness.command import options
from benchmarks.harness.figures import table
from benchmarks.harness.gateway import in_process

MODELS = (
    ("sim-small", "simulated"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("claude-haiku-3.5", "anthropic"),
    ("claude-sonnet-4", "anthropic"),
    ("llama-3.1-8b", "openai"),
    ("llama-3.1-70b", "openai"),
    ("smollm2-135m", "local"),
)
ROUTES = ("", "", "support", "code")
PROMPTS = ("", "", "support-reply@3", "summarize@2")
CACHE = ("miss", "miss", "miss", "hit", "semantic_hit", "bypass")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("metric_path", __doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round and mode (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of on and off (5)")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s the outcomes' times show (500)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    if min(args.requests, args.rounds) < 1 or args.rate <= 0:
        parser.error("--requests, --rounds and --rate must be positive")
    return args


def outcomes(count: int, *, varied: bool, keys: list[int], start: datetime, rate: float, seed: int) -> list[Any]:
    """`count` finished requests as the pipeline hands them to monitoring."""
    from llmops.usage import Usage
    from monitoring.outcomes import AttemptRecord, RequestOutcome

    rng = random.Random(seed)
    # Each key's own habits, the same in every call: two models, maybe a route and a prompt.
    habits = random.Random(len(keys))
    profiles = {key: (habits.sample(MODELS, 2), habits.choice(ROUTES), habits.choice(PROMPTS)) for key in keys}
    made = []
    for i in range(count):
        key = rng.choice(keys) if varied else keys[0]
        models, route, prompt = profiles[key]
        model, provider = rng.choice(models) if varied else MODELS[0]
        stream = rng.random() < 0.5 if varied else i % 2 == 0
        failed = varied and rng.random() < 0.03
        latency = rng.lognormvariate(6.5, 0.5) if varied else 1.0
        made.append(
            RequestOutcome(
                request_id=f"mp-{int(varied)}-{seed}-{i}",
                created_at=start + timedelta(seconds=i / rate),
                api_key_id=key,
                endpoint="chat.completions",
                model=model,
                status="error" if failed else "ok",
                http_status=502 if failed else 200,
                latency_ms=latency,
                answered_by="" if failed else model,
                route=route if varied else "",
                option=model,
                provider=provider,
                prompt=prompt if varied else "",
                stream=stream,
                ttft_ms=latency / 4 if stream and not failed else None,
                usage=Usage(input_tokens=rng.randint(20, 2000), output_tokens=16, cached_tokens=0),
                cost_usd=Decimal("0.0000123"),
                cache_status="" if failed else (rng.choice(CACHE) if varied else "miss"),
                error_type="upstream_error" if failed else "",
                attempts=[AttemptRecord(model=model, outcome="error" if failed else "ok", latency_ms=latency)],
            )
        )
    return made


def cpu_of(call: Any) -> float:
    gc.collect()
    at = time.process_time()
    call()
    return time.process_time() - at


def measure(args: argparse.Namespace, keys: list[int], *, varied: bool) -> list[list[str]]:
    from django.conf import settings
    from django.test.utils import override_settings

    from monitoring import recorder
    from monitoring.outcomes import outcome_row
    from monitoring.prometheus import prometheus_request_observed

    size = settings.LLMOPS_METRICS_BATCH_SIZE
    spent = {(part, on): 0.0 for part in ("prometheus", "write") for on in (True, False)}
    start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(days=1 if varied else 0)
    made = 0

    def observe(batch: list[Any], on: bool) -> None:
        with override_settings(LLMOPS_PROMETHEUS_ENABLED=on):
            spent[("prometheus", on)] += cpu_of(lambda: [prometheus_request_observed(o) for o in batch])

    def write(batch: list[Any], on: bool) -> None:
        rows = [outcome_row(o) for o in batch]  # made by the pipeline's thread, not the writer: not timed
        with override_settings(LLMOPS_METRICS_ROLLUPS=on):

            def run() -> None:
                for first in range(0, len(rows), size):
                    recorder._write(rows[first : first + size])

            spent[("write", on)] += cpu_of(run)

    # Warm-up (not timed): series made, statements and caches warm, as in a running gateway.
    for on in (True, False):
        warm = outcomes(
            min(args.requests, 2000), varied=varied, keys=keys, start=start, rate=args.rate, seed=args.seed - 1 - on
        )
        observe(warm, on)
        write(warm, on)
        made += len(warm)
    for n in range(args.rounds):
        for on in (True, False) if n % 2 == 0 else (False, True):
            batch = outcomes(
                args.requests,
                varied=varied,
                keys=keys,
                start=start + timedelta(seconds=made / args.rate),
                rate=args.rate,
                seed=args.seed + 1 + 2 * n + on,
            )
            made += len(batch)
            observe(batch, on)
            write(batch, on)
    total = args.requests * args.rounds
    rows = []
    added_all = 0.0
    labels = {"prometheus": "Prometheus observation", "write": "metric write: rollups on / off (rows only)"}
    for part in ("prometheus", "write"):
        on, off = (spent[(part, flag)] * 1e6 / total for flag in (True, False))
        added_all += on - off
        ratio = f"{on / off:.2f}x" if off else "-"
        rows.append([labels[part], f"{on:,.1f}", f"{off:,.1f}", f"{on - off:+,.1f}", ratio])
    verdict = "met" if added_all < 100 else "NOT met"
    rows.append(["metric path added in all", "", "", f"{added_all:+,.1f}", f"< 100 µs {verdict}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with in_process("llmops-metric-path-"):
        from llmops.auth import api_key_create

        keys = [api_key_create(name=f"metric-path-{n}")[0].id for n in range(25)]
        print(
            f"metric path benchmark: {args.requests:,} requests x {args.rounds} rounds per mode, alternating; "
            f"times at {args.rate:.0f} requests/s; SQLite (the embedded default); CPU of this process"
        )
        for varied, name in ((False, "one key, one model (gateway_overhead's traffic)"), (True, "varied traffic")):
            print(f"\n{name}: CPU per request, µs")
            print(table(["part", "on", "off", "added", "ratio"], measure(args, keys, varied=varied)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
