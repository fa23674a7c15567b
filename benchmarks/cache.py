"""What the answer cache buys: hit latency through the full HTTP path, and provider calls and
dollars avoided on a workload with repeats.

    .venv/bin/python -m benchmarks.cache [--data ../shared/data] [--requests 2000] [--concurrency 64]
        [--workload-requests 1000] [--distinct 400] [--workload-concurrency 16] [--no-sequential]

It builds a throwaway gateway (temporary SQLite database, migrated, seeded with the default
cache policy: every model, exact match after whitespace normalisation, 1 h, per API key),
serves it with daphne on a free loopback port and creates one API key per run below, so no
run sees another's cache entries or statistics. Metrics are flushed every 0.2 s
(LLMOPS_METRICS_FLUSH_INTERVAL_S) so /api/cache/stats can be read soon after a run.

Part 1, cache-hit latency. One question to `sim-small` is asked once (a miss, which stores
the answer), then asked again `--requests` (N) times one at a time, then N times with
`--concurrency` in flight over as many keep-alive connections. Every answer must carry
`x-llmops-cache: hit` (anything else is counted and fails the run). Baselines, in the same
run, against the same gateway with the same client:
  bypass     the same request with `"cache": {"mode": "bypass"}` and a simulated upstream
             that answers at once: the gateway's own miss path (no lookup, no store, an
             upstream that costs nothing), so hit / bypass is what a hit costs against the
             cheapest possible miss;
  upstream   the same with bypass and a realistic upstream latency (`--slow-latency-ms`,
             300 ms), fewer requests (`--slow-requests`, at `--slow-concurrency` in flight):
             hit / upstream is what a hit saves a caller.
Printed per scenario: p50, p99 and max latency (ms, client side), requests/s, and the
daphne process's CPU per request (user + system, all threads, over the phase and a settle
time that lets buffered metric and cache-entry writes land), with ratio = hit / baseline.

Part 2, the seed workload: sentiment classification through the seeded prompt `sentiment`
(version 1, variable `text`), `--workload-requests` requests (1,000) over `--distinct`
texts (400) drawn from sentiment3.tsv (TweetEval, see ../shared/data/README.md), so 600
are repeats of texts asked earlier. The order is random but fixed by `--seed`: each step
asks a new text or repeats one already asked, chosen so the counts come out exact. The
simulated upstream takes `--workload-latency-ms` (20 ms) per call. Runs, each with a fresh
API key:
  cache off      every request with `cache.mode` bypass, `--workload-concurrency` (16) in
                 flight: the baseline every other run is compared with;
  cache on, 16 in flight, a repeat waits for its first ask: the client holds a repeat back
                 until the first request for that text has been answered, as happens when
                 repeats are spread over time (the usual case): this measures the cache;
  cache on, 16 in flight, sent in order: no holding back. A repeat that arrives while
                 the first request for its text is still upstream misses too (the gateway
                 does not coalesce identical in-flight requests), so this run shows what
                 bursts of duplicates cost;
  cache on, 1 in flight: sequential, every repeat after its first answer (`--no-sequential`
                 skips it, it takes the longest).
Printed per run: provider calls (answers whose x-llmops-cache is miss or bypass), the share
avoided against the cache-off run, total cost (sum of x-llmops-cost-usd), the share of cost
avoided, saved_usd from GET /api/cache/stats for the run's key (after the metric flush),
and wall time; ratio = run / cache off. The best possible share avoided is the repeat share
(600 / 1,000 = 0.60). Every repeat that missed is explained: either an earlier request for
the same text was still in flight when it was sent, or it is listed as an unexpected miss
(a cache bug) and fails the run. saved_usd is checked against the answers' own
`llmops.saved_usd` and against cost(cache off) - cost(cache on).

Without the dataset (a clone with no ../shared) the command exits with status 2 and says so;
`--generated` runs part 2 on generated texts instead, labelled as such in the output.
Numbers move with whatever else runs on the machine. The exit code is 0 when every check
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from benchmarks.harness.client import (
    CHAT_PATH,
    HttpConnection,
    LoadResult,
    get_request,
    header,
    post_request,
    request_once,
    run_load,
)
from benchmarks.harness.command import command, options, parsed
from benchmarks.harness.figures import fmt, machine, ratio, table
from benchmarks.harness.gateway import ROOT, Daphne, serving, throwaway
from caching.keys import normalise

PATH = CHAT_PATH
STATS_PATH = "/api/cache/stats"
MODEL = "sim-small"
PROMPT = "sentiment"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DATASET = "sentiment3.tsv"
QUESTION = "In one word: what is the capital of France?"
NORMALISATION = "whitespace"  # the default cache policy's
ZERO = Decimal(0)
KEY_NAMES = ("cache-off", "cache-on-wait", "cache-on-in-order", "cache-on-sequential")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("cache", "Answer-cache hit latency and provider calls and cost avoided, with same-run baselines.")
    add = parser.add_argument
    add("--data", type=Path, default=DEFAULT_DATA, help=f"folder holding {DATASET} (default ../shared/data)")
    add("--generated", action="store_true", help="without the dataset: use generated texts (labelled as such)")
    add("--requests", type=int, default=2000, help="cache hits per scenario, and bypass baselines (default 2000)")
    add("--concurrency", type=int, default=64, help="requests in flight in the concurrent scenario (default 64)")
    add("--slow-requests", type=int, default=48, help="requests to the realistic upstream (default 48)")
    add("--slow-latency-ms", type=int, default=300, help="the realistic upstream's latency (default 300)")
    add("--slow-concurrency", type=int, default=16, help="in flight against the realistic upstream (default 16)")
    add("--warmup", type=int, default=200, help="warm-up requests, bypass and hit each (default 200)")
    add("--workload-requests", type=int, default=1000, help="requests in the seed workload (default 1000)")
    add("--distinct", type=int, default=400, help="distinct texts in it; the rest are repeats (default 400)")
    add("--workload-concurrency", type=int, default=16, help="workload requests in flight (default 16)")
    add("--workload-latency-ms", type=int, default=20, help="simulated upstream latency in the workload (default 20)")
    add("--seed", type=int, default=3, help="seed for the texts chosen and their order (default 3)")
    add("--no-sequential", action="store_true", help="skip the workload's one-at-a-time cache-on run")
    add("--flush-interval", type=float, default=0.2, help="LLMOPS_METRICS_FLUSH_INTERVAL_S (default 0.2)")
    args = parsed(
        parser,
        argv,
        at_least_one=("requests", "concurrency", "slow_requests", "slow_concurrency", "workload_requests", "distinct"),
    )
    if args.workload_concurrency < 1 or args.warmup < 0 or args.slow_latency_ms < 0 or args.workload_latency_ms < 0:
        parser.error("--workload-concurrency must be at least 1; --warmup and latencies must not be negative")
    if args.distinct > args.workload_requests:
        parser.error("--distinct cannot exceed --workload-requests")
    if not 0 < args.flush_interval <= 2:
        parser.error("--flush-interval must be above 0 and at most 2 s (the stats are read after a flush)")
    return args


# ---------------------------------------------------------------- the texts and the workload


def load_texts(args: argparse.Namespace) -> tuple[list[str], str] | None:
    """`--distinct` different texts (different after the policy's normalisation), and where
    they come from; None when the dataset is missing and `--generated` was not asked for."""
    path = args.data / DATASET
    rng = random.Random(args.seed)
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        unique: dict[str, str] = {}
        for row in rows[1:]:
            unique.setdefault(normalise(row[0], NORMALISATION), row[0])
        if len(unique) < args.distinct:
            raise SystemExit(f"{path} has only {len(unique)} distinct texts; --distinct asks for {args.distinct}")
        texts = rng.sample(list(unique.values()), args.distinct)
        return texts, f"{path} ({len(rows) - 1} rows, {len(unique)} distinct texts; {args.distinct} drawn)"
    if not args.generated:
        return None
    subjects = ("the delivery", "this phone", "the new update", "our hotel", "the match", "customer service")
    verdicts = ("was great", "was awful", "arrived on Tuesday", "could be better", "made my day", "is fine I guess")
    texts = [f"Generated text {i}: {rng.choice(subjects)} {rng.choice(verdicts)}." for i in range(args.distinct)]
    return texts, f"GENERATED texts ({args.distinct}; no dataset at {path})"


def build_sequence(distinct: int, total: int, seed: int) -> list[int]:
    """Text ids in asking order: each id's first appearance comes in increasing id order, and
    exactly total - distinct entries repeat an id asked earlier (chosen uniformly)."""
    rng = random.Random(seed)
    sequence: list[int] = []
    new_left, repeats_left = distinct, total - distinct
    asked = 0
    while new_left or repeats_left:
        if not asked or rng.random() < new_left / (new_left + repeats_left):
            sequence.append(asked)
            asked += 1
            new_left -= 1
        else:
            sequence.append(rng.randrange(asked))
            repeats_left -= 1
    return sequence


# ---------------------------------------------------------------- HTTP helpers


def chat_body(**fields) -> bytes:
    return json.dumps({"model": MODEL, **fields}).encode()


def cache_checker(expected: str):
    """check(status, body, head) for run_load: the answer must say x-llmops-cache: `expected`."""
    seen: Counter[str] = Counter()

    def check(status: int, body: bytes, head: bytes) -> str | None:
        if status != 200:
            seen[f"HTTP {status}"] += 1
            return f"HTTP {status}: {body[:300]!r}"
        got = header(head, b"x-llmops-cache") or "(no header)"
        seen[got] += 1
        if got != expected:
            return f"x-llmops-cache: {got} where {expected} was expected"
        return None

    return check, seen


# ---------------------------------------------------------------- part 1: hit latency


def small_ratio(value: float, base: float) -> str:
    """A ratio far below 1, with enough digits to read, and the speed-up it means."""
    if not base or value != value or base != base or not value:
        return "n/a"
    return f"{value / base:.4f}x (1/{base / value:,.0f})"


@dataclass
class Phase:
    result: LoadResult
    statuses: Counter[str]
    cpu_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.result.requests


async def measure(
    gateway: Daphne, payload: bytes, key: str, expected: str, *, requests: int, concurrency: int, settle_s: float
) -> Phase:
    data = post_request(gateway.port, PATH, key, payload)
    check, seen = cache_checker(expected)
    cpu_before = gateway.cpu_s()
    result = await run_load(
        gateway.port, lambda _: data, check, requests=requests, concurrency=concurrency, with_head=True
    )
    await asyncio.sleep(settle_s)  # buffered metric rows and cache-entry hit counts are written meanwhile
    return Phase(result, seen, gateway.cpu_s() - cpu_before)


async def part_one(args: argparse.Namespace, gateway: Daphne, key: str, settle_s: float) -> tuple[list[str], bool]:
    """Returns the printed lines and whether every check passed."""
    instant = {"latency_ms": 0, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": 16, "error_rate": 0}
    slow = {**instant, "latency_ms": args.slow_latency_ms}
    messages = [{"role": "user", "content": QUESTION}]
    cached = chat_body(messages=messages, simulate=instant)
    bypass = chat_body(messages=messages, simulate=instant, cache={"mode": "bypass"})
    upstream = chat_body(messages=messages, simulate=slow, cache={"mode": "bypass"})
    lines: list[str] = []
    ok = True

    if args.warmup:
        await measure(gateway, bypass, key, "bypass", requests=args.warmup, concurrency=8, settle_s=0)
    status, head, _ = await request_once(gateway.port, post_request(gateway.port, PATH, key, cached))
    first = header(head, b"x-llmops-cache")
    if status != 200 or first != "miss":
        lines.append(f"!! the first ask of the question answered HTTP {status}, x-llmops-cache {first} (wanted miss)")
        ok = False
    if args.warmup:
        await measure(gateway, cached, key, "hit", requests=args.warmup, concurrency=8, settle_s=settle_s)

    n, c = args.requests, args.concurrency
    phases = {
        "hit, 1": await measure(gateway, cached, key, "hit", requests=n, concurrency=1, settle_s=settle_s),
        "bypass, 1": await measure(gateway, bypass, key, "bypass", requests=n, concurrency=1, settle_s=settle_s),
        "hit, c": await measure(gateway, cached, key, "hit", requests=n, concurrency=c, settle_s=settle_s),
        "bypass, c": await measure(gateway, bypass, key, "bypass", requests=n, concurrency=c, settle_s=settle_s),
        "upstream": await measure(
            gateway,
            upstream,
            key,
            "bypass",
            requests=args.slow_requests,
            concurrency=args.slow_concurrency,
            settle_s=settle_s,
        ),
    }
    for name, phase in phases.items():
        if phase.result.errors:
            ok = False
            lines.append(
                f"!! {name}: {phase.result.errors} of {phase.result.requests} answers wrong, "
                f"e.g. {phase.result.error_sample}; x-llmops-cache seen: {dict(phase.statuses)}"
            )

    def rows(label: str, hit: Phase, base: Phase) -> list[list[str]]:
        h, b = hit.result, base.result
        pairs = [
            ("latency p50, ms", h.pct(50), b.pct(50), 3),
            ("latency p99, ms", h.pct(99), b.pct(99), 3),
            (
                "latency max, ms",
                max(h.latencies_ms, default=float("nan")),
                max(b.latencies_ms, default=float("nan")),
                3,
            ),
            ("requests/s", h.throughput, b.throughput, 1),
            ("server CPU, ms/req", hit.cpu_ms_per_request, base.cpu_ms_per_request, 3),
            ("client CPU, ms/req", h.client_cpu_s * 1000 / h.requests, b.client_cpu_s * 1000 / b.requests, 3),
        ]
        out = [[label if i == 0 else "", m, fmt(x, d), fmt(y, d), ratio(x, y)] for i, (m, x, y, d) in enumerate(pairs)]
        return out

    slow_phase = phases["upstream"]
    hit_seq = phases["hit, 1"]
    body_rows = [
        *rows(f"1 in flight ({n} req) vs bypass", hit_seq, phases["bypass, 1"]),
        *rows(f"{c} in flight ({n} req) vs bypass", phases["hit, c"], phases["bypass, c"]),
        [
            f"1 in flight vs {args.slow_latency_ms} ms upstream",
            "latency p50, ms",
            fmt(hit_seq.result.pct(50), 3),
            fmt(slow_phase.result.pct(50), 3),
            small_ratio(hit_seq.result.pct(50), slow_phase.result.pct(50)),
        ],
        [
            f"({args.slow_requests} req at {args.slow_concurrency} in flight)",
            "latency p99, ms",
            fmt(hit_seq.result.pct(99), 3),
            fmt(slow_phase.result.pct(99), 3),
            small_ratio(hit_seq.result.pct(99), slow_phase.result.pct(99)),
        ],
    ]
    lines.append(
        f"Part 1: cache-hit latency, one question to {MODEL} asked once (x-llmops-cache: {first}) then repeated"
    )
    lines.append(table(["scenario", "metric", "cache hit", "baseline", "ratio"], body_rows))
    hits = sum(p.statuses["hit"] for k, p in phases.items() if k.startswith("hit"))
    lines.append(
        f"ratio = cache hit / baseline. Baselines: bypass = the same request with cache.mode bypass and an upstream "
        f"that answers at once (the gateway's own miss path); upstream = bypass with {args.slow_latency_ms} ms "
        f"simulated upstream latency. Answers saying x-llmops-cache: hit: {hits} of {2 * n} measured hit requests."
    )
    return lines, ok


# ---------------------------------------------------------------- part 2: the seed workload


@dataclass(slots=True)
class Outcome:
    index: int
    text_id: int
    repeat: bool
    sent: float = 0.0
    done: float = 0.0
    cache: str = ""
    cost: Decimal = ZERO
    saved: Decimal = ZERO
    error: str = ""


@dataclass
class WorkloadRun:
    label: str
    key: str
    concurrency: int
    outcomes: list[Outcome]
    wall_s: float
    stats: dict = field(default_factory=dict)

    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.outcomes if o.cache in statuses)

    @property
    def provider_calls(self) -> int:
        return self.count("miss", "bypass")

    @property
    def cost(self) -> Decimal:
        return sum((o.cost for o in self.outcomes), ZERO)

    @property
    def saved_in_answers(self) -> Decimal:
        return sum((o.saved for o in self.outcomes), ZERO)

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def repeat_misses(self) -> tuple[int, list[Outcome]]:
        """Repeats that missed: (how many had no answered earlier request for their text when
        they were sent, i.e. an in-flight duplicate; the others, which should have hit)."""
        answered: dict[int, list[float]] = {}
        in_flight, unexpected = 0, []
        for o in sorted(self.outcomes, key=lambda o: o.index):
            if o.repeat and o.cache == "miss":
                if any(done <= o.sent for done in answered.get(o.text_id, ())):
                    unexpected.append(o)
                else:
                    in_flight += 1
            if not o.error:
                answered.setdefault(o.text_id, []).append(o.done)
        return in_flight, unexpected


async def run_workload(
    port: int,
    key: str,
    texts: list[str],
    sequence: list[int],
    *,
    label: str,
    concurrency: int,
    simulate: dict,
    bypass: bool,
    wait_for_first: bool,
) -> WorkloadRun:
    extra = {"cache": {"mode": "bypass"}} if bypass else {}
    requests = {
        text_id: post_request(
            port,
            PATH,
            key,
            chat_body(messages=[], prompt=PROMPT, variables={"text": texts[text_id]}, simulate=simulate, **extra),
        )
        for text_id in set(sequence)
    }
    seen: set[int] = set()
    outcomes = []
    for index, text_id in enumerate(sequence):
        outcomes.append(Outcome(index, text_id, text_id in seen))
        seen.add(text_id)
    first_answered = {text_id: asyncio.Event() for text_id in requests}
    queue = iter(outcomes)
    connections = [HttpConnection(port) for _ in range(min(concurrency, len(outcomes)))]
    await asyncio.gather(*(conn.connect() for conn in connections))

    async def worker(conn: HttpConnection) -> None:
        for o in queue:
            if o.repeat and wait_for_first:
                await first_answered[o.text_id].wait()
            o.sent = time.perf_counter()
            try:
                status, _, body = await conn.request(requests[o.text_id])
                o.done = time.perf_counter()
                if status != 200:
                    o.error = f"HTTP {status}: {body[:300]!r}"
                    continue
                head = conn.head
                o.cache = header(head, b"x-llmops-cache") or "(no header)"
                o.cost = Decimal(header(head, b"x-llmops-cost-usd") or "NaN")
                o.saved = Decimal(json.loads(body)["llmops"]["saved_usd"])
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, ArithmeticError) as exc:
                conn.close()
                o.error = f"{type(exc).__name__}: {exc}"
            finally:
                if not o.repeat:
                    first_answered[o.text_id].set()

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(conn) for conn in connections))
    finally:
        for conn in connections:
            conn.close()
    return WorkloadRun(label, key, concurrency, outcomes, time.perf_counter() - started)


async def cache_stats(port: int, key: str, *, expected_lookups: int, flush_s: float) -> dict:
    """The key's /api/cache/stats, once the metric rows of `expected_lookups` requests that
    used the cache have been flushed (or after a timeout: the caller compares the counts)."""
    deadline = time.monotonic() + max(10.0, 20 * flush_s)
    await asyncio.sleep(2.5 * flush_s)
    while True:
        status, _, body = await request_once(port, get_request(port, STATS_PATH, key))
        if status != 200:
            raise RuntimeError(f"GET {STATS_PATH} answered HTTP {status}: {body[:300]!r}")
        stats = json.loads(body)["overall"]
        if stats["hits"] + stats["semantic_hits"] + stats["misses"] >= expected_lookups:
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(flush_s)


async def part_two(
    args: argparse.Namespace, gateway: Daphne, keys: dict[str, str], texts: list[str], source: str
) -> tuple[list[str], bool]:
    sequence = build_sequence(args.distinct, args.workload_requests, args.seed)
    n, repeats, c = len(sequence), len(sequence) - args.distinct, args.workload_concurrency
    simulate = {"latency_ms": args.workload_latency_ms, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": 1}
    port = gateway.port
    plans = [
        ("cache off (baseline)", "cache-off", c, True, False),
        (f"cache on, {c} in flight, repeats wait for first answer", "cache-on-wait", c, False, True),
        (f"cache on, {c} in flight, sent in order", "cache-on-in-order", c, False, False),
    ]
    if not args.no_sequential:
        plans.append(("cache on, 1 in flight", "cache-on-sequential", 1, False, False))
    runs: list[WorkloadRun] = []
    for label, key_name, concurrency, bypass, wait in plans:
        run = await run_workload(
            port,
            keys[key_name],
            texts,
            sequence,
            label=label,
            concurrency=concurrency,
            simulate=simulate,
            bypass=bypass,
            wait_for_first=wait,
        )
        run.stats = await cache_stats(port, run.key, expected_lookups=0 if bypass else n, flush_s=args.flush_interval)
        runs.append(run)

    off = runs[0]
    ok = True
    lines = [
        f"Part 2: the seed workload, {n} classifications with the prompt {PROMPT!r} on {MODEL} "
        f"({args.workload_latency_ms} ms simulated upstream), {args.distinct} distinct texts, {repeats} repeats "
        f"(repeat share {repeats / n:.2f}), order fixed by seed {args.seed}",
        f"texts: {source}",
    ]
    rows = []
    for run in runs:
        calls, cost = run.provider_calls, run.cost
        saved = Decimal(run.stats.get("saved_usd", "0"))
        rows.append(
            [
                run.label,
                str(run.concurrency),
                f"{calls} ({ratio(calls, off.provider_calls)})",
                fmt(1 - calls / off.provider_calls, 3),
                f"{cost:.10f} ({ratio(float(cost), float(off.cost))})",
                fmt(1 - float(cost / off.cost), 3) if off.cost else "n/a",
                f"{saved:.10f}",
                fmt(float(saved / off.cost), 3) if off.cost else "n/a",
                f"{run.wall_s:.2f} ({ratio(run.wall_s, off.wall_s)})",
            ]
        )
    headers = [
        "run",
        "in flight",
        "provider calls",
        "calls avoided",
        "cost USD",
        "cost avoided",
        "saved_usd (stats)",
        "saved / cost off",
        "wall s",
    ]
    lines.append(table(headers, rows))
    lines.append(
        f"(ratio) = run / cache off; avoided = 1 - ratio; the most that can be avoided is the repeat share, "
        f"{repeats / n:.3f}. saved_usd is GET {STATS_PATH} for the run's own API key, after the metric flush."
    )

    # Checks: every answer; the cache statuses; the misses explained; the dollars reconciled.
    for run in runs:
        statuses = Counter(o.cache for o in run.outcomes if not o.error)
        errors = run.errors
        if errors:
            ok = False
            lines.append(f"!! {run.label}: {len(errors)} requests failed, e.g. {errors[0].error}")
        if run is off:
            if set(statuses) - {"bypass"}:
                ok = False
                lines.append(f"!! {run.label}: answers not saying bypass: {dict(statuses)}")
            continue
        first_hits = sum(1 for o in run.outcomes if not o.repeat and o.cache in ("hit", "semantic_hit"))
        in_flight, unexpected = run.repeat_misses()
        stats = run.stats
        saved_stats = Decimal(stats.get("saved_usd", "0"))
        expected_saved = off.cost - run.cost
        notes = [
            f"x-llmops-cache {dict(sorted(statuses.items()))}",
            f"repeats that missed because the first ask of their text was still in flight: {in_flight}",
            f"unexpected misses: {len(unexpected)}",
            f"stats hits {stats.get('hits')}/misses {stats.get('misses')}/semantic {stats.get('semantic_hits')} "
            f"hit_rate {stats.get('hit_rate')}",
        ]
        lines.append(f"  {run.label}: " + "; ".join(notes))
        if first_hits:
            ok = False
            lines.append(f"!! {run.label}: {first_hits} first asks of a text were answered from the cache")
        if unexpected:
            ok = False
            sample = unexpected[0]
            lines.append(
                f"!! {run.label}: {len(unexpected)} repeats missed although an earlier request for the same text "
                f"had been answered before they were sent, e.g. request {sample.index} (text {sample.text_id})"
            )
        if stats.get("hits", 0) + stats.get("semantic_hits", 0) != statuses["hit"] + statuses["semantic_hit"] or (
            stats.get("misses") != statuses["miss"]
        ):
            ok = False
            lines.append(f"!! {run.label}: /api/cache/stats counts differ from the answers' headers")
        if saved_stats != run.saved_in_answers:
            ok = False
            lines.append(
                f"!! {run.label}: stats saved_usd {saved_stats} != sum of answers' llmops.saved_usd "
                f"{run.saved_in_answers}"
            )
        if saved_stats != expected_saved:
            ok = False
            lines.append(
                f"!! {run.label}: stats saved_usd {saved_stats} != cost(cache off) - cost(this run) {expected_saved}"
            )
    lines.append(
        "Checks: every answer 200; cache off all bypass; no first ask hit; every repeat miss explained by an "
        "in-flight duplicate; stats counts = header counts; stats saved_usd = sum of answers' llmops.saved_usd "
        "= cost(cache off) - cost(run)" + (": all passed." if ok else ": FAILED (see !! above).")
    )
    return lines, ok


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    loaded = load_texts(args)
    if loaded is None:
        print(
            f"benchmarks.cache needs the dataset {DATASET}: not found in {args.data}. Pass --data DIR (the "
            "project's shared/data folder; a clone of the repository alone has no ../shared), or --generated "
            "to run the workload on generated texts.",
            file=sys.stderr,
        )
        return 2
    texts, source = loaded
    settle_s = max(0.5, 2.5 * args.flush_interval)
    open_files = 4 * max(args.concurrency, args.workload_concurrency, args.slow_concurrency) + 256
    with throwaway({"LLMOPS_METRICS_FLUSH_INTERVAL_S": str(args.flush_interval)}, open_files=open_files) as set_up:
        key = set_up.prepare()
        keys = set_up.keys(KEY_NAMES)
        gateway = set_up.daphne(backlog=1024)
        with serving(gateway):
            print(
                machine("cache benchmark", set_up.elapsed_s) + f"; gateway: daphne pid {gateway.pid} on "
                f"127.0.0.1:{gateway.port}, embedded default (SQLite, local-memory cache), default cache policy, "
                f"metrics flushed every {args.flush_interval:g} s; client: raw asyncio HTTP/1.1 keep-alive"
            )
            print()
            started = time.perf_counter()
            lines_one, ok_one = await part_one(args, gateway, key, settle_s)
            print("\n".join(lines_one))
            print(f"(part 1 took {time.perf_counter() - started:.1f} s)")
            print()
            started = time.perf_counter()
            lines_two, ok_two = await part_two(args, gateway, keys, texts, source)
            print("\n".join(lines_two))
            print(f"(part 2 took {time.perf_counter() - started:.1f} s)")
    return 0 if ok_one and ok_two else 1


main = command(run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
