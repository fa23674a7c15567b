"""What the gateway's retries, fallbacks and circuit breakers cost and save, against a real
OpenAI-compatible HTTP upstream that fails on script.

    .venv/bin/python -m benchmarks.failover [--requests 10000] [--concurrency 64]
        [--fail-rate 0.3] [--timeout-s 0.5] [--slow-s 1.0] [--retries 2] [--cooldown-s 2]
        [--breaker-window-s 10] [--lead-in-s W] [--warmup 100]

It builds a throwaway gateway (temporary SQLite database, migrated, seeded, one API key)
served by daphne, and serves `benchmarks.harness.servers:flaky_app` (a scripted
OpenAI-compatible upstream, one lane per path) with a second daphne. Three catalog models (provider
`openai`, each `base_url` a lane of that upstream, no provider key) are added:

- `healthy`: a lane that always answers at once (the baseline's primary);
- `flaky`: a lane that fails `--fail-rate` of its requests, evenly 429 (Retry-After: 0),
  500 and a `--slow-s` sleep past the gateway's `--timeout-s` upstream timeout; its
  fallback is `steady`;
- `steady`: a lane that always answers at once.

Part 1. `--requests` whole chat completions at `--concurrency` in flight, first to
`healthy` (the baseline), then the same requests to `flaky`. Printed for both: success rate
(100% is required for `flaky`: every failure must be retried or fallen back from), median
and p99 latency (the added latency is flaky - healthy), throughput, upstream calls per
request, answers that came from the fallback (`x-llmops-model`), the distribution of
`x-llmops-attempts`, gateway CPU per request, and the longest garbage-collector pause in
the gateway during the run (its /healthz "gc", on with LLMOPS_GC_STATS=1; target under
20 ms).

Part 2. The same load runs on `flaky` with its lane healthy for `--lead-in-s` (default: the
breaker window, so the window holds a steady load when it dies); then the lane goes dead
(503 to everything). The upstream counts what reaches it: the requests in the burst from
the moment of death until the breaker opens (after it, only one probe per cool-down
arrives), and the probes. After 1.5 cool-downs the lane recovers; the time from recovery
to the first answer served by `flaky` again is the breaker's time to close (at most one
cool-down by design). Every request must still succeed (through `steady`).

The breaker opens when at least LLMOPS_BREAKER_FAILURES calls failed within
LLMOPS_BREAKER_WINDOW_S that are also at least LLMOPS_BREAKER_FAILURE_RATE of its calls: a
model that was busy and healthy must fail about as many calls as it answered in the
window before its breaker opens, so the count in part 2 grows with the window and the load.

The exit code is 0 when every request succeeded and the breaker opened and closed again.
All traffic stays on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.harness.client import (
    HOST,
    LoadResult,
    chat_requests,
    check_answer,
    get_request,
    header,
    post_request,
    request_once,
    run_load,
    warm_up,
)
from benchmarks.harness.command import command, options, parsed
from benchmarks.harness.figures import compared, fmt, machine, ratio, table
from benchmarks.harness.gateway import Daphne, serving, throwaway

FLAKY_APP = "benchmarks.harness.servers:flaky_app"
FALLBACK = "steady"
CATALOG_SCRIPT = """
import sys
from llmops.models import ModelEndpoint
base = sys.argv[1]
for name, fallbacks in (("steady", ""), ("healthy", ""), ("flaky", "steady")):
    ModelEndpoint.objects.update_or_create(
        name=name,
        defaults=dict(
            provider="openai", upstream_model=name, base_url=f"{base}/{name}/v1", api_key_env="",
            max_concurrency=0, fallbacks=fallbacks, context_window=128000, enabled=True,
        ),
    )
print("catalog ready")
"""
PHASE_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "failover",
        "Retries, fallbacks and circuit breakers against a scripted failing upstream, "
        "with a same-run healthy baseline.",
    )
    add = parser.add_argument
    add("--requests", type=int, default=10_000, help="requests per part-1 run (default 10000)")
    add("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    add("--fail-rate", type=float, default=0.3, help="share of flaky's requests that fail (default 0.3)")
    add("--timeout-s", type=float, default=0.5, help="LLMOPS_UPSTREAM_TIMEOUT_S (default 0.5)")
    add("--slow-s", type=float, default=1.0, help="how long a slow failure sleeps (default 1.0)")
    add("--retries", type=int, default=2, help="LLMOPS_RETRIES (default 2, the gateway's default)")
    add("--cooldown-s", type=float, default=2.0, help="LLMOPS_BREAKER_COOLDOWN_S (default 2)")
    add("--breaker-window-s", type=float, default=10.0, help="LLMOPS_BREAKER_WINDOW_S (default 10)")
    add("--lead-in-s", type=float, default=None, help="healthy load before the death (default: the window)")
    add("--warmup", type=int, default=100, help="warm-up requests per model (default 100)")
    add("--seed", type=int, default=1, help="seed of the flaky lane's failures (default 1)")
    add("--flush-interval", type=float, default=1.0, help="LLMOPS_METRICS_FLUSH_INTERVAL_S (default 1.0)")
    args = parsed(parser, argv, at_least_one=("requests", "concurrency"))
    if not 0 <= args.fail_rate <= 1:
        parser.error("--fail-rate must be between 0 and 1")
    if args.slow_s <= args.timeout_s:
        parser.error("--slow-s must be longer than --timeout-s (a slow failure is one past the timeout)")
    if args.lead_in_s is None:
        args.lead_in_s = args.breaker_window_s
    return args


# ---------------------------------------------------------------- talking to the servers


async def call(port: int, method: str, path: str, payload: dict | None = None) -> dict:
    """One request on a fresh connection, without blocking the load sharing the event loop."""
    if method == "POST":
        data = post_request(port, path, None, json.dumps(payload or {}).encode())
    else:
        data = get_request(port, path)
    status, _, body = await request_once(port, data)
    if status not in (200, 503):  # /healthz answers 503 with its body when the database is down
        raise RuntimeError(f"{method} {path} answered {status}: {body[:300]!r}")
    return json.loads(body)


async def set_lane(upstream: Daphne, lane: str, **settings: object) -> dict:
    """Switch a lane; returns its counters from before the switch."""
    return await call(upstream.port, "POST", f"/control/{lane}", settings)


async def health(gateway: Daphne, gc_since: float | None = None) -> dict:
    return await call(gateway.port, "GET", "/healthz" + (f"?gc_since={gc_since:.3f}" if gc_since else ""))


def breaker(state: dict, model: str) -> dict:
    return state.get("breakers", {}).get(model, {})


def body_builder(port: int, key: str, model: str):
    """The request for index i; prompts differ per request and the answer cache is bypassed,
    so every request goes through the attempt loop."""
    body = {"model": model, "messages": [{"role": "user", "content": "failover request @@"}], "max_tokens": 16}
    return chat_requests(port, key, body, headers="x-llmops-cache-mode: bypass\r\n")


@dataclass
class Answers:
    """What the answers said: which model answered and in how many upstream attempts."""

    models: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)
    # For part 2: answers after `since` by model, and when the first from `watch` arrived.
    watch: str = ""
    since: float = 0.0
    first_after: float = 0.0
    after: Counter = field(default_factory=Counter)

    def check(self, status: int, body: bytes, head: bytes) -> str | None:
        problem = check_answer(status, body)
        if problem:
            return problem
        model = header(head, b"x-llmops-model") or ""
        self.models[model] += 1
        self.attempts[header(head, b"x-llmops-attempts") or ""] += 1
        if self.since:
            self.after[model] += 1
            if model == self.watch and not self.first_after:
                self.first_after = time.perf_counter()
        return None


# ---------------------------------------------------------------- part 1


@dataclass
class Run:
    label: str
    model: str
    result: LoadResult
    answers: Answers
    upstream_calls: int
    outcomes: dict[str, dict[str, int]]
    gc_longest_ms: float | None
    gc_longest_by_generation: list[float] | None
    gc_full_cpu_ms: float | None
    gc_collections: list[int] | None
    breaker_opened: int
    started_at: float  # unix time

    @property
    def success_rate(self) -> float:
        return 100 * self.result.ok / self.result.requests if self.result.requests else float("nan")


def lane_totals(stats: dict) -> tuple[int, dict[str, dict[str, int]]]:
    return sum(lane["received"] for lane in stats.values()), {name: lane["outcomes"] for name, lane in stats.items()}


def outcome_delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {}
    for lane, counts in after.items():
        old = before.get(lane, {})
        changed = {k: v - old.get(k, 0) for k, v in counts.items() if v - old.get(k, 0)}
        if changed:
            delta[lane] = changed
    return delta


async def measured_run(
    args: argparse.Namespace, gateway: Daphne, upstream: Daphne, key: str, label: str, model: str, settle: float
) -> Run:
    answers = Answers()
    calls_before, outcomes_before = lane_totals(await call(upstream.port, "GET", "/stats"))
    state_before = await health(gateway)
    opened_before = breaker(state_before, model).get("times_opened", 0)
    collections_before = state_before.get("gc", {}).get("collections")
    await asyncio.sleep(1.05)  # the GC figures are kept per wall-clock second: start on a fresh one
    gc_since = time.time()
    cpu_before = gateway.cpu_s()
    result = await asyncio.wait_for(
        run_load(
            gateway.port,
            body_builder(gateway.port, key, model),
            answers.check,
            requests=args.requests,
            concurrency=args.concurrency,
            with_head=True,
        ),
        PHASE_TIMEOUT_S,
    )
    await asyncio.sleep(settle)  # buffered metrics reach the database: their writing is counted
    result.server_cpu_s = gateway.cpu_s() - cpu_before
    state = await health(gateway, gc_since)
    calls_after, outcomes_after = lane_totals(await call(upstream.port, "GET", "/stats"))
    gc_state = state.get("gc") or {}
    collections = gc_state.get("collections")
    if collections and collections_before:
        collections = [a - b for a, b in zip(collections, collections_before, strict=True)]
    return Run(
        label=label,
        model=model,
        result=result,
        answers=answers,
        upstream_calls=calls_after - calls_before,
        outcomes=outcome_delta(outcomes_after, outcomes_before),
        gc_longest_ms=gc_state.get("longest_pause_ms_since"),
        gc_longest_by_generation=gc_state.get("longest_pause_ms_since_by_generation"),
        gc_full_cpu_ms=gc_state.get("longest_collection_cpu_ms_since"),
        gc_collections=collections,
        breaker_opened=breaker(state, model).get("times_opened", 0) - opened_before,
        started_at=gc_since,
    )


def part_one_rows(flaky: Run, base: Run) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(metric: str, g: float | None, b: float | None, *, added: bool = True, digits: int = 1) -> None:
        rows.append(compared(metric, g, b, digits, difference=added))

    def text(metric: str, g: str, b: str) -> None:
        rows.append([metric, g, b, "", ""])

    fr, br = flaky.result, base.result
    text("requests answered 200 / sent", f"{fr.ok} / {fr.requests}", f"{br.ok} / {br.requests}")
    add("success rate, %", flaky.success_rate, base.success_rate, digits=2)
    add("median latency, ms", fr.pct(50), br.pct(50))
    add("p99 latency, ms", fr.pct(99), br.pct(99))
    add("max latency, ms", fr.pct(100), br.pct(100))
    add("throughput, req/s", fr.throughput, br.throughput, added=False)
    add("upstream calls per request", flaky.upstream_calls / fr.requests, base.upstream_calls / br.requests, digits=3)
    fallback_share = 100 * flaky.answers.models[FALLBACK] / fr.ok if fr.ok else None
    text(
        f"answered by fallback `{FALLBACK}`",
        f"{flaky.answers.models[FALLBACK]} ({fmt(fallback_share, 2)}%)",
        str(base.answers.models[FALLBACK]),
    )
    for attempts in sorted(set(flaky.answers.attempts) | set(base.answers.attempts), key=lambda a: (len(a), a)):
        text(
            f"x-llmops-attempts = {attempts or '(none)'}",
            str(flaky.answers.attempts[attempts]),
            str(base.answers.attempts[attempts]),
        )
    add("gateway CPU, ms/req", fr.server_cpu_ms_per_request, br.server_cpu_ms_per_request, digits=3)
    add("largest GC pause in the gateway, ms", flaky.gc_longest_ms, base.gc_longest_ms, digits=2)
    text(
        "  longest by generation gen0/gen1/gen2, ms",
        "/".join(fmt(x, 1) for x in flaky.gc_longest_by_generation or []) or "n/a",
        "/".join(fmt(x, 1) for x in base.gc_longest_by_generation or []) or "n/a",
    )
    add("  CPU time of the longest gen2, ms", flaky.gc_full_cpu_ms, base.gc_full_cpu_ms, digits=1)
    text(
        "GC collections gen0/gen1/gen2",
        "/".join(map(str, flaky.gc_collections or [])) or "n/a",
        "/".join(map(str, base.gc_collections or [])) or "n/a",
    )
    text("times its breaker opened", str(flaky.breaker_opened), str(base.breaker_opened))
    add("wall time, s", fr.wall_s, br.wall_s, added=False, digits=2)
    return rows


# ---------------------------------------------------------------- part 2


@dataclass
class Outage:
    result: LoadResult
    answers: Answers
    window_calls_at_death: int | None
    burst: list[float]  # arrival times (s after the death) of the requests before the breaker opened
    probes: list[float]
    opened_seen_s: float | None  # death -> /healthz first showed the breaker not closed
    closed_s: float | None  # recovery -> first answer from flaky, at the client
    probe_s: float | None  # recovery -> the first request reaching the healthy lane (the probe that closed it)
    answers_while_dead: Counter
    upstream_received: int
    died_at: float  # unix times
    recovered_at: float


def split_burst(arrivals: list[float], gap_s: float) -> tuple[list[float], list[float]]:
    """The burst before the breaker opened, and the probes after it (spaced by cool-downs)."""
    ordered = sorted(arrivals)
    for i in range(1, len(ordered)):
        if ordered[i] - ordered[i - 1] >= gap_s:
            return ordered[:i], ordered[i:]
    return ordered, []


async def wait_for_breaker(
    gateway: Daphne, model: str, wanted, timeout_s: float, every_s: float = 0.02
) -> float | None:
    """Poll /healthz until the model's breaker state satisfies `wanted`; returns the time taken."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if wanted(breaker(await health(gateway), model).get("state", "closed")):
            return time.perf_counter() - started
        await asyncio.sleep(every_s)
    return None


async def part_two(args: argparse.Namespace, gateway: Daphne, upstream: Daphne, key: str) -> Outage:
    await set_lane(upstream, "flaky", mode="healthy")
    answers = Answers(watch="flaky")
    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            gateway.port,
            body_builder(gateway.port, key, "flaky"),
            answers.check,
            requests=10**9,
            concurrency=args.concurrency,
            with_head=True,
            stop=stop,
        )
    )
    try:
        # Whatever part 1 left, the breaker closes on a healthy lane within a cool-down.
        if await wait_for_breaker(gateway, "flaky", lambda s: s == "closed", args.cooldown_s + 10) is None:
            raise RuntimeError("flaky's breaker did not close on a healthy upstream before part 2")
        await asyncio.sleep(args.lead_in_s)
        window_calls = breaker(await health(gateway), "flaky").get("calls_in_window")
        models_before = Counter(answers.models)
        died, died_at = time.perf_counter(), time.time()
        await set_lane(upstream, "flaky", mode="dead")
        opened = await wait_for_breaker(gateway, "flaky", lambda s: s != "closed", args.breaker_window_s + 30)
        opened_seen = opened  # measured from just after the switch
        if opened is not None:
            # One probe fails while it is dead (and opens it again), then it recovers.
            await asyncio.sleep(max(0.0, died + opened + 1.5 * args.cooldown_s - time.perf_counter()))
        dead_stats = await set_lane(upstream, "flaky", mode="healthy")
        answers.since, recovered_at = time.perf_counter(), time.time()
        answers_while_dead = Counter(answers.models)
        answers_while_dead.subtract(models_before)
        closed = None
        if opened is not None:
            deadline = answers.since + 2 * args.cooldown_s + 10
            while not answers.first_after and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            if answers.first_after:
                closed = answers.first_after - answers.since
                await asyncio.sleep(0.5)  # and it goes on answering
    finally:
        stop.set()
        result = await asyncio.wait_for(load, PHASE_TIMEOUT_S)
    after = (await call(upstream.port, "GET", "/stats"))["flaky"]["arrivals_s"]
    probe = after[0] if after and closed is not None else None
    burst, probes = split_burst(dead_stats["arrivals_s"], args.cooldown_s / 2)
    return Outage(
        result=result,
        answers=answers,
        window_calls_at_death=window_calls,
        burst=burst,
        probes=probes,
        opened_seen_s=opened_seen,
        closed_s=closed,
        probe_s=probe,
        answers_while_dead=+answers_while_dead,
        upstream_received=dead_stats["in_mode"],
        died_at=died_at,
        recovered_at=recovered_at,
    )


def part_two_rows(args: argparse.Namespace, outage: Outage) -> list[list[str]]:
    burst_s = outage.burst[-1] if outage.burst else None
    rows = [
        [
            "requests that reached flaky before its breaker opened",
            str(len(outage.burst)),
            f"LLMOPS_BREAKER_FAILURES = {args.failures}",
            ratio(len(outage.burst), args.failures),
        ],
        [
            "  its calls in the breaker window at the death",
            str(outage.window_calls_at_death),
            "",
            "",
        ],
        ["death -> last of those arrived, s", fmt(burst_s, 3), "", ""],
        ["death -> /healthz showed it open, s", fmt(outage.opened_seen_s, 3), "(polled every 20 ms)", ""],
        [
            "probes while dead (each opened it again)",
            str(len(outage.probes)),
            f"at {', '.join(fmt(p, 2) for p in outage.probes) or '-'} s",
            "",
        ],
        [
            "recovery -> its probe reached flaky (closing it), s",
            fmt(outage.probe_s, 3),
            f"cool-down {args.cooldown_s:g} s",
            ratio(outage.probe_s, args.cooldown_s),
        ],
        [
            "recovery -> first answer from flaky at the client, s",
            fmt(outage.closed_s, 3),
            f"cool-down {args.cooldown_s:g} s",
            ratio(outage.closed_s, args.cooldown_s),
        ],
        [
            "answers while dead, by model",
            ", ".join(f"{m}: {n}" for m, n in sorted(outage.answers_while_dead.items())) or "-",
            "",
            "",
        ],
        [
            "answers after recovery, by model",
            ", ".join(f"{m}: {n}" for m, n in sorted(outage.answers.after.items())) or "-",
            "",
            "",
        ],
        [
            "requests answered 200 / sent (whole part)",
            f"{outage.result.ok} / {outage.result.requests}",
            "",
            "",
        ],
    ]
    return rows


# ---------------------------------------------------------------- what the gateway itself recorded

OPENED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING \S+ Circuit breaker for (\S+) opened", re.M)


def breaker_openings(log: str, marks: dict[str, float]) -> list[str]:
    """Each "Circuit breaker ... opened" line of the gateway's log, placed after the latest mark."""
    lines = []
    for match in OPENED.finditer(log):
        at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        earlier = [(when, name) for name, when in marks.items() if when <= at + 0.001]
        where = f"{earlier[-1][1]} + {at - earlier[-1][0]:.2f} s" if earlier else "before the first mark"
        lines.append(f"{match.group(3)} opened at {where}")
    return lines


def attempt_sequences(database: str, model: str, top: int = 8) -> list[str]:
    """The commonest sequences of attempts (model:outcome) among the metric rows of `model`."""
    try:
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT attempts FROM monitoring_querymetric WHERE model = ?", (model,)
            ).fetchall()
    except sqlite3.Error as exc:
        return [f"(metric rows unreadable: {exc})"]
    sequences = Counter(" > ".join(f"{a['model']}:{a['outcome']}" for a in json.loads(raw or "[]")) for (raw,) in rows)
    shown = sequences.most_common(top)
    shown += [(seq, n) for seq, n in sequences.items() if seq.count(">") >= 4 and (seq, n) not in shown]
    return [f"{n:>7}  {seq}" for seq, n in shown] + [f"({len(rows)} rows, {len(sequences)} distinct sequences)"]


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    settle = args.flush_interval + 0.3
    problems: list[str] = []
    settings = {
        "LLMOPS_UPSTREAM_TIMEOUT_S": str(args.timeout_s),
        "LLMOPS_RETRIES": str(args.retries),
        "LLMOPS_BREAKER_COOLDOWN_S": str(args.cooldown_s),
        "LLMOPS_BREAKER_WINDOW_S": str(args.breaker_window_s),
        "LLMOPS_METRICS_FLUSH_INTERVAL_S": str(args.flush_interval),
        "LLMOPS_GC_STATS": "1",
    }
    with throwaway(settings, open_files=8 * args.concurrency + 256) as set_up:
        env = set_up.env
        upstream = set_up.daphne("upstream", FLAKY_APP, backlog=1024)
        gateway = set_up.daphne(backlog=1024)
        key = set_up.prepare()
        set_up.script(CATALOG_SCRIPT, f"http://{HOST}:{upstream.port}")
        with serving(upstream, gateway):
            if "gc" not in gateway.wait_ready():
                problems.append("the gateway's /healthz has no gc figures (LLMOPS_GC_STATS=1 was set)")
            from_env = {name: env.get(name) for name in ("LLMOPS_BREAKER_FAILURES", "LLMOPS_BREAKER_FAILURE_RATE")}
            args.failures = int(from_env["LLMOPS_BREAKER_FAILURES"] or 5)
            rate = float(from_env["LLMOPS_BREAKER_FAILURE_RATE"] or 0.5)
            print(machine("failover benchmark", set_up.elapsed_s))
            print(
                f"gateway: daphne pid {gateway.pid} on 127.0.0.1:{gateway.port}; upstream: "
                f"{FLAKY_APP} under daphne pid {upstream.pid} on 127.0.0.1:{upstream.port}, "
                "catalog models healthy, flaky (fallback steady), steady: provider openai, one lane each"
            )
            print(
                f"gateway settings: LLMOPS_UPSTREAM_TIMEOUT_S={args.timeout_s:g} LLMOPS_RETRIES={args.retries} "
                f"(backoff base {env.get('LLMOPS_RETRY_BASE_S') or '0.1'} s, full jitter) "
                f"LLMOPS_BREAKER_FAILURES={args.failures} LLMOPS_BREAKER_FAILURE_RATE={rate:g} "
                f"LLMOPS_BREAKER_WINDOW_S={args.breaker_window_s:g} LLMOPS_BREAKER_COOLDOWN_S={args.cooldown_s:g} "
                "LLMOPS_GC_STATS=1; answer cache bypassed"
            )
            print(
                f"flaky lane: {100 * args.fail_rate:g}% of requests fail, evenly 429 (Retry-After: 0) / 500 / "
                f"{args.slow_s:g} s sleep (past the timeout), seed {args.seed}; client: raw asyncio HTTP/1.1 "
                f"keep-alive, {args.concurrency} connections; warm-up {args.warmup} requests per model"
            )
            print()
            for model in ("healthy", "steady", "flaky"):
                build = body_builder(gateway.port, key, model)
                await warm_up(gateway.port, build, Answers().check, args.warmup, model, with_head=True)
            await asyncio.sleep(settle)

            started = time.perf_counter()
            base = await measured_run(args, gateway, upstream, key, "healthy", "healthy", settle)
            await set_lane(
                upstream, "flaky", mode="flaky", fail_rate=args.fail_rate, slow_s=args.slow_s, seed=args.seed
            )
            flaky = await measured_run(args, gateway, upstream, key, "flaky", "flaky", settle)
            print(
                f"Part 1: {args.requests} requests at {args.concurrency} in flight to `flaky` "
                f"({100 * args.fail_rate:g}% failing, fallback `{FALLBACK}`) against the same requests to `healthy`"
            )
            print(
                table(
                    ["metric", "flaky", "healthy (baseline)", "added", "ratio"],
                    part_one_rows(flaky, base),
                )
            )
            for run_ in (flaky, base):
                print(
                    f"upstream outcomes during the {run_.label} run: "
                    + "; ".join(
                        f"{lane}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                        for lane, counts in sorted(run_.outcomes.items())
                    )
                )
            print(
                f"added = flaky - healthy; ratio = flaky / healthy (same client, gateway and upstream, same run). "
                f"GC target: under 20 ms; largest pause in the flaky run {fmt(flaky.gc_longest_ms, 2)} ms"
                + (" (met)" if flaky.gc_longest_ms is not None and flaky.gc_longest_ms < 20 else " (NOT met)")
            )
            print(f"(part 1 took {time.perf_counter() - started:.1f} s)")
            print()
            for run_ in (base, flaky):
                if run_.result.errors:
                    problems.append(
                        f"{run_.label}: {run_.result.errors} of {run_.result.requests} requests failed, "
                        f"e.g. {run_.result.error_sample}"
                    )

            started = time.perf_counter()
            outage = await part_two(args, gateway, upstream, key)
            print(
                f"Part 2: `flaky` dies (every request 503) after {args.lead_in_s:g} s of healthy load at "
                f"{args.concurrency} in flight, then recovers after 1.5 cool-downs"
            )
            print(table(["metric", "measured", "against", "ratio"], part_two_rows(args, outage)))
            print(
                f"The upstream received {outage.upstream_received} requests while dead. ratio: the count against "
                "the breaker's minimum of failures; the time to close against the cool-down."
            )
            print(f"(part 2 took {time.perf_counter() - started:.1f} s)")
            await asyncio.sleep(settle)  # the last metric rows reach the database
            print()
            marks = {
                "the healthy run": base.started_at,
                "the flaky run": flaky.started_at,
                "part 2's death": outage.died_at,
                "part 2's recovery": outage.recovered_at,
            }
            print(
                "Breaker openings in the gateway's log: "
                + ("; ".join(breaker_openings(gateway.log_tail(10**7), marks)) or "none")
            )
            database = set_up.database
            print("Commonest attempt sequences of requests to `flaky` (the gateway's metric rows, all parts):")
            print("\n".join(attempt_sequences(database, "flaky")))
            print("... and to `healthy` (a timeout there is the gateway's own event loop lagging past the timeout):")
            print("\n".join(attempt_sequences(database, "healthy", top=4)))
            if outage.result.errors:
                problems.append(
                    f"part 2: {outage.result.errors} of {outage.result.requests} requests failed, "
                    f"e.g. {outage.result.error_sample}"
                )
            if outage.opened_seen_s is None:
                problems.append("part 2: flaky's breaker never opened while its upstream was dead")
            elif outage.closed_s is None:
                problems.append("part 2: flaky answered nothing within 2 cool-downs + 10 s of its recovery")
    for problem in problems:
        print(f"!! {problem}")
    return 1 if problems else 0


main = command(run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
