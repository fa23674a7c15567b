"""The metric path at scale: filling, writing and reading per-minute, hour and day rollups
against the raw QueryMetric rows, on the database DATABASE_URL names.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmops_bench \\
        .venv/bin/python -m benchmarks.metrics_scale [--rows 1000000,10000000] [--tiny]

It DELETES every row of the metric tables (QueryMetric, MetricSeries, MetricRollup)
of that database: it refuses unless the database's name contains "bench"
or --yes is given. Without --tiny it needs PostgreSQL, and says so and exits 0 elsewhere
(`make bench` on the embedded SQLite default); --tiny (20,000 rows, a few runs) runs on any
database, SQLite included, as a quick check.

For each size N of --rows:

1. Fill: the database is migrated, the metric tables emptied, and N synthetic requests spread
   over the 8 days ending now (a diurnal curve, quieter weekends) are written: the raw rows
   with COPY (PostgreSQL; bulk_create elsewhere), and their rollups with the writer's own
   `monitoring.rollups.rollups_add` on the same row dicts, chunk by chunk in the rows'
   transaction, so the rollups are exactly what the writer would have made. Then VACUUM
   ANALYZE (ANALYZE on SQLite). The workload's cardinality is printed first.
2. Reads: `metrics_summary`, `metrics_timeseries` and `metrics_models` over a 24-hour and a
   7-day window ending now, unfiltered, for one model and for one API key: median and max of
   --runs runs after a warm-up, each beside the exact equivalent over the raw rows in SQL
   (count, sums and percentile_cont(...) WITHIN GROUP (ORDER BY latency_ms) over the window;
   grouped by hour or by model for the other two), with the ratio rollups / raw, and the
   target: under 100 ms at 1 million rows, under 300 ms at 10 million.
3. Accuracy: for the same windows and filters, the bucketed p50/p95/p99 latency and p50/p95
   time to first token of `metrics_summary` against the exact percentile_disc (the nearest
   rank, as the buckets define a percentile; percentile_cont printed beside it) over the raw
   rows with status ok, as relative error (target under 2%); and whether the counts, tokens
   and cost of the rollups equal the raw rows' exactly.
4. Writes: the writer's own `monitoring.recorder._write(batch)` (rows and rollups in one
   transaction) over --write-rows fresh rows in batches of LLMOPS_METRICS_BATCH_SIZE,
   alternating round by round with the same call under LLMOPS_METRICS_ROLLUPS=False (the
   rows alone): rows per second of each and the ratio. These rows are deleted afterwards
   (they are a series of their own: endpoint "bench.write").

A read that misses its target gets the EXPLAIN (ANALYZE, BUFFERS) of its slowest SQL
statement printed after the table (PostgreSQL). --reuse keeps a database that already holds
exactly N rows from an earlier run (to re-time after a change, such as an index made by
hand). The exit code is 0 unless a check of exactness fails.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from bisect import bisect
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from benchmarks.harness.command import options
from benchmarks.harness.figures import fmt, table

DAY = 86400
SPAN_DAYS = 8
TINY_ROWS = 20_000
TARGETS_MS = ((1_000_000, 100.0), (10_000_000, 300.0))  # rows up to -> target
PERCENTILE_TARGET = 0.02

# name, provider, median latency ms, its lognormal sigma, median TTFT ms, $ per 1M input, per 1M output tokens
MODELS = (
    ("gpt-4o", "openai", 1800.0, 0.55, 420.0, 2.50, 10.00),
    ("gpt-4o-mini", "openai", 950.0, 0.50, 280.0, 0.15, 0.60),
    ("claude-sonnet-4", "anthropic", 2600.0, 0.50, 650.0, 3.00, 15.00),
    ("claude-haiku-3.5", "anthropic", 1100.0, 0.45, 330.0, 0.80, 4.00),
    ("llama-3.1-70b", "openai", 1500.0, 0.60, 240.0, 0.60, 0.60),  # an OpenAI-compatible server
    ("llama-3.1-8b", "openai", 420.0, 0.50, 110.0, 0.05, 0.08),
    ("smollm2-135m", "local", 260.0, 0.40, 55.0, 0.0, 0.0),
    ("sim-small", "simulated", 60.0, 0.30, 12.0, 0.0, 0.0),
)
# A route's options and their shares; "triage" is a cascade (cheap model first, escalating).
ROUTES = {
    "support": (("gpt-4o-mini", 0.7), ("gpt-4o", 0.3)),
    "code": (("claude-sonnet-4", 0.6), ("llama-3.1-70b", 0.4)),
    "triage": (("cascade:triage", 1.0),),
}
CASCADE_STEPS = ("llama-3.1-8b", "gpt-4o-mini")
ESCALATED = 0.25  # share of cascade answers that went on to the second step
PROMPTS = ("support-reply@3", "summarize@2")
# Cache results of successful requests, and the share of each.
CACHE = (("hit", 0.12), ("semantic_hit", 0.05), ("miss", 0.73), ("bypass", 0.10))
# Errors: type, HTTP status, share of all requests, median latency ms.
ERRORS = (
    ("rate_limit_exceeded", 429, 0.012, 25.0),
    ("upstream_error", 502, 0.009, 1400.0),
    ("upstream_timeout", 504, 0.005, 30000.0),
    ("invalid_request_error", 400, 0.004, 8.0),
)
CANCELLED = 0.005
STREAMS = 0.5
KEYS = 25
KEY_NAME = "metrics-scale-{:02d}"
WRITE_ENDPOINT = "bench.write"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("metrics_scale", __doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="sizes to fill and measure (1000000,10000000)")
    parser.add_argument(
        "--tiny", action="store_true", help=f"a quick check: {TINY_ROWS:,} rows, few runs, any database"
    )
    parser.add_argument("--yes", action="store_true", help="run even if the database's name lacks 'bench'")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each read after a warm-up (7)")
    parser.add_argument("--raw-runs", type=int, default=5, help="timed runs of each raw-row baseline (5)")
    parser.add_argument("--chunk", type=int, default=200_000, help="rows per fill transaction (200000)")
    parser.add_argument("--workers", type=int, default=0, help="fill processes (2 on PostgreSQL, 1 elsewhere)")
    parser.add_argument("--write-rows", type=int, default=50_000, help="rows for each write mode (50000)")
    parser.add_argument("--write-rate", type=float, default=500.0, help="requests/s the written rows' times show")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--reuse", action="store_true", help="keep a database already holding exactly N rows")
    parser.add_argument("--no-explain", action="store_true", help="no EXPLAIN ANALYZE of a read that misses")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes = [TINY_ROWS]
        args.runs, args.raw_runs = min(args.runs, 3), min(args.raw_runs, 2)
        args.write_rows = min(args.write_rows, 2_000)
    else:
        try:
            args.sizes = [int(part.replace("_", "")) for part in args.rows.split(",") if part.strip()]
        except ValueError:
            parser.error("--rows takes sizes separated by commas, like 1000000,10000000")
    if not args.sizes or min(args.sizes) < 1000:
        parser.error("--rows: each size must be at least 1000")
    if min(args.runs, args.raw_runs, args.chunk, args.write_rows) < 1 or args.write_rate <= 0 or args.workers < 0:
        parser.error("--runs, --raw-runs, --chunk, --write-rows and --write-rate must be positive")
    return args


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    os.environ["DEBUG"] = "false"  # DEBUG would keep every query in memory
    os.environ.setdefault("LLMOPS_ALLOW_INSECURE_SECRET_KEY", "true")  # nothing is served
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["LLMOPS_METRICS_FLUSH_INTERVAL_S"] = "0"  # no writer thread: this process writes itself
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


# ---------------------------------------------------------------------------------------
# The workload


@dataclass(slots=True)
class Model:
    name: str
    provider: str
    latency_ms: float
    sigma: float
    ttft_ms: float
    price_in: int  # 1e-10 dollars per token
    price_out: int
    attempts: list[dict[str, Any]] = field(default_factory=list)  # one answer attempt
    escalated: list[dict[str, Any]] = field(default_factory=list)  # a cascade's two (on the last step)
    failed: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Profile:
    """Who asks for what: a key naming a model or a route, maybe through a prompt, on an endpoint."""

    api_key_id: int
    named: str  # the model field: a model, or route:<name>
    route: str
    prompt: str
    endpoint: str
    options: list[tuple[float, str]]  # cumulative share -> option
    streams: bool


class Workload:
    """Synthetic requests with the cardinality of a busy shared gateway; `fill(row, ts)`
    overwrites a row dict in place (the dicts are reused chunk after chunk)."""

    def __init__(self, key_ids: list[int], seed: int, stream: int = 0) -> None:
        setup = random.Random(seed)  # the same profiles in every worker
        self.rng = random.Random(seed * 1000 + 1 + stream)  # different requests
        self.models = {
            name: Model(name, provider, latency, sigma, ttft, round(price_in * 1e4), round(price_out * 1e4))
            for name, provider, latency, sigma, ttft, price_in, price_out in MODELS
        }
        for model in self.models.values():
            model.attempts = [{"model": model.name, "outcome": "ok", "latency_ms": model.latency_ms, "status": 200}]
            model.failed = [{"model": model.name, "outcome": "error", "latency_ms": model.latency_ms, "status": 502}]
        first, last = (self.models[name] for name in CASCADE_STEPS)
        self.cascade_once = [{**first.attempts[0], "score": 0.8}]
        self.cascade_twice = [{**first.attempts[0], "score": 0.4}, {**last.attempts[0], "score": 0.9}]
        self.json_of: dict[int, str] = {}
        for attempts in [m.attempts for m in self.models.values()] + [m.failed for m in self.models.values()]:
            self._json(attempts)
        self._json(self.cascade_once)
        self._json(self.cascade_twice)
        self.no_attempts: list[dict[str, Any]] = []
        self._json(self.no_attempts)
        names = [m[0] for m in MODELS]
        weighted: list[tuple[float, Profile]] = []
        self.key_models: dict[int, list[str]] = {}
        self.key_routes: dict[int, str] = {}
        for index, key_id in enumerate(key_ids):
            key_share = 1 / (index + 1) ** 0.8  # a few busy keys, a long tail
            models = setup.sample(names, 2 + (index % 2))  # 2 or 3 models each
            targets = [(model, setup.uniform(1, 3)) for model in models]
            if index % 5 < 2:  # 10 of the 25 keys also go through a route
                route = list(ROUTES)[index % 3]
                targets.append((f"route:{route}", 2.0))
                self.key_routes[key_id] = route
            self.key_models[key_id] = models
            prompt_share = 0.5 if index % 5 in (1, 3) else 0.0  # 10 keys use prompt templates for half
            batch_share = 0.2 if index % 6 == 0 else 0.0  # 5 keys send batches too
            total = sum(w for _, w in targets)
            for target, w in targets:
                route = target.removeprefix("route:") if target.startswith("route:") else ""
                if route:
                    cumulative, options = 0.0, []
                    for option, share in ROUTES[route]:
                        cumulative += share
                        options.append((cumulative, option))
                else:
                    options = [(1.0, target)]
                prompts = [("", 1 - prompt_share)] + [(p, prompt_share / 2) for p in PROMPTS if prompt_share]
                for prompt, p_share in prompts:
                    for endpoint, e_share in (("chat.completions", 1 - batch_share), ("batch", batch_share)):
                        if e_share:
                            share = key_share * w / total * p_share * e_share
                            profile = Profile(key_id, target, route, prompt, endpoint, options, endpoint != "batch")
                            weighted.append((share, profile))
        self.profiles = [p for _, p in weighted]
        total = sum(s for s, _ in weighted)
        self.cumulative: list[float] = []
        running = 0.0
        for share, _ in weighted:
            running += share / total
            self.cumulative.append(running)
        # O(1) picks: 65,536 slots filled in proportion to the shares.
        self.pick = [
            self.profiles[min(bisect(self.cumulative, (i + 0.5) / 65536), len(self.profiles) - 1)] for i in range(65536)
        ]
        error_cut, self.error_cuts = 0.0, []
        for error_type, status, share, latency in ERRORS:
            error_cut += share
            self.error_cuts.append((error_cut, error_type, status, latency))
        self.error_share = error_cut
        cache_cut, self.cache_cuts = 0.0, []
        for status, share in CACHE:
            cache_cut += share
            self.cache_cuts.append((cache_cut, status))
        self.zero = Decimal(0)

    def _json(self, attempts: list[dict[str, Any]]) -> None:
        import json

        self.json_of[id(attempts)] = json.dumps(attempts)

    def describe(self) -> list[str]:
        routes = ", ".join(
            f"{name} ({' / '.join(f'{o} {s:.0%}' for o, s in options)})" for name, options in ROUTES.items()
        )
        per_key = sorted(len(models) for models in self.key_models.values())
        return [
            f"{len(MODELS)} models: "
            + ", ".join(f"{m[0]} ({m[1]}, median {m[2]:.0f} ms, sigma {m[3]})" for m in MODELS),
            f"{KEYS} API keys using {per_key[0]}-{per_key[-1]} models each, {len(self.key_routes)} of them also "
            f"through a route; traffic per key ~ 1/rank^0.8 (the busiest key sends "
            f"{self._key_share(0):.0%}); 10 keys use prompt templates for half their requests, 5 send batches too",
            f"{len(ROUTES)} routes plus none: {routes}; the cascade escalates {ESCALATED:.0%} of its answers "
            "and every cascade answer has a quality score",
            f"{len(PROMPTS)} prompts plus none ({', '.join(PROMPTS)}); endpoints chat.completions and batch",
            "cache results of successful requests: " + ", ".join(f"{s} {share:.0%}" for s, share in CACHE),
            f"errors {self.error_share:.1%} of requests: "
            + ", ".join(f"{t} (HTTP {st}) {sh:.1%}" for t, st, sh, _ in ERRORS)
            + f"; cancelled {CANCELLED:.1%}",
            f"{STREAMS:.0%} of chat requests stream, with a time to first token; latencies lognormal per model; "
            "tokens lognormal (input median 600, output 180); costs from per-model prices",
            f"load: {SPAN_DAYS} days ending now, diurnal (peak 15:00 UTC, trough 03:00 at 35% of it), weekends at 60%",
            f"{len(self.profiles)} (key, model or route, prompt, endpoint) profiles",
        ]

    def _key_share(self, index: int) -> float:
        shares = [1 / (i + 1) ** 0.8 for i in range(KEYS)]
        return shares[index] / sum(shares)

    def fill(self, row: dict[str, Any], ts: float, request_id: str) -> None:
        rng = self.rng
        rand, gauss = rng.random, rng.gauss
        profile = self.pick[rng.getrandbits(16)]
        options = profile.options
        if len(options) == 1:
            option = options[0][1]
        else:
            u = rand()
            option = next(name for cut, name in options if u < cut)
        cascade = option.startswith("cascade:")
        stream = profile.streams and rand() < STREAMS
        u = rand()
        escalated = False
        if cascade:
            escalated = rand() < ESCALATED
            model = self.models[CASCADE_STEPS[1] if escalated else CASCADE_STEPS[0]]
        else:
            model = self.models[option]
        row["request_id"] = request_id
        row["created_at"] = datetime.fromtimestamp(ts, UTC)
        row["api_key_id"] = profile.api_key_id
        row["endpoint"] = profile.endpoint
        row["model"] = profile.named
        row["route"] = profile.route
        row["option"] = option
        row["provider"] = model.provider
        row["prompt"] = profile.prompt
        row["stream"] = stream
        row["cache_write_tokens"] = 0
        row["quality_score"] = None
        row["cascade_steps"] = 0
        row["ttft_ms"] = None
        row["cost_saved_usd"] = self.zero
        if u < self.error_share:
            error_type, status, latency = next((t, s, lat) for cut, t, s, lat in self.error_cuts if u < cut)
            row["status"] = "error"
            row["http_status"] = status
            row["error_type"] = error_type
            row["error_message"] = "The upstream failed." if status >= 500 else "Refused."
            row["latency_ms"] = latency * math.exp(0.3 * gauss(0.0, 1.0))
            row["answered_by"] = ""
            row["attempts"] = model.failed if status >= 500 else self.no_attempts
            row["cascade_steps"] = 2 if cascade and status >= 500 else 0  # a failed step escalates
            row["input_tokens"] = 0
            row["output_tokens"] = 0
            row["cached_tokens"] = 0
            row["cost_usd"] = self.zero
            row["cache_status"] = "bypass" if rand() < 0.1 else "miss"
            return
        input_tokens = int(600 * math.exp(0.9 * gauss(0.0, 1.0))) + 1
        output_tokens = int(180 * math.exp(0.8 * gauss(0.0, 1.0))) + 1
        cached = 0
        if profile.prompt and model.provider in ("openai", "anthropic") and rand() < 0.6:
            cached = input_tokens * 3 // 4
        units = (
            (input_tokens - cached) * model.price_in + cached * model.price_in // 10 + output_tokens * model.price_out
        )
        latency = model.latency_ms * math.exp(model.sigma * gauss(0.0, 1.0))
        ttft = model.ttft_ms * math.exp(0.5 * gauss(0.0, 1.0)) if stream else None
        if escalated:
            first = self.models[CASCADE_STEPS[0]]
            latency += first.latency_ms * math.exp(first.sigma * gauss(0.0, 1.0))
        if ttft is not None and ttft > latency:
            latency = ttft * 1.05
        u2 = rand()
        if u2 < CANCELLED:
            row["status"] = "cancelled"
            row["cascade_steps"] = 1 if cascade else 0
            row["http_status"] = 499
            row["error_type"] = ""
            row["error_message"] = ""
            row["latency_ms"] = latency * rand()
            row["answered_by"] = ""
            row["attempts"] = self.no_attempts
            row["input_tokens"] = input_tokens
            row["output_tokens"] = 0
            row["cached_tokens"] = 0
            row["cost_usd"] = self.zero
            row["cache_status"] = "miss"
            return
        cost = Decimal(units).scaleb(-10) if units else self.zero
        c = rand()
        cache_status = next(name for cut, name in self.cache_cuts if c < cut)
        row["status"] = "ok"
        row["http_status"] = 200
        row["error_type"] = ""
        row["error_message"] = ""
        row["answered_by"] = model.name
        row["input_tokens"] = input_tokens
        row["output_tokens"] = output_tokens
        row["cached_tokens"] = cached
        row["cache_status"] = cache_status
        if cache_status in ("hit", "semantic_hit"):
            latency = (4.0 if cache_status == "hit" else 25.0) * math.exp(0.5 * gauss(0.0, 1.0))
            row["latency_ms"] = latency
            row["ttft_ms"] = latency * 0.6 if stream else None
            row["cost_usd"] = self.zero
            row["cost_saved_usd"] = cost
            row["attempts"] = self.no_attempts
            row["cached_tokens"] = 0
            return
        row["latency_ms"] = latency
        row["ttft_ms"] = ttft
        row["cost_usd"] = cost
        if cascade:
            row["cascade_steps"] = 2 if escalated else 1
            row["attempts"] = self.cascade_twice if escalated else self.cascade_once
            row["quality_score"] = 0.7 + 0.3 * rand() if escalated else 0.55 + 0.45 * rand()
        else:
            row["attempts"] = model.attempts
        if profile.prompt and model.provider == "anthropic" and not cached and rand() < 0.2:
            row["cache_write_tokens"] = input_tokens * 3 // 4


def diurnal_weight(ts: float) -> float:
    moment = datetime.fromtimestamp(ts, UTC)
    hour = moment.hour + moment.minute / 60
    curve = 0.35 + 0.65 * (0.5 - 0.5 * math.cos(2 * math.pi * (hour - 3) / 24))
    return curve * (0.6 if moment.weekday() >= 5 else 1.0)


def minute_counts(rows: int, now: float) -> list[tuple[float, float, int]]:
    """(first second, last second, rows) per minute of the span ending `now`, in order."""
    begin = now - SPAN_DAYS * DAY
    first = begin - begin % 60
    minutes = []
    at = first
    while at < now:
        minutes.append((max(at, begin), min(at + 60, now)))
        at += 60
    weights = [diurnal_weight(a) * (b - a) for a, b in minutes]
    total = sum(weights)
    counts, cumulative, placed = [], 0.0, 0
    for (a, b), w in zip(minutes, weights, strict=True):
        cumulative += w
        upto = round(cumulative / total * rows)
        counts.append((a, b, upto - placed))
        placed = upto
    return counts


# ---------------------------------------------------------------------------------------
# Filling


@dataclass
class FillTimes:
    generate: float = 0.0  # these four: summed over the workers
    rows: float = 0.0
    rollups: float = 0.0
    commit: float = 0.0
    retries: int = 0
    workers: int = 1
    filled: float = 0.0  # wall time of the fill, then of it and VACUUM ANALYZE
    analyze: float = 0.0
    wall: float = 0.0


def metric_tables() -> list[str]:
    from monitoring.models import MetricRollup, MetricSeries, QueryMetric

    return [model._meta.db_table for model in (QueryMetric, MetricRollup, MetricSeries)]


def tables_empty() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(metric_tables())} RESTART IDENTITY")
        else:
            for name in metric_tables():
                cursor.execute(f"DELETE FROM {name}")


def metric_fields() -> list[Any]:
    """QueryMetric's columns but its id, as the model has them now."""
    from monitoring.models import QueryMetric

    return [f for f in QueryMetric._meta.concrete_fields if not f.primary_key]


def row_template() -> dict[str, Any]:
    """A row with every field at its default: the workload overwrites what it sets."""
    return {f.attname: f.get_default() for f in metric_fields()}


def rows_copy(rows: list[dict[str, Any]], json_of: dict[int, str]) -> None:
    """The raw rows: COPY on PostgreSQL (attempts as their JSON text), bulk_create elsewhere."""
    from django.db import connection

    from monitoring.models import QueryMetric

    if connection.vendor != "postgresql":
        QueryMetric.objects.bulk_create([QueryMetric(**row) for row in rows], batch_size=1000)
        return
    fields = metric_fields()
    names = [f.attname for f in fields]
    at = names.index("attempts")
    before, after = itemgetter(*names[:at]), itemgetter(*names[at + 1 :])
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    statement = f"COPY {QueryMetric._meta.db_table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        write = copy.write_row
        for r in rows:
            write((*before(r), json_of[id(r["attempts"])], *after(r)))


def fill_part(part: tuple) -> FillTimes:
    """Fill some minutes (a worker's share): rows with COPY, rollups with rollups_add, one
    transaction per chunk; a chunk that meets a deadlock (two workers making the same new
    series) is written again."""
    minutes, offset, key_ids, seed, stream, chunk = part
    django_setup()
    return _fill_minutes(minutes, offset, key_ids, seed, stream, chunk)


def _fill_minutes(minutes: list, offset: int, key_ids: list[int], seed: int, stream: int, chunk: int) -> FillTimes:
    from django.db import OperationalError, connection, transaction

    from monitoring import rollups

    workload = Workload(key_ids, seed, stream=stream)
    times = FillTimes()
    total = sum(count for _, _, count in minutes)
    template = row_template()
    pool: list[dict[str, Any]] = [dict(template) for _ in range(max(1, min(chunk, total)))]
    filled = 0
    made = offset

    def flush(batch: list[dict[str, Any]]) -> None:
        for attempt in range(20):
            at = time.perf_counter()
            try:
                with transaction.atomic():
                    if connection.vendor == "postgresql":
                        with connection.cursor() as cursor:
                            # The rows' foreign keys point at the benchmark's own keys and series: no per-row check.
                            cursor.execute("SET LOCAL session_replication_role = replica")
                    rows_copy(batch, workload.json_of)
                    copied = time.perf_counter()
                    rollups.rollups_add(batch)
                    added = time.perf_counter()
            except OperationalError as exc:
                if "deadlock" not in str(exc).lower() or attempt == 19:
                    raise
                times.retries += 1
                time.sleep(random.random() * 0.5)
                continue
            times.rows += copied - at
            times.rollups += added - copied
            times.commit += time.perf_counter() - added
            return

    rng = random.Random(seed * 7919 + stream)
    generate_started = time.perf_counter()
    for first, last, count in minutes:
        span = last - first
        for _ in range(count):
            workload.fill(pool[filled], first + rng.random() * span, f"m{made}")
            filled += 1
            made += 1
            if filled == len(pool):
                times.generate += time.perf_counter() - generate_started
                flush(pool)
                filled = 0
                generate_started = time.perf_counter()
    times.generate += time.perf_counter() - generate_started
    if filled:
        flush(pool[:filled])
    connection.close()
    return times


def parts_split(minutes: list[tuple[float, float, int]], workers: int) -> list[tuple[list, int]]:
    """Contiguous shares of about equal rows, cut at UTC midnights where one is near, so that
    no two workers add to the same minute, hour or day rollup."""
    total = sum(count for _, _, count in minutes)
    cuts = []
    running = 0
    for index, (first, _, count) in enumerate(minutes):
        if first % DAY == 0:
            cuts.append((running, index))
        running += count
    bounds = [0]
    for k in range(1, workers):
        wanted = total * k / workers
        near = min(cuts, key=lambda cut: abs(cut[0] - wanted), default=None)
        if near is not None and abs(near[0] - wanted) < total / workers / 2 and near[1] > bounds[-1]:
            bounds.append(near[1])
    bounds.append(len(minutes))
    found, offset = [], 0
    for a, b in itertools.pairwise(bounds):
        found.append((minutes[a:b], offset))
        offset += sum(count for _, _, count in minutes[a:b])
    return found


def fill(key_ids: list[int], rows: int, now: float, args: argparse.Namespace) -> FillTimes:
    from django.db import connection

    started = time.perf_counter()
    parts = parts_split(minute_counts(rows, now), args.workers)
    work = [(minutes, offset, key_ids, args.seed, stream, args.chunk) for stream, (minutes, offset) in enumerate(parts)]
    if len(work) == 1:
        results = [fill_part(work[0])]
    else:
        # Processes of their own (spawned: a forked Django connection pool would be shared).
        with multiprocessing.get_context("spawn").Pool(len(work)) as pool:
            results = pool.map(fill_part, work)
    times = FillTimes(workers=len(work))
    for found in results:
        for name in ("generate", "rows", "rollups", "commit", "retries"):
            setattr(times, name, getattr(times, name) + getattr(found, name))
    times.filled = time.perf_counter() - started
    at = time.perf_counter()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for name in metric_tables():
                cursor.execute(f"VACUUM ANALYZE {name}")
        else:
            cursor.execute("ANALYZE")
    times.analyze = time.perf_counter() - at
    times.wall = time.perf_counter() - started
    return times


def api_keys() -> list[int]:
    from llmops.auth import api_key_create
    from llmops.models import ApiKey

    ids = []
    for index in range(KEYS):
        name = KEY_NAME.format(index + 1)
        key = ApiKey.objects.filter(name=name).order_by("id").first() or api_key_create(name=name)[0]
        ids.append(key.id)
    return ids


def storage_lines() -> list[str]:
    from django.db import connection

    from monitoring.models import MetricRollup, MetricSeries, QueryMetric

    postgres = connection.vendor == "postgresql"

    def size(model: Any) -> str:
        if not postgres:
            return ""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_total_relation_size(%s)", [model._meta.db_table])
            return f", {cursor.fetchone()[0] / 2**20:,.0f} MB with indexes"

    def per_resolution(model: Any) -> str:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT resolution, COUNT(*) FROM {model._meta.db_table} GROUP BY resolution")
            found = dict(cursor.fetchall())
        return " / ".join(f"{found.get(r, 0):,}" for r in (60, 3600, 86400))

    raw = QueryMetric.objects.count()
    return [
        f"stored: {raw:,} QueryMetric rows{size(QueryMetric)}; "
        f"{MetricSeries.objects.count():,} series{size(MetricSeries)}",
        f"        MetricRollup rows minute / hour / day {per_resolution(MetricRollup)}{size(MetricRollup)}",
    ]


# ---------------------------------------------------------------------------------------
# Reads


@dataclass
class Timing:
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)


class SqlClock:
    """Time spent in database statements (sent, run, results received) while installed."""

    def __init__(self) -> None:
        self.spent = 0.0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict) -> Any:
        at = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.spent += time.perf_counter() - at


def timed(call: Any, runs: int) -> tuple[Timing, Timing, Any]:
    """(wall, of which in SQL) over `runs` calls after a warm-up, and the last result."""
    from django.db import connection

    result = call()  # the warm-up
    walls, sqls = [], []
    for _ in range(runs):
        clock = SqlClock()
        with connection.execute_wrapper(clock):
            at = time.perf_counter()
            result = call()
            walls.append((time.perf_counter() - at) * 1000)
        sqls.append(clock.spent * 1000)
    return Timing(walls), Timing(sqls), result


def exact_percentiles(values: list[float], shares: tuple[float, ...]) -> tuple[list, list]:
    """(percentile_cont, percentile_disc) of the values, for SQLite, which has neither:
    linear between the closest ranks, and the first value at or past the share (the
    nearest rank, the definition monitoring.buckets.percentiles uses)."""
    if not values:
        return [None] * len(shares), [None] * len(shares)
    values.sort()
    cont, disc = [], []
    for share in shares:
        rank = (len(values) - 1) * share
        low = int(rank)
        high = min(low + 1, len(values) - 1)
        cont.append(values[low] + (values[high] - values[low]) * (rank - low))
        disc.append(values[max(1, math.ceil(share * len(values))) - 1])
    return cont, disc


RAW_SUMS = (
    "COUNT(*)",
    "SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END)",
    "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END)",
    "SUM(input_tokens)",
    "SUM(output_tokens)",
    "SUM(cached_tokens)",
    "SUM(cost_usd)",
    "AVG(CASE WHEN status = 'ok' THEN latency_ms END)",
)
RAW_NAMES = ("requests", "ok", "errors", "input", "output", "cached", "cost", "mean")


def raw_query(window: Any, where: tuple[str, Any] | None, group: str | None) -> list[tuple]:
    """The exact figures over the raw rows: counts, sums and percentiles, in SQL."""
    from django.db import connection

    from monitoring.models import QueryMetric

    table_name = QueryMetric._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    conditions, params = ["created_at >= %s", "created_at < %s"], [adapt(window.start), adapt(window.end)]
    if where is not None:
        conditions.append(f"{where[0]} = %s")
        params.append(where[1])
    keys = {
        None: [],
        "model": ["model"],
        "hour": ["FLOOR(EXTRACT(EPOCH FROM created_at) / 3600)"]
        if connection.vendor == "postgresql"
        else ["CAST(strftime('%%s', created_at) AS INTEGER) / 3600"],
    }[group]
    select = [*keys, *RAW_SUMS]
    group_by = f" GROUP BY {', '.join(keys)}" if keys else ""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # percentile_disc beside percentile_cont: the same sort, shared by the two aggregates.
            select += [
                f"{kind}(ARRAY[{shares}]) WITHIN GROUP (ORDER BY {column}) FILTER (WHERE status = 'ok'{extra})"
                for kind in ("percentile_cont", "percentile_disc")
                for column, shares, extra in (
                    ("latency_ms", "0.5, 0.95, 0.99", ""),
                    ("ttft_ms", "0.5, 0.95", " AND ttft_ms IS NOT NULL"),
                )
            ]
            cursor.execute(
                f"SELECT {', '.join(select)} FROM {table_name} WHERE {' AND '.join(conditions)}{group_by}", params
            )
            return [tuple(row) for row in cursor.fetchall()]
        # SQLite has no percentile_cont: the same sums in SQL, the percentiles of the fetched values.
        cursor.execute(
            f"SELECT {', '.join(select)} FROM {table_name} WHERE {' AND '.join(conditions)}{group_by}", params
        )
        sums = cursor.fetchall()
        cursor.execute(
            f"SELECT {', '.join(keys) or '0'}, latency_ms, ttft_ms FROM {table_name} "
            f"WHERE {' AND '.join(conditions)} AND status = 'ok'",
            params,
        )
        latencies: dict[Any, list[float]] = {}
        ttfts: dict[Any, list[float]] = {}
        for key, latency, ttft in cursor.fetchall():
            latencies.setdefault(key, []).append(latency)
            if ttft is not None:
                ttfts.setdefault(key, []).append(ttft)
        found = []
        for row in sums:
            key = row[0] if keys else 0
            latency_cont, latency_disc = exact_percentiles(latencies.get(key, []), (0.5, 0.95, 0.99))
            ttft_cont, ttft_disc = exact_percentiles(ttfts.get(key, []), (0.5, 0.95))
            found.append((*row, latency_cont, ttft_cont, latency_disc, ttft_disc))
        return found


def target_for(rows: int) -> float:
    for upto, target in TARGETS_MS:
        if rows <= upto:
            return target
    return TARGETS_MS[-1][1]


@dataclass
class Read:
    figure: str
    window: str
    filter: str
    rollups: Timing
    sql: Timing  # the rollups' time in SQL statements
    raw: Timing
    target: float
    call: Any
    window_obj: Any
    where: Any


def reads(rows: int, args: argparse.Namespace, key_ids: list[int], workload: Workload) -> tuple[list[Read], list, int]:
    from monitoring.figures import metrics_models, metrics_summary, metrics_timeseries, series_filter
    from monitoring.windows import window_resolve

    key = key_ids[0]  # the busiest
    model = busiest_model(workload)
    filters = [
        ("none", series_filter({}, api_key_id=None), None),
        (f"model={model}", series_filter({"model": model}, api_key_id=None), ("model", model)),
        (f"api_key={key}", series_filter({"api_key": key}, api_key_id=None), ("api_key_id", key)),
    ]
    figures = ((metrics_summary, None), (metrics_timeseries, "hour"), (metrics_models, "model"))
    target = target_for(rows)
    found: list[Read] = []
    accuracy = []
    failures = 0
    for window_name in ("24h", "7d"):
        window = window_resolve(window=window_name)
        for filter_name, where, raw_where in filters:
            for call, group in figures:
                wall, sql, result = timed(lambda: call(window=window, where=where), args.runs)  # noqa: B023
                raw_t, _, raw = timed(lambda: raw_query(window, raw_where, group), args.raw_runs)  # noqa: B023
                found.append(
                    Read(call.__name__, window_name, filter_name, wall, sql, raw_t, target, call, window, where)
                )
                if group is None:
                    accuracy.append((window_name, filter_name, result, raw[0] if raw else None))
                    failures += exactness_failures(result, raw[0] if raw else None, window_name, filter_name)
    return found, accuracy, failures


def busiest_model(workload: Workload) -> str:
    shares: dict[str, float] = {}
    previous = 0.0
    for cut, profile in zip(workload.cumulative, workload.profiles, strict=True):
        if not profile.route:
            shares[profile.named] = shares.get(profile.named, 0.0) + cut - previous
        previous = cut
    return max(shares, key=shares.__getitem__)


def exactness_failures(summary: dict[str, Any], raw: tuple | None, window: str, filter_name: str) -> int:
    """The rollups' counts, tokens and cost against the raw rows': they must be equal."""
    from django.db import connection

    if raw is None:
        return 0
    values = dict(zip(RAW_NAMES, raw, strict=False))
    pairs = [
        ("requests", summary["requests"], values["requests"] or 0),
        ("ok", summary["ok"], values["ok"] or 0),
        ("errors", summary["errors"], values["errors"] or 0),
        ("input tokens", summary["tokens"]["input"], values["input"] or 0),
        ("output tokens", summary["tokens"]["output"], values["output"] or 0),
        ("cached tokens", summary["tokens"]["cached"], values["cached"] or 0),
        ("cost", Decimal(summary["cost_usd"]), Decimal(values["cost"] or 0).quantize(Decimal("1e-10"))),
    ]
    # SQLite keeps decimals as floating point: its raw cost is a float sum, equal to ~1e-9 only.
    close = Decimal("1e-9") if connection.vendor != "postgresql" else Decimal(0)
    wrong = [
        f"{name} {mine} != raw {theirs}"
        for name, mine, theirs in pairs
        if abs(Decimal(mine) - Decimal(theirs)) > close * (abs(Decimal(theirs)) + 1)
    ]
    if wrong:
        print(f"!! {window}, {filter_name}: the rollups differ from the raw rows: {'; '.join(wrong)}")
    return len(wrong)


def read_rows(found: list[Read]) -> list[list[str]]:
    rows = []
    for read in found:
        met = "met" if read.rollups.median < read.target else "NOT met"
        rows.append(
            [
                read.figure,
                read.window,
                read.filter,
                fmt(read.rollups.median, 1),
                fmt(read.rollups.max, 1),
                fmt(read.sql.median, 1),
                fmt(read.raw.median, 1),
                fmt(read.raw.max, 1),
                f"{read.rollups.median / read.raw.median:.3f}x" if read.raw.median else "n/a",
                f"< {read.target:.0f} ms {met}",
            ]
        )
    return rows


def accuracy_rows(accuracy: list) -> tuple[list[list[str]], float]:
    rows, worst = [], 0.0
    for window, filter_name, summary, raw in accuracy:
        if raw is None:
            continue
        cont_latency, cont_ttft, disc_latency, disc_ttft = (list(v or [None] * 3) for v in raw[-4:])
        pairs = [
            ("latency p50", summary["latency_ms"]["p50"], disc_latency[0], cont_latency[0]),
            ("latency p95", summary["latency_ms"]["p95"], disc_latency[1], cont_latency[1]),
            ("latency p99", summary["latency_ms"]["p99"], disc_latency[2], cont_latency[2]),
            ("TTFT p50", summary["ttft_ms"]["p50"], disc_ttft[0], cont_ttft[0]),
            ("TTFT p95", summary["ttft_ms"]["p95"], disc_ttft[1], cont_ttft[1]),
        ]
        for name, bucketed, exact, cont in pairs:
            if bucketed is None or not exact:
                continue
            error = abs(bucketed - exact) / exact
            worst = max(worst, error)
            met = "met" if error < PERCENTILE_TARGET else "NOT met"
            cont_error = f"{abs(bucketed - cont) / cont:.2%}" if cont else "n/a"
            rows.append(
                [window, filter_name, name, fmt(bucketed, 2), fmt(exact, 2), f"{error:.2%}", f"< 2% {met}",
                 fmt(cont, 2), cont_error]
            )  # fmt: skip
    return rows, worst


def explain(read: Read) -> list[str]:
    """The SQL statements a read runs, with their times, and the EXPLAIN (ANALYZE, BUFFERS)
    of the slowest."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring import figures

    at = time.perf_counter()
    with CaptureQueriesContext(connection) as captured:
        read.call(window=read.window_obj, where=read.where)
    wall = (time.perf_counter() - at) * 1000
    statements = captured.captured_queries
    in_sql = sum(float(q["time"]) for q in statements) * 1000
    lines = [
        f"EXPLAIN of the slowest read that missed: {read.figure}, {read.window}, {read.filter}: {wall:.0f} ms, "
        f"{in_sql:.0f} ms of it in {len(statements)} SQL statements (the rest: Python over their rows)"
    ]
    for query in statements:
        lines.append(f"  {float(query['time']) * 1000:8.1f} ms  {query['sql'][:400]}")
    slowest = max(statements, key=lambda q: float(q["time"]))
    # Under the settings the read runs with (monitoring.figures: no JIT, its work_mem).
    with figures.reading(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
        lines += ["  plan of the slowest:", *("    " + row[0] for row in cursor.fetchall())]
    return lines


# ---------------------------------------------------------------------------------------
# Writes


@dataclass
class Writes:
    with_rollups: float  # rows/s
    rows_only: float
    batch: int
    cpu_with_rollups: float  # this process's CPU, ms per row
    cpu_rows_only: float


def writes(workload: Workload, args: argparse.Namespace) -> Writes:
    """Rows per second through `_write` with rollups and without (rows only), alternating."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import override_settings

    from monitoring import recorder
    from monitoring.models import MetricRollup, MetricSeries, QueryMetric

    size = settings.LLMOPS_METRICS_BATCH_SIZE
    rounds = 5 if args.write_rows >= 5 * size else 1
    per_round = max(size, args.write_rows // rounds)
    warmup = min(args.write_rows, 4 * size)
    # The rows are timed in a day of their own, the day after tomorrow (UTC), which no read
    # window reaches and nothing else has rollups in: taking them away again is deleting
    # that day's rollups (of every cube: the written rows add to the shared ones too).
    now = time.time()
    earliest = now - now % DAY + 2 * DAY
    made = [0]

    def batches(count: int, start: float) -> list[list[dict[str, Any]]]:
        found = []
        for first in range(0, count, size):
            batch = []
            for i in range(first, min(count, first + size)):
                row: dict[str, Any] = {}
                workload.fill(row, start + i / args.write_rate, f"w{made[0]}")
                row["endpoint"] = WRITE_ENDPOINT
                made[0] += 1
                batch.append(row)
            found.append(batch)
        return found

    cpu = {True: 0.0, False: 0.0}

    def write(prepared: list[list[dict[str, Any]]], rollups: bool) -> float:
        with override_settings(LLMOPS_METRICS_ROLLUPS=rollups):
            at, cpu_at = time.perf_counter(), time.process_time()
            for batch in prepared:
                recorder._write(batch)
            cpu[rollups] += time.process_time() - cpu_at
            return time.perf_counter() - at

    # Warm-up (not timed): the series of these rows are made once, as a running writer's are.
    write(batches(warmup, earliest), True)
    spent = {True: 0.0, False: 0.0}
    rows = {True: 0, False: 0}
    start = earliest + warmup / args.write_rate
    for _ in range(rounds):
        for rollups in (True, False):
            prepared = batches(per_round, start)
            start += per_round / args.write_rate
            spent[rollups] += write(prepared, rollups)
            rows[rollups] += per_round
    # Take the written rows and their series away again: the filled data stays as it was.
    since = connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(earliest, UTC))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {MetricRollup._meta.db_table} WHERE start >= %s", [since])
        for model in (MetricSeries, QueryMetric):
            cursor.execute(f"DELETE FROM {model._meta.db_table} WHERE endpoint = %s", [WRITE_ENDPOINT])
    return Writes(rows[True] / spent[True], rows[False] / spent[False], size,
                  cpu[True] * 1000 / rows[True], cpu[False] * 1000 / rows[False])  # fmt: skip


# ---------------------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def database_name() -> tuple[str, str]:
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "postgresql":
        where = f"{settings_dict.get('HOST') or 'local socket'}:{settings_dict.get('PORT') or 5432}"
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        return str(settings_dict["NAME"]), f"PostgreSQL {version} at {where}/{settings_dict['NAME']}"
    return str(settings_dict["NAME"]), f"{connection.vendor} {settings_dict['NAME']}"


def run_size(rows: int, args: argparse.Namespace, key_ids: list[int]) -> int:
    from django.db import connection

    from monitoring.models import QueryMetric

    workload = Workload(key_ids, args.seed)
    print(f"=== {rows:,} rows === (load average {load_average()})")
    existing = QueryMetric.objects.count() if args.reuse else -1
    if existing == rows:
        print(f"fill: kept the {rows:,} rows already there (--reuse)")
        # The rows' generator state must match the reads' busiest model only; nothing else depends on it.
    else:
        tables_empty()
        now = time.time()
        times = fill(key_ids, rows, now, args)
        postgres = connection.vendor == "postgresql"
        print(
            f"fill: {rows:,} rows from {datetime.fromtimestamp(now - SPAN_DAYS * DAY, UTC):%Y-%m-%d %H:%M} to "
            f"{datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M} UTC in {times.wall:.1f} s "
            f"({rows / times.wall:,.0f} rows/s; target for 10M: well under 20 min): "
            f"{times.workers} worker process(es), "
            f"chunks of {args.chunk:,} rows, each one transaction of the raw rows "
            f"({'COPY' if postgres else 'bulk_create'}) and the writer's rollups_add on the same dicts"
        )
        print(
            f"      fill {times.filled:.1f} s wall; summed over the workers: generating {times.generate:.1f} s, "
            f"raw rows {times.rows:.1f} s, rollups_add {times.rollups:.1f} s, commits {times.commit:.1f} s, "
            f"chunks retried after a deadlock {times.retries}; "
            f"{'VACUUM ANALYZE' if postgres else 'ANALYZE'} {times.analyze:.1f} s"
        )
    for line in storage_lines():
        print(line)
    print()
    found, accuracy, failures = reads(rows, args, key_ids, workload)
    print(
        f"reads (ms): median and max of {args.runs} runs after a warm-up; 'of it SQL': the median time in the "
        f"read's SQL statements (the rest is Python over their rows); raw = the exact equivalent over the "
        f"QueryMetric rows in SQL ({args.raw_runs} runs after a warm-up): count, sums and percentile_cont of "
        "latency and TTFT over the window, grouped by hour (timeseries) or model (models); ratio = rollups / raw"
    )
    print(
        table(
            ["figure", "window", "filter", "rollups med", "max", "of it SQL", "raw med", "max", "ratio", "target"],
            read_rows(found),
        )
    )
    missed = [read for read in found if read.rollups.median >= read.target]
    print(
        f"reads within target (under {target_for(rows):.0f} ms at {rows:,} rows): "
        f"{len(found) - len(missed)} of {len(found)}"
    )
    if missed and connection.vendor == "postgresql" and not args.no_explain:
        worst = max(missed, key=lambda read: read.rollups.median)
        print("\n".join(explain(worst)))
    print()
    rows_accuracy, worst_error = accuracy_rows(accuracy)
    print(
        "percentile error: bucketed (metrics_summary, logarithmic buckets) against exact over the raw rows with "
        "status ok in SQL: percentile_disc (the nearest rank, the buckets' definition) and, for reference, "
        "percentile_cont (interpolated), relative"
    )
    headers = ["window", "filter", "percentile", "bucketed ms", "exact ms", "error", "target", "cont ms", "error"]
    print(table(headers, rows_accuracy))
    print(
        f"largest percentile error: {worst_error:.2%} (target under 2%: {'met' if worst_error < 0.02 else 'NOT met'})"
    )
    print(
        "exact sums: requests, ok, errors, input/output/cached tokens and cost of the rollups "
        f"{'equal the raw rows in every window and filter' if not failures else f'DIFFER in {failures} figures'}"
    )
    print()
    done = writes(workload, args)
    size = done.batch
    print(
        f"writes: monitoring.recorder._write, one writer, batches of {size} (LLMOPS_METRICS_BATCH_SIZE), "
        f"{args.write_rows:,} fresh rows per mode in alternating rounds, timed at {args.write_rate:.0f} requests/s "
        "in a day of their own; "
        "CPU = this process's (the writer thread's share of a gateway process), not the database's:"
    )
    print(
        table(
            ["mode", "rows/s", "ms per batch", "CPU ms/row", "ratio"],
            [
                ["rows + rollups (the writer)", fmt(done.with_rollups, 0), fmt(size / done.with_rollups * 1000, 1),
                 fmt(done.cpu_with_rollups, 3), f"{done.rows_only / done.with_rollups:.2f}x slower"],
                ["rows only (LLMOPS_METRICS_ROLLUPS=False)", fmt(done.rows_only, 0),
                 fmt(size / done.rows_only * 1000, 1), fmt(done.cpu_rows_only, 3), "1.00x"],
            ],
        )
    )  # fmt: skip
    print()
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    django_setup()
    from django.core.management import call_command
    from django.db import connection

    name, described = database_name()
    postgres = connection.vendor == "postgresql"
    if not postgres and not args.tiny:
        print(
            f"metrics scale benchmark skipped: it measures PostgreSQL at 1 and 10 million rows, and DATABASE_URL "
            f"points at {described}. Run it as DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmops_bench "
            "python -m benchmarks.metrics_scale (or --tiny for a quick check on any database)."
        )
        return 0
    if "bench" not in os.path.basename(name) and not args.yes:
        print(
            f"metrics scale benchmark refused: it deletes every metric row of {described}, whose name does not "
            "contain 'bench'. Point DATABASE_URL at a database of its own (e.g. llmops_bench), or pass --yes."
        )
        return 2
    call_command("migrate", verbosity=0)
    args.workers = args.workers or (2 if postgres else 1)
    key_ids = api_keys()
    workload = Workload(key_ids, args.seed)
    print(
        f"metrics scale benchmark: {described}, {os.cpu_count()} CPUs (load average {load_average()}), "
        f"Python {sys.version.split()[0]}, "
        f"sizes {', '.join(f'{n:,}' for n in args.sizes)}"
    )
    print("workload (the same at every size):")
    for line in workload.describe():
        print(f"  {line}")
    print()
    failures = 0
    for rows in args.sizes:
        failures += run_size(rows, args, key_ids)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
