"""How many upstream calls one gateway process holds open at once.

    .venv/bin/python -m benchmarks.inflight [--requests 512] [--latency-ms 1000] [--cold]
        [--backlog 1024] [--warmup 100]

It builds a throwaway gateway (temporary SQLite database, migrated, seeded, one API key),
serves it with daphne on a free loopback port, warms it up, then fires `--requests` (N)
chat completions at the same instant, each on its own connection, against the simulated
model `sim-small` scripted to take `--latency-ms` (default 1000 ms) upstream. Connections
are opened before the clock starts (a warm client pool) unless `--cold`: then each request
connects inside the burst, so the server's accept queue is part of what is measured.
Daphne listens as `make run` starts it, with a backlog of 1024; `--backlog 0` uses
`-b/-p` instead, whose backlog of 50 drops part of a burst of new connections.

What it prints, with the baseline each is compared with (ratio = measured / baseline):

- upstream calls in flight at the peak, from the gateway's own /healthz
  `upstream_in_flight_peak`, against N: 1.00 means every request was upstream at once;
  the highest `upstream_in_flight` a /healthz poller (every 100 ms) saw confirms it;
- wall time of the burst against the ideal (one upstream latency: all N at once) and
  against the sequential expectation (N x the upstream latency, one call at a time);
- throughput (requests/s) against the ideal (N per upstream latency) and the sequential
  (1 per upstream latency);
- client-side latency min (the first answer) / median / p99 / max against the upstream
  latency: the excess is time spent queueing in the gateway, daphne and the client;
- the gateway's CPU per request, the client's, and the most OS threads the daphne process
  had during the burst;
- the kernel's ListenOverflows / ListenDrops / TCPSynRetrans counters over the connect
  phase and the burst (system-wide, so other traffic on the machine adds to them): SYNs
  dropped because daphne's accept queue was full, each costing the client 1 s or more.

A peak of N means the gateway's concurrency is not capped by threads, pools or semaphores
(sim-small's max_concurrency is 4096 in the seeded catalog); the wall time against the
ideal shows what the gateway's CPU per request costs when N requests arrive at once.
The exit code is 0 when every request succeeded and the peak reached min(N, 256).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys

from benchmarks.harness.client import (
    HttpConnection,
    chat_requests,
    check_answer,
    get_request,
    healthz,
    run_load,
    warm_up,
)
from benchmarks.harness.command import command, options
from benchmarks.harness.figures import fmt, machine, process_threads, table, tcp_counters
from benchmarks.harness.gateway import Daphne, raise_open_files, serving, throwaway

TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")

MODEL = "sim-small"
REQUIRED_PEAK = 256


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "inflight", "Upstream calls held in flight at once by one gateway process, against a slow upstream."
    )
    parser.add_argument("--requests", type=int, default=512, help="requests fired at once (default 512)")
    parser.add_argument("--latency-ms", type=int, default=1000, help="simulated upstream latency (default 1000)")
    parser.add_argument("--cold", action="store_true", help="connect inside the burst instead of beforehand")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests with no latency (default 100)")
    parser.add_argument(
        "--backlog",
        type=int,
        default=1024,
        help="listen backlog for daphne (`-e tcp:...:backlog=N`), as `make run` uses (default 1024; 0: Twisted's 50)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.latency_ms < 1 or args.warmup < 0 or args.backlog < 0:
        parser.error("--requests and --latency-ms must be at least 1, --warmup and --backlog not negative")
    return args


def body_builder(port: int, key: str, *, latency_ms: int):
    simulate = {"latency_ms": latency_ms, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": 16, "error_rate": 0}
    messages = [{"role": "user", "content": "in flight @@"}]
    return chat_requests(port, key, {"model": MODEL, "messages": messages, "simulate": simulate})


async def poll_health(server: Daphne, stop: asyncio.Event, seen: list[int], threads: list[int]) -> None:
    """Every 100 ms: /healthz `upstream_in_flight` (one keep-alive connection) and the
    daphne process's OS thread count."""
    port = server.port
    conn = HttpConnection(port)
    request = get_request(port, "/healthz")
    try:
        while not stop.is_set():
            threads.append(process_threads(server.pid))
            try:
                status, _, body = await conn.request(request)
                if status == 200:
                    seen.append(json.loads(body)["upstream_in_flight"])
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                conn.close()
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    finally:
        conn.close()


async def run(args: argparse.Namespace) -> int:
    n = args.requests
    latency_s = args.latency_ms / 1000
    soft, hard = raise_open_files(2 * n + 512)
    if soft < n + 64:
        print(f"!! open-file limit {soft} is too low for {n} connections (hard limit {hard})")
        return 1
    with throwaway() as set_up:
        key = set_up.prepare()
        gateway = set_up.daphne(backlog=args.backlog or None)
        with serving(gateway):
            print(machine("in-flight benchmark") + f", open files {soft}/{hard}, set-up {set_up.elapsed_s:.1f} s")
            print(
                f"gateway: daphne pid {gateway.pid} on 127.0.0.1:{gateway.port}; {n} requests at once to {MODEL} "
                f"simulated with {args.latency_ms} ms upstream latency; client: raw asyncio HTTP/1.1, one "
                f"connection per request, {'connected inside the burst' if args.cold else 'connected beforehand'}; "
                f"listen backlog {args.backlog or '50 (daphne -b/-p, Twisted default)'}"
            )
            warm = body_builder(gateway.port, key, latency_ms=0)
            await warm_up(gateway.port, warm, check_answer, args.warmup, "gateway")
            before = await healthz(gateway.port)
            stop = asyncio.Event()
            seen: list[int] = []
            threads: list[int] = []
            threads_before = process_threads(gateway.pid)
            poller = asyncio.create_task(poll_health(gateway, stop, seen, threads))
            tcp_before = tcp_counters(*TCP_COUNTERS)
            cpu_before = gateway.cpu_s()
            build = body_builder(gateway.port, key, latency_ms=args.latency_ms)
            result = await run_load(gateway.port, build, check_answer, requests=n, concurrency=n, cold=args.cold)
            server_cpu = gateway.cpu_s() - cpu_before
            tcp_after = tcp_counters(*TCP_COUNTERS)
            stop.set()
            await poller
            after = await healthz(gateway.port)

    peak = after.get("upstream_in_flight_peak", 0)
    polled = max(seen, default=0)
    upstream_ms = args.latency_ms
    wall = result.wall_s
    lat = result.latencies_ms

    def row(metric: str, value: float, digits: int, base_label: str, base: float, ratio_digits: int = 2) -> list[str]:
        base_text = f"{base:,.0f}" if float(base).is_integer() else f"{base:,.3f}"
        return [metric, fmt(value, digits), f"{base_label} {base_text}", f"{value / base:.{ratio_digits}f}"]

    rows = [
        row("upstream calls in flight, peak (/healthz)", peak, 0, "N =", n),
        row("in flight, highest seen by the poller", polled, 0, "N =", n),
        row("burst wall time, s", wall, 3, "ideal", latency_s),
        row("burst wall time, s", wall, 3, "sequential", n * latency_s, 4),
        row("throughput, req/s", result.throughput, 1, "ideal", n / latency_s),
        row("throughput, req/s", result.throughput, 1, "sequential", 1 / latency_s, 1),
        row("latency min (first answer), ms", min(lat, default=float("nan")), 1, "upstream", upstream_ms),
        row("latency median, ms", result.pct(50), 1, "upstream", upstream_ms),
        row("latency p99, ms", result.pct(99), 1, "upstream", upstream_ms),
        row("latency max, ms", max(lat, default=float("nan")), 1, "upstream", upstream_ms),
        ["gateway CPU, ms/req", fmt(server_cpu * 1000 / n, 3), "", ""],
        ["client CPU, ms/req", fmt(result.client_cpu_s * 1000 / n, 3), "", ""],
        ["gateway OS threads, most seen", str(max(threads, default=0)), f"idle {threads_before}", ""],
    ]
    if not args.cold:
        rows.append(["client connect time before the burst, s", fmt(result.connect_s, 3), "", ""])
    print()
    print(table(["metric", "measured", "baseline", "ratio"], rows))
    print()
    print("ratio = measured / baseline: peak / N (1.00 = all N upstream at once), wall / ideal, wall / sequential...")
    overflow = {name: tcp_after.get(name, 0) - tcp_before.get(name, 0) for name in TCP_COUNTERS}
    print(
        f"succeeded {result.ok} of {n}; peak before the burst {before.get('upstream_in_flight_peak')} (warm-up); "
        f"{len(seen)} /healthz polls during it; kernel TCP counters during connect + burst (system-wide): "
        + ", ".join(f"{name} +{value}" for name, value in overflow.items())
    )
    failed = False
    if result.errors:
        print(f"!! {result.errors} requests failed, e.g. {result.error_sample}")
        failed = True
    if peak < min(n, REQUIRED_PEAK):
        print(f"!! the gateway held only {peak} upstream calls at once (wanted at least {min(n, REQUIRED_PEAK)})")
        failed = True
    if failed:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(f"   open-file limit {limit[0]}/{limit[1]}")
    return 1 if failed else 0


main = command(run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
