"""What the gateway itself adds to a request: latency and CPU against an instant upstream.

    .venv/bin/python -m benchmarks.gateway_overhead [--sequential 1000] [--requests 4000]
        [--concurrency 64] [--stream-sequential 300] [--stream-requests 1500] [--no-stream]
        [--upstream simulated|http] [--metrics-cost]

It builds a throwaway gateway (temporary SQLite database, migrated, seeded, one API key),
serves it with daphne on a free loopback port, and serves `benchmarks.harness.servers:echo_app`
(a bare ASGI app answering a fixed OpenAI-shaped chat.completion) with a second daphne: the
baseline, i.e. a direct call to an upstream that costs nothing, through the same server and
the same client. Gateway requests use the simulated model `sim-small` scripted to answer at
once (`simulate`: latency, time to first token and token rate 0, 16 output tokens), so
everything measured on the gateway side is the gateway's own work: Django, the API view,
authorization, the pipeline, the buffered metric write. Every prompt differs from every
other, across phases too (a per-phase tag), so no answer comes from the answer cache.

With --upstream http the gateway calls a real OpenAI-compatible HTTP upstream instead of
simulating one: a third daphne serves the echo app again (the baseline's app,
in a process of its own), and the benchmark adds the catalog model `echo-http` (provider
`openai`, `base_url` that server's loopback `/v1`, the prices of sim-small). Every gateway
request then goes through the `openai` provider: the official SDK's AsyncOpenAI, its pooled
keep-alive connections over loopback, and its parsing of the answer or of the SSE chunks
(the gateway asks `stream_options.include_usage`, and the echo app sends the usage chunk).
The key follows the project's rule for a server of one's own: the catalog entry names
ECHO_UPSTREAM_API_KEY, set on the gateway to a dummy value, and the upstream (started with
ECHO_API_KEY to the same value and no provider key in its environment) refuses any other;
the default OPENAI_API_KEY never goes to a non-official host. Gateway requests carry
`max_tokens` = --output-tokens instead of `simulate` (which only simulated models accept),
and the echo app answers that many tokens. Overhead is then what a client pays for putting
the gateway, and one more loopback hop to the upstream, in front of a direct call; an
extra row gives the upstream's own CPU per request during the gateway's phase. After the
table the benchmark checks that the upstream served exactly as many answers and streams as
the gateway was sent (warm-ups included): every gateway answer came from the echo server.

Each scenario (JSON answers, then SSE streams of 16 tokens; one request in flight, then
`--concurrency` in flight over as many keep-alive connections) runs after a warm-up,
baseline first, then gateway. For each it prints:

- median and p99 latency (ms, client side, request written to last byte read); for
  streams also the median time to the first body chunk;
- throughput (completed requests per second of wall time);
- server CPU per request (ms): user + system CPU of the daphne process (all threads, so
  the gateway's metric writer thread is included) over the phase and a settle time long
  enough for buffered metrics to be written, divided by the requests;
- the gateway figure, the baseline figure, overhead = gateway - baseline, and the ratio
  gateway / baseline;
- after the table, for each concurrent scenario, the longest garbage-collector pause in the
  gateway process during it (the gateway runs with LLMOPS_GC_STATS=1 and reports it on
  /healthz under "gc"; the target is under 20 ms).

Read "overhead" as the price of putting the gateway in front of an upstream; read the
gateway's "server CPU ms/req" against DESIGN.md's aim of under 1 ms (the baseline row shows
how much of it daphne alone costs). The client's own CPU per request is printed too: on a
2-core machine client and server share the CPUs, so concurrent latencies include some
queueing behind the client. Numbers move with whatever else runs on the machine.

With --metrics-cost the whole benchmark runs twice in the same run, on two fresh gateways:
once with LLMOPS_METRICS_ROLLUPS=true and LLMOPS_PROMETHEUS_ENABLED=true, once with both
false; it then prints, for each scenario, the gateway's server CPU per request of each pass
and the difference (the metric path's cost per request: target under 0.1 ms), beside the
same difference for the baseline app (which neither setting touches: the runs' noise). In
this mode each gateway phase's CPU is counted from when the earlier phases' metric rows are
all written to when its own are, however long the writer takes past the settle.

The exit code is 0 when every request succeeded (and, with --upstream http, every one reached
the upstream once), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable

from benchmarks.harness.client import LoadResult, chat_requests, checker, run_load, warm_up
from benchmarks.harness.command import options, parsed
from benchmarks.harness.figures import compared, fmt, machine, percentile, ratio, table
from benchmarks.harness.gateway import Daphne, serving, throwaway

MODEL = "sim-small"
ECHO_APP = "benchmarks.harness.servers:echo_app"
# --upstream http: the catalog model that proxies the echo app, and its (dummy) key.
HTTP_MODEL = "echo-http"
HTTP_KEY_ENV = "ECHO_UPSTREAM_API_KEY"
HTTP_KEY = "echo-benchmark-dummy-key"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "gateway_overhead", "Gateway latency and CPU overhead against an instant upstream, with a same-run baseline."
    )
    parser.add_argument("--sequential", type=int, default=1000, help="requests one at a time (default 1000)")
    parser.add_argument("--requests", type=int, default=4000, help="requests in the concurrent phase (default 4000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default 64)")
    parser.add_argument("--stream-sequential", type=int, default=300, help="streams one at a time (default 300)")
    parser.add_argument("--stream-requests", type=int, default=1500, help="streams in the concurrent phase")
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming scenarios")
    parser.add_argument("--output-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per server and mode (default 300)")
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=1.0,
        help="LLMOPS_METRICS_FLUSH_INTERVAL_S for the gateway (default 1.0, the gateway's default)",
    )
    parser.add_argument(
        "--key-limits",
        action="store_true",
        help="give the benchmark's key requests and tokens per minute and a budget (never reached), so every "
        "request pays for the limits step",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default="",
        help="serve the gateway with REDIS_URL=URL (answer cache, breakers and key limits in Redis); "
        "e.g. redis://127.0.0.1:6379/14",
    )
    parser.add_argument(
        "--upstream",
        choices=("simulated", "http"),
        default="simulated",
        help="what the gateway calls: the simulated model sim-small (default), or a real OpenAI-compatible "
        "HTTP upstream (the harness's echo app under its own daphne) through the openai provider",
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="run with rollups and Prometheus on and with both off, alternating (--rounds of each); print the "
        "CPU per request they add",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --metrics-cost: passes of each, alternating (3)")
    counts = ("sequential", "requests", "concurrency", "stream_sequential", "stream_requests", "output_tokens")
    args = parsed(parser, argv, at_least_one=(*counts, "rounds"))
    if args.warmup < 0 or args.flush_interval < 0:
        parser.error("--warmup and --flush-interval must not be negative")
    return args


# Limits far above what the benchmark sends: every request is checked and reserved, none refused.
KEY_LIMITS = """
from llmops.models import ApiKey
ApiKey.objects.filter(name="benchmark").update(
    requests_per_minute=10_000_000, tokens_per_minute=1_000_000_000, budget_usd=1_000_000
)
"""

# --upstream http: an OpenAI-compatible server of one's own, priced and limited as sim-small.
HTTP_CATALOG = """
import sys
from llmops.models import ModelEndpoint
small = ModelEndpoint.objects.get(name="sim-small")
row = ModelEndpoint(
    name=sys.argv[1], provider="openai", upstream_model="echo", base_url=sys.argv[2], api_key_env=sys.argv[3],
    input_price_per_mtok=small.input_price_per_mtok, output_price_per_mtok=small.output_price_per_mtok,
    cached_input_price_per_mtok=small.cached_input_price_per_mtok, batch_discount=small.batch_discount,
    context_window=small.context_window, max_concurrency=small.max_concurrency, enabled=True,
)
row.full_clean()  # the checks the admin makes (the key variable's name among them)
row.save()
"""


def body_builder(
    port: int, key: str | None, *, stream: bool, output_tokens: int, http_model: str | None = None, tag: str = ""
):
    """Request bytes for index i; the prompt differs per request within a phase. With
    `http_model`, a request for that model with max_tokens instead of `simulate`; `tag`
    (one per phase) makes the prompts differ between phases too."""
    if http_model:
        model, extra = http_model, {"max_tokens": output_tokens}
    else:
        simulate = {"latency_ms": 0, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": output_tokens, "error_rate": 0}
        model, extra = MODEL, {"simulate": simulate}
    content = f"benchmark request {tag}@@"
    return chat_requests(port, key, {"model": model, "messages": [{"role": "user", "content": content}],
                                     "stream": stream, **extra})  # fmt: skip


async def measure(
    server: Daphne,
    key: str | None,
    *,
    stream: bool,
    requests: int,
    concurrency: int,
    tokens: int,
    settle: float,
    drain: Callable[[int], Awaitable[None]] | None = None,
    http_model: str | None = None,
    upstream: Daphne | None = None,
    tag: str = "",
) -> tuple[LoadResult, float | None]:
    """The phase's result and, given the `upstream` the server calls, that upstream's CPU
    seconds over the same span. With `drain`, the CPU is counted from when every earlier
    metric row is written to when this phase's are (`drain(n)` waits for n more rows than
    were sent before)."""
    build = body_builder(server.port, key, stream=stream, output_tokens=tokens, http_model=http_model, tag=tag)
    if drain is not None:
        await drain(0)
    cpu_before = server.cpu_s()
    upstream_before = upstream.cpu_s() if upstream is not None else 0.0
    result = await run_load(server.port, build, checker(stream), requests=requests, concurrency=concurrency)
    # Let buffered metrics reach the database so their writing is counted.
    await asyncio.sleep(settle)
    if drain is not None:
        await drain(requests)
    result.server_cpu_s = server.cpu_s() - cpu_before
    return result, (upstream.cpu_s() - upstream_before if upstream is not None else None)


async def warm(server: Daphne, key: str | None, *, stream: bool, requests: int, tokens: int,
               http_model: str | None = None, tag: str = "") -> None:  # fmt: skip
    build = body_builder(server.port, key, stream=stream, output_tokens=tokens, http_model=http_model, tag=tag)
    await warm_up(server.port, build, checker(stream), requests, server.name)


def scenario_rows(
    gateway: LoadResult, baseline: LoadResult, *, stream: bool, upstream_cpu_s: float | None = None
) -> list[list[str]]:
    rows = []

    def add(metric: str, g: float | None, b: float | None, *, overhead: bool = True, digits: int = 3) -> None:
        rows.append(["", *compared(metric, g, b, digits, difference=overhead)])

    add("median latency, ms", gateway.pct(50), baseline.pct(50))
    add("p99 latency, ms", gateway.pct(99), baseline.pct(99))
    if stream:
        add(
            "median first chunk, ms",
            percentile(gateway.first_byte_ms, 50),
            percentile(baseline.first_byte_ms, 50),
        )
    add("throughput, req/s", gateway.throughput, baseline.throughput, overhead=False, digits=1)
    add("server CPU, ms/req", gateway.server_cpu_ms_per_request, baseline.server_cpu_ms_per_request)
    if upstream_cpu_s is not None:
        # The echo upstream's CPU while the gateway called it, beside the same app called directly.
        add(
            "upstream CPU, ms/req",
            upstream_cpu_s * 1000 / gateway.requests,
            baseline.server_cpu_ms_per_request,
            overhead=False,
        )
    add(
        "client CPU, ms/req",
        gateway.client_cpu_s * 1000 / gateway.requests,
        baseline.client_cpu_s * 1000 / baseline.requests,
    )
    add("wall time, s", gateway.wall_s, baseline.wall_s, overhead=False)
    return rows


def gc_pause_line(gateway: Daphne, label: str, since: float) -> str:
    """The longest garbage-collector pause in the gateway since `since` (its /healthz "gc")."""
    state = gateway.wait_ready(f"/healthz?gc_since={since:.3f}").get("gc") or {}
    longest = state.get("longest_pause_ms_since")
    verdict = "n/a" if longest is None else ("met" if longest < 20 else "NOT met")
    return (
        f"largest GC pause in the gateway during {label}: {fmt(longest)} ms (target under 20 ms: {verdict}; "
        f"the longest CPU time of a collection {fmt(state.get('longest_collection_cpu_ms_since'))} ms); "
        f"collections gen0/gen1/gen2 since start {'/'.join(map(str, state.get('collections') or [])) or 'n/a'}"
    )


def metric_rows(database: str) -> int | None:
    try:
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT COUNT(*) FROM monitoring_querymetric").fetchone()[0]
    except sqlite3.Error:
        return None


async def run(
    args: argparse.Namespace, extra_env: dict[str, str] | None = None, cpu: dict[str, tuple] | None = None
) -> int:
    """One pass; `cpu`, when given, gets each scenario's (gateway, baseline) server CPU ms/request."""
    scenarios = [
        ("JSON, 1 in flight", False, args.sequential, 1),
        (f"JSON, {args.concurrency} in flight", False, args.requests, args.concurrency),
    ]
    if not args.no_stream:
        scenarios += [
            ("SSE stream, 1 in flight", True, args.stream_sequential, 1),
            (f"SSE stream, {args.concurrency} in flight", True, args.stream_requests, args.concurrency),
        ]
    settle = args.flush_interval + 0.3
    failures = 0
    http = args.upstream == "http"
    http_model = HTTP_MODEL if http else None
    # Phase n's prompts are "benchmark request pn-<i>": every gateway request is a new question,
    # answered by the model, never by the answer cache (on for every model by default, streams
    # included, so a prompt repeated from an earlier phase would be a hit).
    phases = itertools.count()

    def tag() -> str:
        return f"p{next(phases)}-"

    settings = {
        "LLMOPS_METRICS_FLUSH_INTERVAL_S": str(args.flush_interval),
        "LLMOPS_GC_STATS": "1",  # the gateway's /healthz reports its garbage-collector pauses
        **({"REDIS_URL": args.redis} if args.redis else {}),
        **({HTTP_KEY_ENV: HTTP_KEY} if http else {}),
        **(extra_env or {}),
    }
    with throwaway(settings, open_files=4 * args.concurrency + 256) as set_up:
        env = set_up.env
        key = set_up.prepare()
        if args.key_limits:
            set_up.script(KEY_LIMITS)
        if args.redis:
            set_up.script("from django.core.cache import caches; caches['answers'].clear()")
        database = set_up.database
        gateway = set_up.daphne()
        baseline = set_up.daphne("baseline", ECHO_APP)
        upstream: Daphne | None = None
        if http:
            # No provider key in the upstream's environment: only the dummy it expects.
            upstream_env = {name: value for name, value in env.items() if not name.endswith("_API_KEY")}
            upstream = set_up.daphne("upstream", ECHO_APP, env={**upstream_env, "ECHO_API_KEY": HTTP_KEY})
            upstream_url = f"http://127.0.0.1:{upstream.port}/v1"
            set_up.script(HTTP_CATALOG, HTTP_MODEL, upstream_url, HTTP_KEY_ENV)
        with serving(gateway, baseline, *([upstream] if upstream else [])):
            print(machine("gateway overhead benchmark", set_up.elapsed_s))
            if upstream is not None:
                served = f"model {HTTP_MODEL} (provider openai, base_url {upstream_url}, key {HTTP_KEY_ENV})"
                served += f" proxied to {ECHO_APP} under daphne pid {upstream.pid}"
            else:
                served = f"model {MODEL} simulated with latency 0"
            print(
                f"gateway: daphne pid {gateway.pid} on 127.0.0.1:{gateway.port}, {served}, {args.output_tokens} "
                f"output tokens; baseline: {ECHO_APP} under daphne pid {baseline.pid} on "
                f"127.0.0.1:{baseline.port}"
            )
            print(
                f"client: raw asyncio HTTP/1.1 keep-alive, one connection per worker; warm-up {args.warmup} "
                f"requests per server and mode; server CPU includes a {settle:.1f} s settle for buffered metrics"
            )
            print()
            gateway_requests = 0
            sent = {False: 0, True: 0}  # gateway requests by stream flag, for the upstream's count

            async def rows_written(more: int) -> None:
                # The writer may lag the settle (rollups on a slow database): wait for its rows.
                deadline = time.monotonic() + 120
                while (metric_rows(database) or 0) < gateway_requests + more and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

            drain = rows_written if cpu is not None else None
            rows: list[list[str]] = []
            warmed: set[bool] = set()
            gc_lines: list[str] = []
            for label, stream, requests, concurrency in scenarios:
                if stream not in warmed:
                    warmed.add(stream)
                    await warm(baseline, None, stream=stream, requests=args.warmup, tokens=args.output_tokens)
                    await warm(
                        gateway, key, stream=stream, requests=args.warmup, tokens=args.output_tokens,
                        http_model=http_model, tag=tag(),
                    )  # fmt: skip
                    gateway_requests += args.warmup
                    sent[stream] += args.warmup
                    await asyncio.sleep(settle)
                common = dict(stream=stream, requests=requests, concurrency=concurrency, tokens=args.output_tokens)
                if drain is not None:
                    await drain(0)  # the gateway's writer done before the baseline is measured
                base_result, _ = await measure(baseline, None, settle=settle, **common)
                gc_since = time.time()
                gate_result, upstream_cpu = await measure(
                    gateway, key, settle=settle, drain=drain, http_model=http_model, upstream=upstream, tag=tag(),
                    **common,
                )  # fmt: skip
                if concurrency > 1:
                    gc_lines.append(gc_pause_line(gateway, label, gc_since))
                gateway_requests += requests
                sent[stream] += requests
                for name, result in (("baseline", base_result), ("gateway", gate_result)):
                    if result.errors:
                        failures += result.errors
                        print(f"!! {label}, {name}: {result.errors} failed requests, e.g. {result.error_sample}")
                if cpu is not None:
                    cpu[label] = (gate_result.server_cpu_ms_per_request, base_result.server_cpu_ms_per_request)
                scenario = scenario_rows(gate_result, base_result, stream=stream, upstream_cpu_s=upstream_cpu)
                scenario[0][0] = f"{label} ({requests} req)"
                rows += scenario
            print(table(["scenario", "metric", "gateway", "baseline", "overhead", "ratio"], rows))
            print()
            print("overhead = gateway - baseline; ratio = gateway / baseline (same client, same daphne, same run).")
            print("DESIGN.md aims for under 1 ms of gateway CPU per request (server CPU row).")
            print(
                f"gateway profile: {'Redis ' + args.redis if args.redis else 'embedded (local memory)'}; "
                f"key limits: {'RPM, TPM and a budget set' if args.key_limits else 'none'}; "
                f"upstream: {'HTTP (openai provider -> echo_asgi)' if http else 'simulated'}"
            )
            if upstream is not None:
                print(
                    "upstream CPU row: the echo upstream's daphne over the gateway's phase, per gateway request; "
                    "its baseline column is the same app called directly."
                )
            print("\n".join(gc_lines))
            health = gateway.wait_ready("/healthz")
            written = metric_rows(database)
            print(
                f"gateway metric rows written: {written} of {gateway_requests} requests sent; "
                f"upstream_in_flight_peak {health.get('upstream_in_flight_peak')}"
            )
            if upstream is not None:
                counts = upstream.wait_ready("/healthz")
                got = {False: counts.get("completions"), True: counts.get("streams")}
                verdict = "every gateway request reached it once" if got == sent else "MISMATCH"
                print(
                    f"echo upstream served {got[False]} chat completions (gateway sent {sent[False]}) and "
                    f"{got[True]} streams (gateway sent {sent[True]}): {verdict}"
                )
                if got != sent:
                    failures += 1
    return 1 if failures else 0


METRICS_ON = {"LLMOPS_METRICS_ROLLUPS": "true", "LLMOPS_PROMETHEUS_ENABLED": "true"}
METRICS_OFF = {"LLMOPS_METRICS_ROLLUPS": "false", "LLMOPS_PROMETHEUS_ENABLED": "false"}


def _figures(runs: list[dict[str, tuple]], label: str, index: int) -> list[float]:
    """One figure of a scenario (0: the gateway's CPU per request, 1: the baseline's) from each pass."""
    return [found[label][index] for found in runs if found.get(label) and found[label][index] is not None]


async def metrics_cost(args: argparse.Namespace) -> int:
    """The same benchmark with the metric path's rollups and Prometheus on and off, in
    alternating passes (on, off, off, on, ...): a machine's drift over the run falls on both."""
    passes: dict[str, list[dict[str, tuple]]] = {"on": [], "off": []}
    failed = 0
    for round_ in range(args.rounds):
        order = (("on", METRICS_ON), ("off", METRICS_OFF))
        for name, extra in order if round_ % 2 == 0 else order[::-1]:
            print(f"=== round {round_ + 1}, pass {name}: {' '.join(f'{k}={v}' for k, v in extra.items())} ===")
            found: dict[str, tuple] = {}
            failed |= await run(args, extra, found)
            passes[name].append(found)
            print()
    rows = []
    for label in passes["on"][0]:
        gate = {name: _figures(runs, label, 0) for name, runs in passes.items()}
        base = {name: _figures(runs, label, 1) for name, runs in passes.items()}
        gate_on, gate_off = (percentile(gate[name], 50) if gate[name] else None for name in ("on", "off"))
        base_on, base_off = (percentile(base[name], 50) if base[name] else None for name in ("on", "off"))
        added = gate_on - gate_off if gate_on is not None and gate_off is not None else None
        noise = base_on - base_off if base_on is not None and base_off is not None else None
        spread = (
            f"{min(gate['on']) - max(gate['off']):+.3f}..{max(gate['on']) - min(gate['off']):+.3f}"
            if gate["on"] and gate["off"]
            else "-"
        )
        verdict = "n/a" if added is None else ("met" if added < 0.1 else "NOT met")
        rows.append([label, fmt(gate_on, 3), fmt(gate_off, 3), fmt(added, 3), spread, ratio(gate_on, gate_off),
                     fmt(noise, 3), f"< 0.1 ms {verdict}"])  # fmt: skip
    print(
        f"the metric path's CPU per request: gateway server CPU, ms/request, rollups + Prometheus on against off, "
        f"medians of {args.rounds} passes each"
    )
    print(table(["scenario", "on", "off", "added", "range", "ratio", "baseline on - off", "target"], rows))
    print(
        "added = on - off of the medians (the rollups' writer thread is counted: each phase's CPU runs until its "
        "metric rows are all written); range = the smallest and largest difference between any two passes; "
        "'baseline on - off' is the same difference for the bare echo app, which neither setting touches: "
        "how much passes differ by chance."
    )
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.metrics_cost:
        return asyncio.run(metrics_cost(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
