"""What the batch engine does with a big batch: how close it runs to the physical limit, what
a worker killed halfway costs, what a running batch does to interactive requests to the same
model, and what the answer cache saves on a batch with repeats.

    .venv/bin/python -m benchmarks.batches [--items 10000] [--quick] [--skip-celery]

Every batch goes the way users send one: the official `openai` SDK uploads the JSONL file
(POST /v1/files) and creates the batch (POST /v1/batches) on a real gateway (daphne on a
free loopback port, a throwaway database migrated and seeded, API keys created), the client
polls GET /v1/batches/{id} every `--poll-s` (0.1 s) and reads the output and error files
back. The model is `bench-sim`, a simulated catalog model added for the run: every call
takes `--latency-ms` (200 ms; simulation latency_ms = ttft_ms = 200, tokens at once, no
errors), max_concurrency = `--concurrency` / LLMOPS_BATCH_CONCURRENCY_SHARE (100 / 0.5,
the default share, = 200), so batch items hold at most 100 calls at once and interactive
requests keep the other 100. Every item and every interactive request says
`"cache": {"mode": "bypass"}`, so each is a real call to the model (part 4 aside).

Part 1, efficiency. `--items` (N, 10,000) items, each a different question, as one batch:
wall time from batch create to the poll that first saw `completed` (validating, in progress
and finalizing shown apart; the upload before it is not counted) against the physical limit
N x latency / concurrency (20 s): efficiency = limit / wall, goal >= 0.95. Against the
sequential baseline: `--sequential` (50) of the same items sent one at a time through
POST /v1/chat/completions on the same gateway, their mean wall time extrapolated to N
(printed as an extrapolation). Memory: the peak resident set of the process running the
items (the daphne process on the embedded default; the worker's process tree, main process
and pool child, on Celery), sampled every 0.1 s from /proc during the batch, against the
same process before it. Also the CPU those processes spent per item and, on the embedded
default, the peak of upstream calls in flight (/healthz, against the 100 batch slots) and
daphne's garbage-collector pauses during the batch (LLMOPS_GC_STATS=1). Run on
  embedded   the default: one daphne with SQLite, the batch on the executor thread of the
             daphne process (LLMOPS_BATCH_START_WITH_SERVER=true);
  celery     the production profile: a throwaway PostgreSQL database and an empty Redis
             database (cache, channel layer, broker), one daphne for the API and one
             `celery -A llmops worker --concurrency 1` running the batch. Both Celery runs
             use LLMOPS_BATCH_LEASE_S=5 (the default is 60) so that part 2's lapsed leases
             are taken over within seconds.

Part 2, kill (Celery). The same batch again; when the polls see half its items done, the
worker's whole process group gets SIGKILL and a new worker is started. Figures: items lost
(total - distinct custom_ids in the output and error files, must be 0), items recorded
twice (custom_ids appearing more than once, must be 0), items asked again (rows with
attempts > 1: those the dead worker held under its lease unanswered), the QueryMetric rows
of the run's own key, and the wall time against part 1's uninterrupted Celery run.

Part 3, interactive latency (embedded). `--interactive` (200) requests to bench-sim at
`--rate` (10/s, open loop, paced by the clock), each a different question, with no batch
running (the baseline), then again while a second batch of the same N items runs on the
same daphne process (sent from when the batch is in progress until it leaves it; the count
sent during the batch is printed). p50/p95/p99 client latency, ratio = during / without;
goal p95 <= 1.10x. The second batch's own efficiency is printed too.

Part 4, the seed workload (embedded). `--seed-items` (1,000) sentiment classifications
through the seeded prompt `sentiment` on bench-sim, 40% distinct texts from
../shared/data/sentiment3.tsv (generated texts, labelled so, without it) and 60% exact
repeats, in the order benchmarks/cache.py uses, as one batch: once with every item's cache
bypassed (the baseline), once with the default cache policy, each with an API key of its
own. Provider calls are the QueryMetric rows of the key whose cache_status is miss or bypass
(and the upstream attempts they list); cost is the batch's cost_usd; ratio = cache on /
cache off.

The exit code is 0 when every check passed (every item answered once, no item lost or
recorded twice, every interactive request answered, the cache run's calls as expected);
the goals (efficiency, interactive p95) are reported, not enforced. `--quick` runs smaller
sizes (2,000 items, 60 interactive requests, a 300-item seed workload) for a fast look.
Numbers move with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from openai import AsyncOpenAI

from benchmarks.cache import DEFAULT_DATA, PROMPT, build_sequence, load_texts
from benchmarks.harness.client import (
    CHAT_PATH,
    Failures,
    HttpConnection,
    check_answer,
    get_request,
    healthz,
    post_request,
    run_load,
)
from benchmarks.harness.command import command, options
from benchmarks.harness.figures import PeakRss, fmt, machine, percentile, process_memory_kb, ratio, table, tree_cpu_s
from benchmarks.harness.gateway import (
    CeleryWorker,
    Daphne,
    Throwaway,
    gateway_script,
    raise_open_files,
    services_profile,
    services_unreachable,
    serving,
    throwaway,
)

PATH = CHAT_PATH
MODEL = "bench-sim"
BATCH_SHARE = 0.5  # LLMOPS_BATCH_CONCURRENCY_SHARE's default, set for the gateways and workers
ENDED = ("completed", "failed", "expired", "cancelled")
KEY_NAMES = ("seed-cache-off", "seed-cache-on")
KILL_KEY = "celery-killed"  # the kill run's own key, so that its QueryMetric rows can be counted

CATALOG_SCRIPT = """
import json, sys
from decimal import Decimal
from llmops.models import ModelEndpoint
ModelEndpoint.objects.update_or_create(
    name=sys.argv[1],
    defaults={
        "provider": "simulated",
        "max_concurrency": int(sys.argv[2]),
        "simulation": json.loads(sys.argv[3]),
        "input_price_per_mtok": Decimal("0.10"),
        "output_price_per_mtok": Decimal("0.40"),
        "context_window": 128_000,
    },
)
"""

METRICS_SCRIPT = """
import json, sys
from django.db.models import Count, Sum
from monitoring.models import QueryMetric
rows = QueryMetric.objects.filter(api_key__name=sys.argv[1])
by_status = {
    row["cache_status"]: row["n"] for row in rows.values("cache_status").annotate(n=Count("id")).order_by()
}
attempts = sum(len(found or []) for found in rows.values_list("attempts", flat=True))
print(json.dumps({"rows": rows.count(), "by_status": by_status, "attempts": attempts}))
"""

ITEMS_SCRIPT = """
import json, sys
from django.db.models import Count
from llmops.batches.models import BatchItem
items = BatchItem.objects.filter(batch_id=sys.argv[1])
print(json.dumps({
    "rows": items.count(),
    "asked_again": items.filter(attempts__gt=1).count(),
    "by_attempts": {row["attempts"]: row["n"] for row in items.values("attempts").annotate(n=Count("id")).order_by()},
    "by_status": {row["status"]: row["n"] for row in items.values("status").annotate(n=Count("id")).order_by()},
}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "batches",
        "Batch efficiency against the physical limit, a killed worker, interactive latency under a "
        "batch, and the answer cache on a batch with repeats.",
    )
    add = parser.add_argument
    add("--items", type=int, help="items in the batches of parts 1-3 (default 10000; --quick 2000)")
    add("--quick", action="store_true", help="smaller sizes for a fast look")
    add("--skip-celery", action="store_true", help="run the embedded default only (parts 1, 3, 4)")
    add("--latency-ms", type=int, default=200, help="bench-sim's latency per call (default 200)")
    add("--concurrency", type=int, default=100, help="batch slots: max_concurrency = this / 0.5 (default 100)")
    add("--sequential", type=int, help="items sent one at a time for the baseline (default 50; --quick 20)")
    add("--interactive", type=int, help="interactive requests per run (default 200; --quick 60)")
    add("--rate", type=float, default=10.0, help="interactive requests per second (default 10)")
    add("--seed-items", type=int, help="items of the seed workload, 60%% repeats (default 1000; --quick 300)")
    add("--lease-s", type=float, default=5.0, help="LLMOPS_BATCH_LEASE_S of the Celery runs (default 5)")
    add("--poll-s", type=float, default=0.1, help="how often the client polls the batch (default 0.1)")
    add("--data", type=Path, default=DEFAULT_DATA, help="folder holding sentiment3.tsv (default ../shared/data)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (("items", 10_000, 2_000), ("sequential", 50, 20), ("interactive", 200, 60)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.seed_items is None:
        args.seed_items = 300 if quick else 1000
    if min(args.items, args.sequential, args.interactive, args.seed_items, args.concurrency, args.latency_ms) < 1:
        parser.error("sizes, --concurrency and --latency-ms must be at least 1")
    if args.seed_items < 5:
        parser.error("--seed-items must be at least 5")
    if args.rate <= 0 or args.poll_s <= 0 or args.lease_s < 0.5:
        parser.error("--rate and --poll-s must be above 0, --lease-s at least 0.5")
    return args


# ---------------------------------------------------------------- requests and files


def question(index: int) -> dict[str, Any]:
    content = f"Ticket {index}: the customer asks when the refund for order {index * 7919 % 100_000} arrives."
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "cache": {"mode": "bypass"}}


def jsonl(bodies: list[dict[str, Any]], prefix: str) -> bytes:
    lines = (
        json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": PATH, "body": body})
        for i, body in enumerate(bodies)
    )
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- one batch, as a client runs it


@dataclass
class BatchRun:
    label: str
    total: int
    upload_s: float = 0.0
    wall_s: float = float("nan")
    seen: dict[str, float] = field(default_factory=dict)  # status -> first seen, s after create
    body: dict[str, Any] = field(default_factory=dict)
    output: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.body.get("status", "?")

    @property
    def cost(self) -> Decimal:
        return Decimal(self.body.get("llmops", {}).get("cost_usd", "NaN"))

    def phase_s(self, status: str) -> float:
        """How long the batch was seen in `status` (to the next status seen)."""
        order = sorted(self.seen.items(), key=lambda pair: pair[1])
        for (name, at), nxt in zip(order, [*order[1:], (None, self.wall_s)], strict=True):
            if name == status:
                return nxt[1] - at
        return 0.0

    def accounted(self) -> tuple[int, int, int]:
        """(items lost, items recorded twice, items answered with an error) from the files."""
        ids = Counter(line["custom_id"] for line in self.output + self.errors)
        lost = self.total - len(ids)
        twice = sum(count - 1 for count in ids.values())
        failed = len(self.errors) + sum(
            1 for line in self.output if (line.get("response") or {}).get("status_code") != 200
        )
        return lost, twice, failed


Progress = Callable[[BatchRun, dict[str, Any], float], Awaitable[None]]


async def batch_go(
    sdk: AsyncOpenAI, port: int, key: str, content: bytes, *, label: str, total: int, poll_s: float,
    on_poll: Progress | None = None,
) -> BatchRun:  # fmt: skip
    """Upload, create, poll until the batch ended, read its files back."""
    run = BatchRun(label, total)
    started = time.perf_counter()
    uploaded = await sdk.files.create(file=(f"{label}.jsonl", content), purpose="batch")
    run.upload_s = time.perf_counter() - started
    started = time.perf_counter()
    batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=PATH, completion_window="24h")
    run.seen[batch.status] = 0.0
    poll = get_request(port, f"/v1/batches/{batch.id}", key)
    conn = HttpConnection(port)
    try:
        while True:
            status, _, raw = await conn.request(poll)
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"GET /v1/batches/{batch.id} answered HTTP {status}: {raw[:300]!r}")
            run.body = json.loads(raw)
            run.seen.setdefault(run.status, elapsed)
            if on_poll is not None:
                await on_poll(run, run.body, elapsed)
            if run.status in ENDED:
                run.wall_s = elapsed
                break
            await asyncio.sleep(poll_s)
    finally:
        conn.close()
    for file_id, into in ((run.body.get("output_file_id"), run.output), (run.body.get("error_file_id"), run.errors)):
        if file_id:
            text = (await sdk.files.content(file_id)).text
            into.extend(json.loads(line) for line in text.splitlines() if line.strip())
    return run


def done_count(body: dict[str, Any]) -> int:
    counts = body.get("request_counts") or {}
    return counts.get("completed", 0) + counts.get("failed", 0)


# ---------------------------------------------------------------- interactive requests, paced


@dataclass
class Paced(Failures):
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    def latencies_ms(self, until: float | None = None) -> list[float]:
        return [(d - s) * 1000 for s, d in zip(self.sent, self.done, strict=True) if until is None or d <= until]


async def paced_requests(
    port: int, key: str, *, count: int, rate: float, first: int, stop: asyncio.Event | None = None
) -> Paced:
    """`count` requests at `rate` per second by the clock (open loop: a slow answer does not
    delay the next send), over keep-alive connections opened beforehand."""
    result = Paced()
    pool = [HttpConnection(port) for _ in range(min(count, 32))]
    await asyncio.gather(*(conn.connect() for conn in pool))

    async def one(index: int) -> None:
        conn = pool.pop() if pool else HttpConnection(port)
        data = post_request(port, PATH, key, json.dumps(question(first + index)).encode())
        sent = time.perf_counter()
        try:
            status, _, body = await conn.request(data)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            result.fail(f"{type(exc).__name__}: {exc}")
            return
        done = time.perf_counter()
        pool.append(conn)
        problem = check_answer(status, body)
        if problem:
            result.fail(problem)
            return
        result.sent.append(sent)
        result.done.append(done)

    tasks = []
    start = time.perf_counter()
    for index in range(count):
        if stop is not None and stop.is_set():
            break
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    for conn in pool:
        conn.close()
    return result


# ---------------------------------------------------------------- the gateways


def gateway_prepare(set_up: Throwaway, args: argparse.Namespace) -> str:
    key = set_up.prepare()
    simulation = {"latency_ms": args.latency_ms, "ttft_ms": args.latency_ms, "tokens_per_s": 0, "error_rate": 0}
    max_concurrency = math.ceil(args.concurrency / BATCH_SHARE)
    set_up.script(CATALOG_SCRIPT, MODEL, str(max_concurrency), json.dumps(simulation))
    return key


def limit_s(args: argparse.Namespace, items: int) -> float:
    return items * args.latency_ms / 1000 / args.concurrency


def header_line(kind: str, gateway: Daphne, set_up_s: float) -> str:
    return machine(kind, set_up_s) + f"; daphne pid {gateway.pid} on 127.0.0.1:{gateway.port}"


async def sequential_sample(port: int, key: str, count: int) -> tuple[float, int]:
    """Mean wall time per item of `count` items sent one at a time; and the errors."""
    bodies = [post_request(port, PATH, key, json.dumps(question(i)).encode()) for i in range(count)]
    result = await run_load(port, lambda i: bodies[i], check_answer, requests=count, concurrency=1)
    return result.wall_s / max(1, result.ok), result.errors


@dataclass
class Efficiency:
    run: BatchRun
    limit_s: float
    per_item_s: float  # the sequential sample's mean wall time per item
    idle_kb: int
    peak_kb: int
    cpu_s: float

    @property
    def efficiency(self) -> float:
        return self.limit_s / self.run.wall_s

    @property
    def sequential_s(self) -> float:
        return self.per_item_s * self.run.total


async def measured_batch(
    sdk: AsyncOpenAI,
    port: int,
    key: str,
    content: bytes,
    *,
    label: str,
    args: argparse.Namespace,
    runner_pid: int,
    per_item_s: float,
    on_poll: Progress | None = None,
) -> Efficiency:
    """A batch of `args.items` items, with the memory and CPU of the process tree running it."""
    rss = PeakRss(runner_pid)
    idle_kb, cpu = rss.now_kb(), tree_cpu_s(runner_pid)
    with rss:
        run = await batch_go(
            sdk, port, key, content, label=label, total=args.items, poll_s=args.poll_s, on_poll=on_poll
        )
    cpu = tree_cpu_s(runner_pid) - cpu
    return Efficiency(run, limit_s(args, args.items), per_item_s, idle_kb, rss.peak_kb, cpu)


def sdk_for(port: int, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=600)


# ---------------------------------------------------------------- embedded: parts 1, 3 and 4


@dataclass
class EmbeddedFigures:
    alone: Efficiency
    loaded: Efficiency
    without: Paced
    during: Paced
    during_until: float  # when the polls saw the batch leave in_progress (perf_counter)
    seq_errors: int
    vmhwm_kb: int
    health: dict[str, Any]  # /healthz after part 1
    gc_before: dict[str, Any]
    seed: dict[str, Any]


async def embedded(args: argparse.Namespace) -> EmbeddedFigures:
    extra = {
        "LLMOPS_BATCH_START_WITH_SERVER": "true",  # the tests' plugin turns it off for their process
        "LLMOPS_BATCH_CONCURRENCY_SHARE": str(BATCH_SHARE),
        "LLMOPS_METRICS_FLUSH_INTERVAL_S": "0.2",
        "LLMOPS_GC_STATS": "1",  # the collector's pauses on /healthz (two clock reads per collection)
    }
    with throwaway(extra) as set_up:
        key = gateway_prepare(set_up, args)
        keys = set_up.keys(KEY_NAMES)
        gateway = set_up.daphne(backlog=1024)
        with serving(gateway):
            kind = "embedded default (SQLite, local-memory cache, batches on daphne's executor thread)"
            print(header_line(kind, gateway, set_up.elapsed_s))
            port = gateway.port
            sdk = sdk_for(port, key)
            content = jsonl([question(i) for i in range(args.items)], "item")
            per_item_s, seq_errors = await sequential_sample(port, key, args.sequential)
            gc_before = (await healthz(port)).get("gc", {})
            gc_since = time.time()
            alone = await measured_batch(
                sdk, port, key, content, label="embedded", args=args, runner_pid=gateway.pid, per_item_s=per_item_s
            )
            health = await healthz(port, f"?gc_since={gc_since:.0f}")
            vmhwm_kb = process_memory_kb(gateway.pid)[1]
            print(f"  part 1 batch: {alone.run.status} in {alone.run.wall_s:.2f} s")
            without = await paced_requests(port, key, count=args.interactive, rate=args.rate, first=10**6)
            print(f"  part 3 baseline: {len(without.sent)} interactive requests answered, no batch running")

            running, left = asyncio.Event(), asyncio.Event()
            left_at: list[float] = []

            async def on_poll(run: BatchRun, body: dict[str, Any], elapsed: float) -> None:
                if body["status"] == "in_progress":
                    running.set()
                elif running.is_set() and not left.is_set():
                    left_at.append(time.perf_counter())
                    left.set()

            async def interactive() -> Paced:
                await running.wait()
                return await paced_requests(
                    port, key, count=args.interactive, rate=args.rate, first=2 * 10**6, stop=left
                )

            loaded, during = await asyncio.gather(
                measured_batch(
                    sdk,
                    port,
                    key,
                    content,
                    label="embedded, with interactive requests",
                    args=args,
                    runner_pid=gateway.pid,
                    per_item_s=per_item_s,
                    on_poll=on_poll,
                ),
                interactive(),
            )
            print(f"  part 3 batch: {loaded.run.status} in {loaded.run.wall_s:.2f} s with interactive requests")
            await sdk.close()
            seed = await seed_workload(args, set_up.env, port, keys)
    until = left_at[0] if left_at else math.inf
    return EmbeddedFigures(alone, loaded, without, during, until, seq_errors, vmhwm_kb, health, gc_before, seed)


async def seed_workload(args: argparse.Namespace, env: dict[str, str], port: int, keys: dict[str, str]) -> dict:
    """The seed workload as one batch, once with the cache bypassed and once with the default policy."""
    distinct = round(args.seed_items * 0.4)
    texts, source = load_texts(SimpleNamespace(data=args.data, generated=True, seed=3, distinct=distinct))
    sequence = build_sequence(distinct, args.seed_items, 3)
    runs: dict[str, tuple[BatchRun, dict]] = {}
    for name in KEY_NAMES:
        extra = {"cache": {"mode": "bypass"}} if name == "seed-cache-off" else {}
        bodies = [
            {"model": MODEL, "messages": [], "prompt": PROMPT, "variables": {"text": texts[i]}, **extra}
            for i in sequence
        ]
        sdk = sdk_for(port, keys[name])
        run = await batch_go(
            sdk, port, keys[name], jsonl(bodies, "seed"), label=name, total=len(bodies), poll_s=args.poll_s
        )
        await sdk.close()
        runs[name] = (run, await metrics_of(env, name, len(bodies)))
        print(f"  part 4 {name}: {run.status} in {run.wall_s:.2f} s")
    return {"runs": runs, "distinct": distinct, "source": source}


async def metrics_of(env: dict[str, str], key_name: str, expected: int, timeout: float = 20.0) -> dict:
    """The key's QueryMetric figures, once `expected` rows were flushed (or after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = json.loads(await asyncio.to_thread(gateway_script, env, METRICS_SCRIPT, key_name))
        if found["rows"] >= expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- Celery: parts 1 and 2


@dataclass
class CeleryFigures:
    alone: Efficiency
    killed: BatchRun
    seq_errors: int
    items: dict[str, Any]  # the kill run's item rows
    metrics: dict[str, Any]  # the kill run's QueryMetric rows
    kill: dict[str, float]  # at (s after create), done (items then), ready (s after create)


async def celery(args: argparse.Namespace) -> CeleryFigures:
    extra = {
        "LLMOPS_BATCH_CONCURRENCY_SHARE": str(BATCH_SHARE),
        "LLMOPS_BATCH_LEASE_S": str(args.lease_s),
        "LLMOPS_METRICS_FLUSH_INTERVAL_S": "0.2",
    }
    with services_profile() as services, throwaway({**services, **extra}) as set_up:
        env, workdir = set_up.env, set_up.workdir
        key = gateway_prepare(set_up, args)
        kill_key = set_up.keys((KILL_KEY,))[KILL_KEY]
        gateway = set_up.daphne(backlog=1024)
        workers = [CeleryWorker(env, workdir, "bench-worker-1")]
        with serving(gateway, *workers) as running:
            kind = "celery (PostgreSQL, Redis; batches on one `celery -A llmops worker --concurrency 1`)"
            print(header_line(kind, gateway, set_up.elapsed_s) + f"; worker pid {workers[0].pid}")
            port = gateway.port
            content = jsonl([question(i) for i in range(args.items)], "item")
            per_item_s, seq_errors = await sequential_sample(port, key, args.sequential)
            sdk = sdk_for(port, key)
            alone = await measured_batch(
                sdk, port, key, content, label="celery", args=args, runner_pid=workers[0].pid, per_item_s=per_item_s
            )
            await sdk.close()
            print(f"  part 1 batch: {alone.run.status} in {alone.run.wall_s:.2f} s")

            kill: dict[str, float] = {}

            async def on_poll(run: BatchRun, body: dict[str, Any], elapsed: float) -> None:
                if "at" not in kill and done_count(body) >= args.items / 2:
                    workers[0].kill()
                    kill.update(at=elapsed, done=done_count(body))
                    workers.append(CeleryWorker(env, workdir, "bench-worker-2"))
                    running.append(workers[1])
                    workers[1].start()
                elif "at" in kill and "ready" not in kill and workers[1].ready():
                    kill["ready"] = elapsed

            sdk = sdk_for(port, kill_key)
            killed = await batch_go(
                sdk, port, kill_key, content, label="celery, killed", total=args.items, poll_s=args.poll_s,
                on_poll=on_poll,
            )  # fmt: skip
            await sdk.close()
            print(
                f"  part 2 batch: {killed.status} in {killed.wall_s:.2f} s, worker killed at {kill.get('at', 0):.2f} s"
            )
            items = json.loads(await asyncio.to_thread(gateway_script, env, ITEMS_SCRIPT, killed.body["id"]))
            metrics = await metrics_of(env, KILL_KEY, args.items, timeout=5.0)
    return CeleryFigures(alone, killed, seq_errors, items, metrics, kill)


# ---------------------------------------------------------------- the report

HEADERS = ["metric", "measured", "baseline", "ratio"]


def mib(kb: int) -> str:
    return f"{kb / 1024:,.1f}"


def efficiency_rows(name: str, figures: Efficiency, process: str) -> list[list[str]]:
    run = figures.run
    phases = [run.phase_s(status) for status in ("validating", "in_progress", "finalizing")]
    sequential, items = figures.sequential_s, run.total
    return [
        [f"{name}: wall, batch create -> completed, s", fmt(run.wall_s, 2), f"physical limit {figures.limit_s:.2f}",
         f"{figures.efficiency:.3f} = efficiency"],
        [f"{name}:   validating / in progress / finalizing (polled), s", " / ".join(f"{p:.2f}" for p in phases),
         f"in progress vs limit {figures.limit_s:.2f}", f"{figures.limit_s / phases[1]:.3f}" if phases[1] else "n/a"],
        [f"{name}: speed-up vs sequential", f"{sequential / run.wall_s:,.1f}x",
         f"sequential {sequential:,.1f} s, extrapolated ({figures.per_item_s * 1000:.1f} ms/item x {items})",
         f"{run.wall_s / sequential:.4f} = wall / seq"],
        [f"{name}: items per second", fmt(items / run.wall_s, 1), f"limit {items / figures.limit_s:,.1f}",
         ratio(figures.limit_s, run.wall_s)],
        [f"{name}: peak RSS of {process}, MiB", mib(figures.peak_kb), f"before the batch {mib(figures.idle_kb)}",
         ratio(figures.peak_kb, figures.idle_kb)],
        [f"{name}: CPU of {process}, ms/item", fmt(figures.cpu_s * 1000 / items, 3), "", ""],
        [f"{name}: the upload before it (not counted), s", fmt(run.upload_s, 2), "", ""],
    ]  # fmt: skip


def accounted_problems(run: BatchRun) -> list[str]:
    lost, twice, failed = run.accounted()
    if run.status == "completed" and not (lost or twice or failed):
        return []
    sample = (run.errors or [{}])[0]
    return [f"{run.label}: status {run.status}, lost {lost}, twice {twice}, failed {failed}; e.g. {sample}"]


def report_efficiency(
    args: argparse.Namespace, emb: EmbeddedFigures, cel: CeleryFigures | None, skipped: str
) -> list[str]:
    share = (
        f"max_concurrency {math.ceil(args.concurrency / BATCH_SHARE)} x LLMOPS_BATCH_CONCURRENCY_SHARE {BATCH_SHARE}"
    )
    print(
        f"\nPart 1: efficiency. {args.items} items, {MODEL} {args.latency_ms} ms per call, {args.concurrency} batch "
        f"slots ({share}, the default), cache bypassed; physical limit = items x latency / slots"
    )
    gc_after = emb.health.get("gc", {})
    before = emb.gc_before.get("collections", [0, 0, 0])
    collections = [a - b for a, b in zip(gc_after.get("collections", [0, 0, 0]), before, strict=True)]
    paused = gc_after.get("pause_total_ms", 0) - emb.gc_before.get("pause_total_ms", 0)
    rows = efficiency_rows("embedded", emb.alone, "the daphne process")
    rows += [
        ["embedded: upstream calls in flight, peak (/healthz)", str(emb.health.get("upstream_in_flight_peak")),
         f"batch slots {args.concurrency}", ratio(emb.health.get("upstream_in_flight_peak"), args.concurrency)],
        ["embedded: daphne's GC during the batch (gen 0/1/2)", "/".join(map(str, collections)) + " collections",
         f"paused {paused:,.0f} ms in all, longest {gc_after.get('longest_pause_ms_since', float('nan')):,.1f} ms", ""],
        ["embedded: daphne VmHWM (its peak since start), MiB", mib(emb.vmhwm_kb), "", ""],
    ]  # fmt: skip
    if cel is not None:
        rows += efficiency_rows("celery", cel.alone, "the worker's process tree")
    print(table(HEADERS, rows))
    goals = [f"embedded {emb.alone.efficiency:.3f}"] + ([f"celery {cel.alone.efficiency:.3f}"] if cel else [])
    print(f"goal: efficiency >= 0.95; measured {', '.join(goals)}. Polls every {args.poll_s:g} s; the sequential "
          f"baseline is {args.sequential} of the same items sent one at a time on the same gateway.")  # fmt: skip
    if cel is None:
        print(f"celery: skipped ({skipped})")
    problems = accounted_problems(emb.alone.run) + accounted_problems(emb.loaded.run)
    problems += accounted_problems(cel.alone.run) if cel is not None else []
    if emb.seq_errors or (cel is not None and cel.seq_errors):
        problems.append("the sequential sample had errors")
    return problems


def report_kill(args: argparse.Namespace, cel: CeleryFigures | None, skipped: str) -> list[str]:
    print("\nPart 2: a worker killed halfway (Celery)")
    if cel is None:
        print(f"skipped ({skipped})")
        return []
    lost, twice, failed = cel.killed.accounted()
    wall, base = cel.killed.wall_s, cel.alone.run.wall_s
    kill, items = cel.kill, cel.items
    rows = [
        ["items lost (total - distinct custom_ids in the output + error files)", str(lost), "must be 0", ""],
        ["items recorded twice (custom_ids seen more than once)", str(twice), "must be 0", ""],
        ["items answered with an error", str(failed), "", ""],
        ["items asked again (rows with attempts > 1)", str(items["asked_again"]), f"of {args.items} items",
         fmt(items["asked_again"] / args.items, 4)],
        ["attempts per item: count", json.dumps(items["by_attempts"]), "", ""],
        ["wall, batch create -> completed, s", fmt(wall, 2), f"uninterrupted {base:.2f}", ratio(wall, base)],
        ["extra wall time, s", f"{wall - base:+.2f}", "", ""],
        ["killed at, s after create (items done then)", f"{kill.get('at', math.nan):.2f} ({kill.get('done', 0):.0f})",
         "", ""],
        ["new worker ready, s after the kill (its log, as polls saw it)", fmt(kill.get("ready", math.nan) -
         kill.get("at", math.nan), 2), "", ""],
        ["QueryMetric rows recorded for the kill run's key", str(cel.metrics["rows"]), f"items {args.items}",
         ratio(cel.metrics["rows"], args.items)],
    ]  # fmt: skip
    print(table(HEADERS, rows))
    print(
        "SIGKILL to the worker's whole process group (main process and pool child), a new worker started at once; "
        f"LLMOPS_BATCH_LEASE_S={args.lease_s:g} in both Celery runs (default 60). A killed worker's metric rows not "
        "yet flushed (every 0.2 s here) die with it."
    )
    if "at" not in kill:
        return ["kill run: the polls never saw the batch half done with items still open: no worker was killed"]
    if lost or twice or failed or cel.killed.status != "completed" or items["rows"] != args.items:
        return [f"kill run: status {cel.killed.status}, lost {lost}, twice {twice}, failed {failed}"]
    return []


def report_interactive(args: argparse.Namespace, emb: EmbeddedFigures) -> list[str]:
    print(f"\nPart 3: interactive latency on the embedded default, {MODEL}, cache bypassed")
    base = emb.without.latencies_ms()
    during = emb.during.latencies_ms(until=emb.during_until)
    rows = []
    for q in (50, 95, 99):
        value, reference = percentile(during, q), percentile(base, q)
        rows.append([f"p{q} latency, ms", fmt(value, 1), f"no batch {fmt(reference, 1)}", ratio(value, reference)])
    rows.append(["requests answered", f"{len(during)} during the batch", f"{len(base)} with no batch", ""])
    rows += efficiency_rows("the batch meanwhile", emb.loaded, "the daphne process")[:2]
    print(table(HEADERS, rows))
    p95 = ratio(percentile(during, 95), percentile(base, 95))
    print(f"{args.interactive} requests at {args.rate:g}/s in each run (open loop, by the clock); during = sent while "
          f"the batch of {args.items} items was in progress and answered before the polls saw it leave; "
          f"goal p95 <= 1.10x: {p95}")  # fmt: skip
    if emb.without.errors or emb.during.errors:
        sample = emb.without.error_sample or emb.during.error_sample
        return [f"interactive requests failed: {emb.without.errors} + {emb.during.errors}, e.g. {sample}"]
    return []


def report_seed(args: argparse.Namespace, emb: EmbeddedFigures) -> list[str]:
    seed = emb.seed
    (off, off_m), (on, on_m) = seed["runs"]["seed-cache-off"], seed["runs"]["seed-cache-on"]
    n, distinct = args.seed_items, seed["distinct"]
    print(
        f"\nPart 4: the seed workload as one batch on the embedded default: {n} sentiment classifications (prompt "
        f"{PROMPT!r}, {MODEL} {args.latency_ms} ms), {distinct} distinct texts, {n - distinct} exact repeats"
    )
    print(f"texts: {seed['source']}")

    def calls(found: dict) -> int:
        return found["by_status"].get("miss", 0) + found["by_status"].get("bypass", 0)

    rows = [
        ["provider calls (QueryMetric rows: miss + bypass)", str(calls(on_m)), f"cache off {calls(off_m)}",
         ratio(calls(on_m), calls(off_m))],
        ["upstream attempts (in QueryMetric.attempts)", str(on_m["attempts"]), f"cache off {off_m['attempts']}",
         ratio(on_m["attempts"], off_m["attempts"])],
        ["answered from the cache (QueryMetric rows: hit)", str(on_m["by_status"].get("hit", 0)),
         f"cache off {off_m['by_status'].get('hit', 0)}", ""],
        ["cost, USD (the batch's llmops.cost_usd)", f"{on.cost:.8f}", f"cache off {off.cost:.8f}",
         ratio(float(on.cost), float(off.cost))],
        ["wall, batch create -> completed, s", fmt(on.wall_s, 2), f"cache off {off.wall_s:.2f}",
         ratio(on.wall_s, off.wall_s)],
    ]  # fmt: skip
    print(table(HEADERS, rows))
    print(f"cache on = the seeded default policy (exact, per key); the fewest calls possible are the distinct texts "
          f"({distinct}, {distinct / n:.2f}x). QueryMetric rows: {off_m['rows']} off, {on_m['rows']} on.")  # fmt: skip
    problems = accounted_problems(off) + accounted_problems(on)
    if off_m["rows"] != n or on_m["rows"] != n:
        problems.append(f"QueryMetric rows: {off_m['rows']} off, {on_m['rows']} on, for {n} items each")
    if calls(off_m) != n or calls(on_m) < distinct:
        problems.append(f"provider calls: {calls(off_m)} with the cache off (want {n}), {calls(on_m)} on")
    return problems


async def run(args: argparse.Namespace) -> int:
    raise_open_files(4096)
    started = time.perf_counter()
    emb = await embedded(args)
    skipped = "--skip-celery" if args.skip_celery else services_unreachable()
    cel = None
    if skipped:
        print(f"celery: figures skipped ({skipped})")
    else:
        cel = await celery(args)
    problems = report_efficiency(args, emb, cel, skipped or "")
    problems += report_kill(args, cel, skipped or "")
    problems += report_interactive(args, emb)
    problems += report_seed(args, emb)
    print()
    for problem in problems:
        print(f"!! {problem}")
    print(
        "Checks: every batch completed, every item answered once (none lost, none twice), every interactive request "
        "answered, the cache-off run called the model for every item" + (": FAILED." if problems else ": all passed.")
    )
    print(f"(the whole run took {time.perf_counter() - started:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")  # fmt: skip
    return 1 if problems else 0


main = command(run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
