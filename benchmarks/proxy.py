"""What users run: the load generator -> the gateway -> a real OpenAI-compatible HTTP
upstream in a process of its own, against the same generator calling that upstream
directly, and against LiteLLM's proxy in front of the same upstream when it is installed.

    .venv/bin/python -m benchmarks.proxy [--profile embedded|prod] [--processes 1,2]
        [--litellm auto|install|off] [--requests 4000] [--sequential 1000] ...

The upstream is the harness's fast upstream (`python -m benchmarks.harness.servers PORT`, an
instant server on a bare asyncio protocol).
The gateway is `manage.py serve` (one daphne per process on one port) with its catalog
model `echo-http` (provider openai, base_url the upstream, a dummy key variable); every
gateway request has a new prompt, so none is an answer-cache hit. LiteLLM runs from a
virtual environment of its own (.venv-litellm; `--litellm install` makes it with
`pip install 'litellm[proxy]'`; `auto` uses it when present and says why not otherwise),
one worker, the same upstream.

Scenarios: one request at a time; 16 and 64 connections in a closed loop; 16-token streams
one at a time and 16 at once. Figures: requests/s, latency added to the direct call (p50,
p99), CPU of the server's processes per request or stream, the gateway's largest collector
pause and its generation-2 collections (LLMOPS_GC_STATS, /healthz), resident memory of the
server's processes before and after; each with its ratio to the direct call and to LiteLLM
from the same run. Then the 64-connection run again for each process count of
--processes (default 1,2), all of them served at once and taking turns pass by pass:
requests/s and its ratio to one process, the load generator's share of the machine's CPU
(it shares the cores), the CPU per request of the upstream and, with --profile prod, of
PostgreSQL and Redis (their processes on this machine, by name), and the requests/s that the
cores' CPU allows at the CPU per request of every process counted; after each pass a
CPU-bound Python loop runs in as many processes, alone, for the machine's own scaling (the
ceiling for the gateway's). The load generator (a bare asyncio protocol) and the upstream
run on uvloop's event loop when it is installed, as the gateway does.

--profile prod runs the gateway on PostgreSQL and Redis (a throwaway database on
127.0.0.1:5432 and an empty Redis database on 127.0.0.1:6379, as the tests use)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.gateway_overhead import HTTP_CATALOG, HTTP_KEY, HTTP_KEY_ENV, HTTP_MODEL, body_builder
from benchmarks.harness import loop_run
from benchmarks.harness.client import LoadResult, checker, http_get, run_load, warm_up
from benchmarks.harness.command import options
from benchmarks.harness.figures import (
    GcFigures,
    cpu_spent,
    fmt,
    named_processes_cpu_s,
    process_cpu_s,
    process_tree,
    ratio,
    table,
)
from benchmarks.harness.gateway import (
    ROOT,
    Served,
    Throwaway,
    free_port,
    services_profile,
    services_unreachable,
    throwaway,
)

LITELLM_VENV = ROOT / ".venv-litellm"
TOKENS = 16
WARMUP = 200  # requests before each measured phase, per server (--warmup)
LITELLM_KEY = "sk-" + secrets.token_hex(32)
SERVICES = ("postgres", "redis-server")  # what the production profile shares the cores with
# The gateway's writers flush buffered metric and cache rows every LLMOPS_METRICS_FLUSH_INTERVAL_S
# (1 s; the benchmark sets none): past this, what a phase buffered has been written. Not
# waited for before a phase: an idle second there has the gateway run a full collection
# (llmops/collector.py) as the load starts, and what the warm-up left unwritten is at most
# its 200 requests' rows.
FLUSHED_S = 1.2


def start(name: str, command: list[str], env: dict[str, str], workdir: Path, port: int) -> Served:
    """A server under test, a process tree serving HTTP on `port`."""
    server = Served(name, command, env, workdir, port, own_group=True, stop_s=20.0, poll_s=0.2)
    server.start()
    return server


def litellm_reason(mode: str) -> str | None:
    """Why LiteLLM is not measured, or None (installing it first with mode "install")."""
    if mode == "off":
        return "--litellm off"
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists() and mode == "install":
        print(f"installing LiteLLM's proxy into {LITELLM_VENV} (a virtual environment of its own)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"]
        if subprocess.run(pip).returncode != 0:
            return "pip install 'litellm[proxy]' failed"
    if not binary.exists():
        return f"not installed in {LITELLM_VENV} (run with --litellm install)"
    return None


def litellm_version() -> str:
    done = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "?"


@dataclass
class Phase:
    label: str
    stream: bool
    requests: int
    concurrency: int


@dataclass
class Measured:
    result: LoadResult
    cpu_ms: float  # server CPU per request
    rss_before: float
    rss_after: float
    gc: GcFigures | None = None
    gc_full: int | None = None  # generation-2 collections in the phase
    others_ms: float | None = None  # CPU per request of the other processes on the cores (see measure)

    @property
    def whole_ms(self) -> float:
        """CPU per request of the processes counted (the server's, the others', the
        generator's): the cores cannot serve more than cores / this, however many server
        processes share them."""
        return self.cpu_ms + (self.others_ms or 0.0) + self.result.client_cpu_s * 1000 / self.result.requests


def gc_state(server: Served, since: float, processes: int) -> tuple[GcFigures | None, int | None]:
    """The collector's figures since `since` over every gateway process, and their
    generation-2 collections in all (each /healthz reaches one process: asked until all answered)."""
    seen: dict[int, dict] = {}
    for _ in range(50 * processes):
        _, body = http_get(server.port, f"/healthz?gc_since={since:.3f}")
        state = json.loads(body)
        seen[state["process"]["pid"]] = state.get("gc") or {}
        if len(seen) >= processes:
            break
    states = [s for s in seen.values() if s]
    if not states:
        return None, None
    return GcFigures.of(states), sum(s["collections"][2] for s in states)


async def measure(server: Served, phase: Phase, key: str | None, model: str | None, tag: str,
                  gc_processes: int = 0, others: Callable[[], float] | None = None) -> Measured:  # fmt: skip
    """One phase against `server`; `others` (a reading of the CPU so far of the processes that
    share the cores with it: the upstream, PostgreSQL, Redis; `cpu_spent` of two) gives their
    CPU per request too."""
    build = body_builder(server.port, key, stream=phase.stream, output_tokens=TOKENS, http_model=model, tag=tag)
    await warm_up(server.port, build, checker(phase.stream), WARMUP, server.name)
    build = body_builder(server.port, key, stream=phase.stream, output_tokens=TOKENS, http_model=model, tag=tag + "m")
    full_before = gc_state(server, time.time(), gc_processes)[1] if gc_processes else None
    rss_before = server.rss_mb()
    since = time.time()
    cpu_before = server.cpu_s()
    others_before = others() if others else {}
    result = await run_load(server.port, build, checker(phase.stream), requests=phase.requests,
                            concurrency=phase.concurrency)  # fmt: skip
    # The collector's figures as the load ends: in an idle second after it the gateway runs a
    # full collection (llmops/collector.py), which is no pause of the load.
    gc_figures = gc_state(server, since, gc_processes) if gc_processes else None
    # Buffered metric and cache rows: their writing is counted (all of it, past the writers'
    # flush interval, where the processes that write them are counted too).
    await asyncio.sleep(FLUSHED_S if others else 0.3)
    cpu_ms = (server.cpu_s() - cpu_before) * 1000 / phase.requests
    measured = Measured(result, cpu_ms, rss_before, server.rss_mb())
    if others:
        measured.others_ms = cpu_spent(others_before, others()) * 1000 / phase.requests
    if gc_figures is not None:
        measured.gc, full_after = gc_figures
        if full_after is not None and full_before is not None:
            measured.gc_full = full_after - full_before
    if result.errors:
        raise RuntimeError(f"{server.name}, {phase.label}: {result.errors} errors, e.g. {result.error_sample}")
    return measured


SPIN = """\
import sys, time
start, end = float(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
began, n = time.time(), 0
while time.time() < end:
    for _ in range(1000):
        pass
    n += 1
print(n / (time.time() - began))
"""


def machine_work(processes: int, seconds: float = 1.0) -> float:
    """Loops per second of a CPU-bound Python loop run in `processes` processes at once, in
    all: how the machine itself scales from one busy core to several, with no server, no
    network and no generator (two virtual CPUs may share one physical core's resources)."""
    start = time.time() + 0.5
    children = [subprocess.Popen([sys.executable, "-c", SPIN, str(start), str(start + seconds)], stdout=subprocess.PIPE)
                for _ in range(processes)]  # fmt: skip
    return sum(float(child.communicate()[0]) for child in children)


def start_gateway(env: dict[str, str], workdir: Path, processes: int, name: str = "gateway") -> Served:
    port = free_port()
    command = [sys.executable, "manage.py", "serve", "--processes", str(processes), "--port", str(port)]
    gateway = start(name, command, env, workdir, port)
    gateway.wait_ready("/healthz", timeout=120)
    return gateway


GC_FIGURE = "largest GC pause CPU / wall / wall not preempted, ms (preempted, gen-2)"


def gc_pair(passes: list[Measured]) -> str:
    """The largest collector pause over the passes (its CPU time, its wall time, the wall time
    of those the kernel did not preempt), the preempted collections and the generation-2 runs."""
    figures = [m.gc for m in passes if m.gc is not None]
    full = [m.gc_full for m in passes if m.gc_full is not None]
    if not figures:
        return "n/a"
    return (f"{fmt(max(f.cpu_ms for f in figures))} / {fmt(max(f.wall_ms for f in figures))} / "
            f"{fmt(max(f.unpreempted_ms for f in figures))} ({sum(f.preempted for f in figures)}, "
            f"{sum(full) if full else 'n/a'})")  # fmt: skip


def rows_for(phase: Phase, passes: list[dict[str, Measured]]) -> list[list[str]]:
    """A phase's figures, each the median over the passes (the servers take turns in every
    pass, so a slow moment of the machine falls on all of them); the last column gives the
    ratio to LiteLLM pass by pass, to show the spread."""
    rows = []

    def add(metric: str, of: Callable[[Measured, Measured], float], digits: int = 3, vs_direct: bool = True) -> None:
        def median_of(name: str) -> float | None:
            values = [of(figures[name], figures["direct"]) for figures in passes if name in figures]
            return statistics.median(values) if values else None

        g, d, lite = median_of("gateway"), median_of("direct"), median_of("litellm")
        each = [ratio(of(f["gateway"], f["direct"]), of(f["litellm"], f["direct"])) for f in passes if "litellm" in f]
        rows.append([phase.label if not rows else "", metric, fmt(g, digits), fmt(d, digits) if vs_direct else "",
                     ratio(g, d) if vs_direct else "", fmt(lite, digits), ratio(g, lite),
                     " ".join(r.rstrip("x") for r in each)])  # fmt: skip

    add("requests/s", lambda m, _: m.result.throughput, 1)
    add("added latency p50, ms", lambda m, d: m.result.pct(50) - d.result.pct(50), vs_direct=False)
    add("added latency p99, ms", lambda m, d: m.result.pct(99) - d.result.pct(99), vs_direct=False)
    add(f"server CPU, ms/{'stream' if phase.stream else 'request'}", lambda m, _: m.cpu_ms)
    gateway = [figures["gateway"] for figures in passes]
    rows.append(["", GC_FIGURE, gc_pair(gateway), "", "", "n/a", "", ""])
    add("resident MB before", lambda m, _: m.rss_before, 1)
    add("resident MB after", lambda m, _: m.rss_after, 1)
    return rows


async def run_profile(args: argparse.Namespace, set_up: Throwaway, litellm: bool) -> int:
    env, workdir = set_up.env, set_up.workdir
    key = set_up.prepare()
    upstream_port = free_port()
    upstream_env = {name: value for name, value in env.items() if not name.endswith("_API_KEY")}
    upstream = start("upstream", [sys.executable, "-m", "benchmarks.harness.servers", str(upstream_port)],
                     {**upstream_env, "ECHO_API_KEY": HTTP_KEY}, workdir, upstream_port)  # fmt: skip
    upstream.wait_ready("/healthz", timeout=120)
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    set_up.script(HTTP_CATALOG, HTTP_MODEL, upstream_url, HTTP_KEY_ENV)
    servers = [upstream]
    try:
        gateway = start_gateway(env, workdir, 1)
        servers.append(gateway)
        lite = None
        if litellm:
            config = workdir / "litellm.yaml"
            config.write_text(textwrap.dedent(f"""\
                model_list:
                  - model_name: {HTTP_MODEL}
                    litellm_params: {{model: openai/echo, api_base: "{upstream_url}", api_key: "{HTTP_KEY}"}}
                """))  # fmt: skip
            port = free_port()
            # None of the gateway's services: LiteLLM would take DATABASE_URL for its own.
            lite_env = {name: value for name, value in upstream_env.items() if not name.endswith("_URL")}
            lite_env |= {
                "LITELLM_LOG": "ERROR",
                "LITELLM_MASTER_KEY": LITELLM_KEY,
            }  # it checks a key, as the gateway does
            lite = start("litellm", [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--port",
                                     str(port), "--num_workers", "1"], lite_env, workdir, port)  # fmt: skip
            lite.wait_ready("/health/liveliness", timeout=120)
            servers.append(lite)
        phases = [
            Phase("1 at a time", False, args.sequential, 1),
            Phase("16 connections", False, args.requests, 16),
            Phase("64 connections", False, args.requests, 64),
            Phase("streams, 1 at a time", True, args.stream_sequential, 1),
            Phase("streams, 16 at once", True, args.stream_requests, 16),
        ]
        rows: list[list[str]] = []
        for number, phase in enumerate(phases):
            passes = []
            for turn in range(args.passes):
                tag = f"{number}.{turn}-"
                figures = {
                    "direct": await measure(upstream, phase, HTTP_KEY, HTTP_MODEL, "d" + tag),
                    "gateway": await measure(gateway, phase, key, HTTP_MODEL, "g" + tag, gc_processes=1),
                }
                if lite is not None:
                    figures["litellm"] = await measure(lite, phase, LITELLM_KEY, HTTP_MODEL, "l" + tag)
                passes.append(figures)
            rows += rows_for(phase, passes)
        headers = ["scenario", "figure", "gateway", "direct", "vs direct", "LiteLLM", "vs LiteLLM", "each pass"]
        print(table(headers, rows))
        print(f"figures: medians over {args.passes} pass(es), the servers taking turns in each; ratios: the "
              "gateway's figure / the direct call's and / LiteLLM's, from this run; each pass: the ratio to "
              "LiteLLM pass by pass; added latency: p50 and p99 minus the direct call's; GC pause: the "
              "largest over the passes, in CPU time, in wall time, and in wall time of the collections "
              "during which the kernel did not preempt the gateway (it shares the cores), with the count "
              "of those it did")  # fmt: skip
        print()
        gateway.stop()
        servers.remove(gateway)
        # Every process count is served at once and they take turns pass by pass, so that the
        # machine's drift over the run falls on all of them alike.
        phase = Phase("64 connections", False, args.requests, 64)
        served = {count: start_gateway(env, workdir, count, name=f"gateway-{count}") for count in args.processes}
        servers += served.values()
        names = SERVICES if args.profile == "prod" else ()

        if names and not named_processes_cpu_s(names):
            print(f"note: no process named {' or '.join(names)} on this machine's /proc (elsewhere, or in another "
                  "container): others' CPU below leaves them out")  # fmt: skip
            names = ()

        def others() -> dict[tuple[int, int], float]:
            return {(pid, 0): process_cpu_s(pid) for pid in process_tree(upstream.pid)} | (
                named_processes_cpu_s(names) if names else {}
            )

        runs: dict[int, list[Measured]] = {count: [] for count in args.processes}
        spins: dict[int, list[float]] = {count: [] for count in args.processes}
        for turn in range(args.passes):
            # The order flips every pass: what one run leaves behind does not always fall on the same count.
            for count, server in list(served.items())[:: 1 if turn % 2 == 0 else -1]:
                runs[count].append(await measure(server, phase, key, HTTP_MODEL, f"s{count}.{turn}-",
                                                 gc_processes=count, others=others))  # fmt: skip
            for count in args.processes:
                spins[count].append(machine_work(count))
        first = runs[args.processes[0]]
        one = statistics.median(m.result.throughput for m in first)
        scale_rows = []
        cores = os.cpu_count() or 1
        for count, measured in runs.items():
            throughput = statistics.median(m.result.throughput for m in measured)
            share = statistics.median(m.result.client_cpu_s / m.result.wall_s for m in measured) / cores
            others_ms = statistics.median(m.others_ms or 0.0 for m in measured)
            whole_ms = statistics.median(m.whole_ms for m in measured)
            pairs = zip(measured, first, strict=True)
            each = " ".join(ratio(m.result.throughput, f.result.throughput) for m, f in pairs)
            scale_rows.append([f"{count} process(es)", fmt(throughput, 1), ratio(throughput, one),
                               fmt(statistics.median(m.cpu_ms for m in measured), 3), f"{share:.0%}", fmt(others_ms, 3),
                               ratio(cores * 1000 / whole_ms, one), gc_pair(measured), each])  # fmt: skip
        base = statistics.median(spins[args.processes[0]])
        for count, done in spins.items():
            pairs = zip(done, spins[args.processes[0]], strict=True)
            scale_rows.append([f"CPU-bound loop, {count} process(es)", "", ratio(statistics.median(done), base), "",
                               "", "", "", "", " ".join(ratio(d, f) for d, f in pairs)])  # fmt: skip
        print(table(["gateway, 64 connections", "requests/s", f"vs {args.processes[0]} process(es)", "CPU ms/req",
                     "generator's CPU share", "others' CPU ms/req", "cores' bound", GC_FIGURE,
                     "each pass"], scale_rows))  # fmt: skip
        print(f"medians over {args.passes} pass(es) per process count, the counts taking turns in each; each pass: "
              f"requests/s against {args.processes[0]} process(es) in the same pass; others' CPU: the upstream's"
              + (", PostgreSQL's and Redis's" if names else "") + " per request; cores' bound: the requests/s "
              f"that {cores} cores' CPU would allow at the CPU per request of the processes counted (the gateway's, "
              f"the others', the generator's), against the requests/s measured with {args.processes[0]} process(es); "
              "CPU-bound loop: a Python loop alone in that "
              "many processes at once, 1 s after each pass, against one: the machine's own scaling (the ceiling for "
              "the gateway's)")  # fmt: skip
    finally:
        for server in reversed(servers):
            server.stop()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("proxy", __doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["embedded", "prod"], default="embedded")
    parser.add_argument("--litellm", choices=["auto", "install", "off"], default="auto")
    parser.add_argument("--processes", default="1,2", help="process counts for the scaling run (1,2)")
    parser.add_argument("--sequential", type=int, default=1000, help="requests one at a time (1000)")
    parser.add_argument("--requests", type=int, default=4000, help="requests at 16 and 64 connections (4000)")
    parser.add_argument("--stream-sequential", type=int, default=300, help="streams one at a time (300)")
    parser.add_argument("--stream-requests", type=int, default=1500, help="streams 16 at once (1500)")
    parser.add_argument("--passes", type=int, default=3, help="passes per scenario, medians reported (3)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"requests before each phase ({WARMUP})")
    args = parser.parse_args(argv)
    args.processes = [int(part) for part in args.processes.split(",") if part.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    global WARMUP
    args = parse_args(argv)
    WARMUP = args.warmup
    reason = litellm_reason(args.litellm)
    print(
        f"proxy benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, profile {args.profile}; "
        f"upstream benchmarks.harness.servers (fast); {TOKENS} tokens per answer; LiteLLM: "
        + (f"{litellm_version()} ({LITELLM_VENV}, 1 worker)" if reason is None else f"skipped, {reason}")
    )
    problem = services_unreachable() if args.profile == "prod" else None
    if problem:
        print(f"--profile prod needs PostgreSQL and Redis: {problem}")
        return 1
    profile = services_profile() if args.profile == "prod" else contextlib.nullcontext({})
    extra = {HTTP_KEY_ENV: HTTP_KEY, "LLMOPS_GC_STATS": "1"}
    with profile as profile_env, throwaway({**profile_env, **extra}, open_files=4096) as set_up:
        return loop_run(run_profile(args, set_up, reason is None))


if __name__ == "__main__":
    raise SystemExit(main())
