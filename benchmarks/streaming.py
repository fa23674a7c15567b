"""Streaming: time to first token through the gateway, and how many streams one daphne holds.

    .venv/bin/python -m benchmarks.streaming [--ttft-requests 80] [--ttft-ms 200]
        [--levels 50,100,250,500] [--transports ws,sse] [--tokens-per-s 10] [--stream-tokens 40]
        [--chats-per-socket 1] [--tolerance 0.2]

It builds a throwaway gateway (temporary SQLite database, migrated, seeded, one API key)
served by one daphne process (listening as `make run` does, backlog 1024), and serves
`benchmarks.harness.streams:bare_app` with a second daphne: a bare ASGI app that speaks the
same WebSocket protocol (`delta` then `done` events) and the same SSE chunks, paced by the
same script, with no Django, no pipeline and no gateway work: what the transport alone
costs through the same daphne and the same client. Every gateway request goes to the simulated
model `sim-small`, scripted per request (`simulate`: time to first token, token rate,
answer length), with the answer cache bypassed. The client is this process: a minimal
RFC 6455 WebSocket client and an HTTP/1.1 SSE reader on raw asyncio streams, with garbage
collection off while a phase runs.

1. Time to first token (TTFT), one stream at a time (`--ttft-requests` per transport; the
   bare app gets `--baseline-ttft-requests`), the upstream scripted to take `--ttft-ms`
   before its first token. TTFT is measured at the client, from writing the request (the
   WebSocket `chat` message on an open socket; the POST on a kept-alive connection) to
   reading the first token (a `delta` event; the first SSE chunk with content). Rows:
   - median / p99 TTFT against the scripted upstream TTFT (ratio 1.00x = no delay added);
   - median / p99 TTFT minus the scripted TTFT: what the gateway adds (the figure the
     issue asks for), against the same for the bare app (what daphne, the loopback and
     this client add anyway);
   - for WebSocket, the gateway's own `ttft_ms` from its `done` event (measured inside
     the pipeline): the rest of the added time is the consumer, daphne and the socket.

2. Streams held at once, for each of `--levels` (default 50, 100, 250, 500; give more, e.g.
   `--levels 500,1000,1500,2000`, to find the limit) and each of `--transports`: that many
   streams, each scripted at `--tokens-per-s` (default 10, one token every 100 ms) for
   `--stream-tokens` tokens (default 40: 4 s), with no wait for the first token.
   Connections are opened before the clock starts (the `connect s` column); stream i starts
   `--ramp-s` x i / N after the first (default 1 s), so all N are in flight at once for
   about 3 s and their tokens are spread over each 100 ms instead of due at one instant.
   WebSocket runs `--chats-per-socket` chats on each socket (default 1: one socket per
   stream, as a browser tab does); SSE is one request per kept-alive connection. The bare
   app runs the top level only. Two tables:
   - Steady window: from `--settle-s` (default 0.5 s) after the last stream's first token,
     time for the backlog the burst of starts left to drain, to the first stream's last
     token: all N in flight, none starting or ending. This is the figure the issue asks
     for: streams held at a steady token rate. (When streams are too short for such a
     window, `window s` says none and the row shows the whole phase.)
   - Whole phase: from the first request to the last token, so it also shows what starting
     N streams within `--ramp-s` costs the streams already running (a burst of arrivals).
   Columns:
   - held: the most streams the client saw in flight at once (between a stream's first
     and last token); complete: streams that got every token and their end event;
   - gap p50 / p99: time between consecutive tokens of a stream as the client saw them,
     against the scripted gap (ratio; 1.00x is the script's own pace);
   - late p99 / max: how far token i arrived after its stream's best-case schedule (the
     least delayed token of that stream + i x gap). The simulated upstream paces against
     the clock, so a server that falls behind shows here as growing lateness, even where
     stretched gaps are made up by shorter ones later;
   - server CPU: the daphne process (all threads) as a share of one core, and its CPU per
     token delivered (us/token); CPU in ramp: the same over the first `--ramp-s`, while
     the streams start; ms/stream: its CPU per stream beyond the steady cost of the
     stream's tokens (accepting, starting and finishing it: the whole phase's CPU less the
     steady us/token times all tokens); server RSS MB: its peak resident memory;
   - client CPU, client lag p99 / max (how late this process's event loop ran a 5 ms
     ticker): a client near 100 % CPU or with lags of more than a few ms would be
     measuring itself, not the server;
   - verdict: "held" when every stream completed, the p99 gap is within `--tolerance`
     (default 20 %) of the scripted gap and the p99 lateness within the same share of one
     gap; "GROWS" otherwise.

Read the highest level the gateway "held" in the steady window (the summary lines say it,
and where the delay first grew) as how many concurrent streams one daphne process holds at
this token rate without the per-token delay growing; the bare app's row at the top level
is what daphne alone does at that load (its us/token is daphne's own cost per token), and
the whole-phase verdicts say how large a burst of new streams the running ones absorb. On
a 2-core machine the client and the server share the CPUs: the client columns show how
much the client took. Numbers move with whatever else runs on the machine.

The exit code is 0 when every stream completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness.client import HOST, Failures
from benchmarks.harness.command import command, options
from benchmarks.harness.figures import fmt, machine, percentile, process_cpu_s, process_memory_kb, ratio, table
from benchmarks.harness.gateway import serving, throwaway
from benchmarks.harness.streams import SseConnection, WebSocket

MODEL = "sim-small"
SSE_PATH = "/v1/chat/completions"
DELTA_PREFIX = b'{"type": "delta"'
LAG_TICK_S = 0.005
BARE_APP = "benchmarks.harness.streams:bare_app"


def sse_request(port: int, key: str | None, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {SSE_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def chat_body(text: str, *, ttft_ms: float, tokens_per_s: float, tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "simulate": {"ttft_ms": ttft_ms, "tokens_per_s": tokens_per_s, "output_tokens": tokens, "latency_ms": 0},
        "cache": {"mode": "bypass"},
    }


class LagMonitor:
    """How late this process's event loop runs a 5 ms ticker: the client's own queueing."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.lags_ms.append(max(0.0, (time.perf_counter() - due) * 1000))

    def __enter__(self) -> LagMonitor:
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


# --------------------------------------------------------------------------- time to first token


@dataclass
class TtftResult(Failures):
    ttft_ms: list[float] = field(default_factory=list)
    server_ttft_ms: list[float] = field(default_factory=list)


async def ttft_ws(port: int, key: str | None, count: int, ttft_ms: float, tag: str) -> TtftResult:
    result = TtftResult()
    ws = WebSocket(port, key)
    await ws.connect()
    try:
        for index in range(count):
            message = {
                "type": "chat",
                "id": index,
                **chat_body(f"ttft {tag} {index}", ttft_ms=ttft_ms, tokens_per_s=0, tokens=8),
            }
            text = json.dumps(message)
            started = time.perf_counter()
            ws.send_text(text)
            first = 0.0
            while True:
                arrived, messages = await ws.receive()
                event = None
                for raw in messages:
                    event = json.loads(raw)
                    if event["type"] == "delta" and not first:
                        first = arrived
                    elif event["type"] in ("done", "error"):
                        break
                if event is not None and event["type"] in ("done", "error"):
                    break
            if event["type"] == "error" or not first:
                result.fail(f"{event}")
                continue
            result.ttft_ms.append((first - started) * 1000)
            if event.get("ttft_ms") is not None:
                result.server_ttft_ms.append(event["ttft_ms"])
    finally:
        await ws.close()
    return result


async def ttft_sse(port: int, key: str | None, count: int, ttft_ms: float, tag: str) -> TtftResult:
    result = TtftResult()
    conn = SseConnection(port)
    await conn.connect()
    try:
        for index in range(count):
            body = {**chat_body(f"ttft {tag} {index}", ttft_ms=ttft_ms, tokens_per_s=0, tokens=8), "stream": True}
            request = sse_request(port, key, body)
            times: list[float] = []
            started = time.perf_counter()
            problem = await conn.stream(request, times)
            if problem or not times:
                result.fail(problem or "no token arrived")
                continue
            result.ttft_ms.append((times[0] - started) * 1000)
    finally:
        conn.close()
    return result


async def measure_ttft(transport: str, port: int, key: str | None, count: int, ttft_ms: float, tag: str) -> TtftResult:
    run = ttft_ws if transport == "ws" else ttft_sse
    gc.collect()
    gc.disable()
    try:
        return await run(port, key, count, ttft_ms, tag)
    finally:
        gc.enable()


# --------------------------------------------------------------------------- streams held at once


@dataclass
class Stats:
    """Gaps and lateness of the tokens in one time window, and the CPU spent in it."""

    seconds: float = float("nan")
    tokens: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")  # share of one core
    client_cpu: float = float("nan")

    @property
    def us_per_token(self) -> float | None:
        if not self.tokens or self.server_cpu != self.server_cpu:
            return None
        return self.server_cpu * self.seconds * 1e6 / self.tokens


@dataclass
class Phase(Failures):
    server: str
    transport: str
    streams: int
    sockets: int
    times: list[list[float]] = field(default_factory=list)
    connect_s: float = 0.0
    go: float = 0.0
    wall_s: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, server CPU, client CPU)
    lags_ms: list[float] = field(default_factory=list)
    whole: Stats = field(default_factory=Stats)
    steady: Stats | None = None
    ramp_cpu: float = float("nan")
    rss_mb: float = 0.0

    def complete(self, expected: int) -> int:
        return sum(1 for t in self.times if len(t) == expected)

    def held(self) -> int:
        """The most streams in flight at once, from each stream's first to last token."""
        edges = []
        for t in self.times:
            if t:
                edges += [(t[0], 1), (t[-1], -1)]
        edges.sort()
        peak = current = 0
        for _, step in edges:
            current += step
            peak = max(peak, current)
        return peak

    def cpu(self, start: float, end: float) -> tuple[float, float]:
        """Server and client CPU as shares of one core between the samples nearest inside [start, end]."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.2:
            return float("nan"), float("nan")
        (t0, s0, c0), (t1, s1, c1) = inside[0], inside[-1]
        return (s1 - s0) / (t1 - t0), (c1 - c0) / (t1 - t0)

    def stream_cost_ms(self) -> float | None:
        """Server CPU per stream beyond its tokens (accepting, starting and finishing it), ms:
        the whole phase's CPU less the steady window's CPU per token times every token."""
        steady, whole = self.steady, self.whole
        if steady is None or steady.us_per_token is None or whole.server_cpu != whole.server_cpu:
            return None
        extra_s = whole.server_cpu * whole.seconds - steady.us_per_token * 1e-6 * whole.tokens
        return extra_s * 1000 / self.streams

    def window(self, start: float, end: float, gap_s: float) -> Stats:
        stats = Stats(seconds=end - start)
        for t in self.times:
            # The stream's own best case: the upstream paces token i at (its start + i x gap), so the
            # least delayed token fixes the schedule and every other token's lateness is measured from it.
            best = min(arrived - i * gap_s for i, arrived in enumerate(t)) if t else 0.0
            for i, arrived in enumerate(t):
                if arrived < start:
                    continue
                if arrived > end:
                    break
                stats.tokens += 1
                stats.lateness_ms.append((arrived - i * gap_s - best) * 1000)
                if i and t[i - 1] >= start:
                    stats.gaps_ms.append((arrived - t[i - 1]) * 1000)
        stats.server_cpu, stats.client_cpu = self.cpu(start, end)
        return stats

    def analyse(self, gap_s: float, ramp_s: float, settle_s: float) -> None:
        firsts = [t[0] for t in self.times if t]
        lasts = [t[-1] for t in self.times if t]
        if not firsts:
            return
        self.whole = self.window(self.go, self.go + self.wall_s, gap_s)
        self.whole.server_cpu, self.whole.client_cpu = self.cpu(0.0, float("inf"))
        self.ramp_cpu = self.cpu(self.go, self.go + max(ramp_s, 0.3))[0]
        # The steady window: every stream has started, the backlog of their starts has had
        # `settle_s` to drain, and none has ended yet.
        start, end = max(firsts) + max(gap_s, settle_s), min(lasts)
        if end - start >= 3 * gap_s and end - start >= 0.3:
            self.steady = self.window(start, end, gap_s)


async def _connect_all(connect: Callable[[], Awaitable[None]], count: int, limit: int = 64) -> None:
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        async with gate:
            await connect()

    await asyncio.gather(*(one() for _ in range(count)))


async def hold_ws(phase: Phase, port: int, key: str | None, args: argparse.Namespace, tag: str) -> None:
    n, per_socket = phase.streams, args.chats_per_socket
    sockets = [WebSocket(port, key) for _ in range(math.ceil(n / per_socket))]
    phase.sockets = len(sockets)
    pending = iter(sockets)
    started = time.perf_counter()
    await _connect_all(lambda: next(pending).connect(), len(sockets))
    phase.connect_s = time.perf_counter() - started
    times = phase.times = [[] for _ in range(n)]
    owners: list[list[int]] = [[] for _ in sockets]
    for index in range(n):
        owners[index % len(sockets)].append(index)
    messages = [
        json.dumps(
            {
                "type": "chat",
                "id": index,
                **chat_body(
                    f"hold {tag} {index}", ttft_ms=0, tokens_per_s=args.tokens_per_s, tokens=args.stream_tokens
                ),
            }
        )
        for index in range(n)
    ]
    deadline = args.stream_tokens / args.tokens_per_s + args.ramp_s + 60

    async def read(ws: WebSocket, mine: list[int]) -> None:
        left = len(mine)
        try:
            async with asyncio.timeout(deadline):
                while left:
                    arrived, raws = await ws.receive()
                    for raw in raws:
                        if raw.startswith(DELTA_PREFIX):
                            times[json.loads(raw)["id"]].append(arrived)
                            continue
                        event = json.loads(raw)
                        if event["type"] == "done":
                            left -= 1
                        elif event["type"] == "error":
                            left -= 1
                            phase.fail(f"error event: {raw[:300]!r}")
        except (OSError, TimeoutError) as exc:
            phase.fail(f"{len(mine)} chats on a socket, {left} unfinished: {type(exc).__name__}: {exc}")

    async def send_all(go: float) -> None:
        for index in range(n):
            wait = go + args.ramp_s * index / n - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            sockets[index % len(sockets)].send_text(messages[index])

    readers = [asyncio.ensure_future(read(ws, mine)) for ws, mine in zip(sockets, owners, strict=True)]
    await _run_phase(phase, port, send_all, readers)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def hold_sse(phase: Phase, port: int, key: str | None, args: argparse.Namespace, tag: str) -> None:
    n = phase.streams
    conns = [SseConnection(port) for _ in range(n)]
    phase.sockets = n
    pending = iter(conns)
    started = time.perf_counter()
    await _connect_all(lambda: next(pending).connect(), n)
    phase.connect_s = time.perf_counter() - started
    times = phase.times = [[] for _ in range(n)]
    requests = [
        sse_request(
            port,
            key,
            {
                **chat_body(
                    f"hold {tag} {index}", ttft_ms=0, tokens_per_s=args.tokens_per_s, tokens=args.stream_tokens
                ),
                "stream": True,
            },
        )
        for index in range(n)
    ]
    deadline = args.stream_tokens / args.tokens_per_s + args.ramp_s + 60
    go_event = asyncio.Event()
    go_at = [0.0]

    async def one(index: int) -> None:
        await go_event.wait()
        wait = go_at[0] + args.ramp_s * index / n - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(deadline):
                problem = await conns[index].stream(requests[index], times[index])
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            phase.fail(problem)

    async def start(go: float) -> None:
        go_at[0] = go
        go_event.set()

    streams = [asyncio.ensure_future(one(index)) for index in range(n)]
    await _run_phase(phase, port, start, streams)
    for conn in conns:
        conn.close()


SERVER_PIDS: dict[int, int] = {}


async def _run_phase(
    phase: Phase, port: int, start: Callable[[float], Awaitable[None]], tasks: list[asyncio.Future[None]]
) -> None:
    pid = SERVER_PIDS[port]
    samples = phase.samples

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter(), process_cpu_s(pid), time.process_time()))
            phase.rss_mb = max(phase.rss_mb, process_memory_kb(pid)[0] / 1024)
            await asyncio.sleep(0.05)

    gc.collect()
    gc.disable()
    sampler = asyncio.ensure_future(sample())
    try:
        with LagMonitor() as lag:
            await asyncio.sleep(0.05)
            go = phase.go = time.perf_counter()
            await start(go)
            await asyncio.gather(*tasks)
            phase.wall_s = time.perf_counter() - go
            samples.append((time.perf_counter(), process_cpu_s(pid), time.process_time()))
            phase.lags_ms = lag.lags_ms
    finally:
        sampler.cancel()
        gc.enable()


# --------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "streaming", "Time to first token through the gateway and streams one daphne holds, with same-run baselines."
    )
    parser.add_argument("--ttft-requests", type=int, default=80, help="sequential streams per transport (80)")
    parser.add_argument("--baseline-ttft-requests", type=int, default=20, help="the same on the bare app (20)")
    parser.add_argument("--ttft-ms", type=float, default=200, help="the upstream's scripted TTFT, ms (200)")
    parser.add_argument("--levels", default="50,100,250,500", help="concurrent streams to try (50,100,250,500)")
    parser.add_argument("--transports", default="ws,sse", help="ws, sse or both (ws,sse)")
    parser.add_argument("--tokens-per-s", type=float, default=10, help="scripted token rate per stream (10)")
    parser.add_argument("--stream-tokens", type=int, default=40, help="tokens per held stream (40)")
    parser.add_argument("--ramp-s", type=float, default=1.0, help="streams start spread over this many s (1.0)")
    parser.add_argument(
        "--settle-s", type=float, default=0.5, help="steady window starts this long after the last start (0.5)"
    )
    parser.add_argument("--chats-per-socket", type=int, default=1, help="WebSocket chats per socket (1)")
    parser.add_argument("--tolerance", type=float, default=0.2, help="share of the gap a p99 may add (0.2)")
    parser.add_argument("--no-baseline-hold", action="store_true", help="skip the bare app's top-level phase")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up streams per server and transport (10)")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(level) for level in args.levels.split(",") if level.strip()]
    except ValueError:
        parser.error("--levels must be comma-separated integers")
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not set(args.transports) <= {"ws", "sse"} or not args.transports:
        parser.error("--transports takes ws, sse or ws,sse")
    if any(level < 1 for level in args.levels) or args.tokens_per_s <= 0 or args.stream_tokens < 2:
        parser.error("--levels must be positive, --tokens-per-s above 0, --stream-tokens at least 2")
    if args.chats_per_socket < 1 or args.ttft_requests < 0 or args.baseline_ttft_requests < 0 or args.ramp_s < 0:
        parser.error("--chats-per-socket must be at least 1; counts and --ramp-s must not be negative")
    return args


TRANSPORT_NAMES = {"ws": "WebSocket", "sse": "SSE"}


def ttft_rows(transport: str, gateway: TtftResult, bare: TtftResult | None, scripted: float) -> list[list[str]]:
    name = TRANSPORT_NAMES[transport]
    rows = []
    for label, q in (("median", 50), ("p99", 99)):
        g = percentile(gateway.ttft_ms, q)
        rows.append([name, f"{label} TTFT, ms", fmt(g), fmt(scripted), ratio(g, scripted), "scripted upstream TTFT"])
    for label, q in (("median", 50), ("p99", 99)):
        g = percentile(gateway.ttft_ms, q) - scripted
        b = percentile(bare.ttft_ms, q) - scripted if bare and bare.ttft_ms else None
        rows.append(
            [name, f"{label} TTFT - upstream TTFT, ms", fmt(g), fmt(b), ratio(g, b), "bare ASGI app, same daphne"]
        )
    if gateway.server_ttft_ms:
        for label, q in (("median", 50), ("p99", 99)):
            g = percentile(gateway.server_ttft_ms, q)
            rows.append(
                [
                    name,
                    f"{label} gateway's own ttft_ms (done event)",
                    fmt(g),
                    fmt(scripted),
                    ratio(g, scripted),
                    "scripted upstream TTFT",
                ]
            )
    for i, row in enumerate(rows):
        if i:
            row[0] = ""
    return rows


def percent(share: float | None) -> str:
    return "n/a" if share is None or share != share else f"{share * 100:.0f}%"


def hold_rows(phase: Phase, args: argparse.Namespace, gap_ms: float) -> tuple[list[str], list[str], bool, bool]:
    """The phase's rows in the steady-window and whole-phase tables, and the verdict of each."""
    complete = phase.complete(args.stream_tokens)
    name = f"{phase.server} {TRANSPORT_NAMES[phase.transport]}"
    judged = phase.steady or phase.whole
    gap50, gap99 = percentile(judged.gaps_ms, 50), percentile(judged.gaps_ms, 99)
    late99 = percentile(judged.lateness_ms, 99)
    held = (
        not phase.errors
        and complete == phase.streams
        and gap99 <= gap_ms * (1 + args.tolerance)
        and late99 <= gap_ms * args.tolerance
    )
    steady = [
        name,
        f"{phase.streams}",
        f"{phase.held()}",
        f"{complete}",
        fmt(phase.steady.seconds, 1) if phase.steady else "none",
        fmt(gap50, 1),
        ratio(gap50, gap_ms),
        fmt(gap99, 1),
        ratio(gap99, gap_ms),
        fmt(late99, 1),
        fmt(max(judged.lateness_ms, default=float("nan")), 1),
        percent(judged.server_cpu),
        fmt(judged.us_per_token, 0),
        percent(judged.client_cpu),
        "held" if held else "GROWS",
    ]
    whole = phase.whole
    whole_held = (
        not phase.errors
        and complete == phase.streams
        and percentile(whole.gaps_ms, 99) <= gap_ms * (1 + args.tolerance)
        and percentile(whole.lateness_ms, 99) <= gap_ms * args.tolerance
    )
    whole_row = [
        name,
        f"{phase.streams}",
        f"{phase.sockets}",
        fmt(phase.connect_s, 2),
        fmt(phase.wall_s, 2),
        fmt(percentile(whole.gaps_ms, 99), 1),
        ratio(percentile(whole.gaps_ms, 99), gap_ms),
        fmt(percentile(whole.lateness_ms, 99), 1),
        fmt(max(whole.lateness_ms, default=float("nan")), 1),
        percent(phase.ramp_cpu),
        percent(whole.server_cpu),
        fmt(whole.us_per_token, 0),
        fmt(phase.stream_cost_ms(), 2),
        percent(whole.client_cpu),
        fmt(percentile(phase.lags_ms, 99), 1),
        fmt(max(phase.lags_ms, default=float("nan")), 1),
        fmt(phase.rss_mb, 0),
        "held" if whole_held else "GROWS",
    ]
    return steady, whole_row, held, whole_held


async def run(args: argparse.Namespace) -> int:
    top = max(args.levels, default=0)
    gap_ms = 1000 / args.tokens_per_s
    failures = 0
    extra = {}
    if args.chats_per_socket > 8:
        extra["LLMOPS_WS_MAX_CHATS"] = str(args.chats_per_socket)
    with throwaway(extra, open_files=2 * top + 1024) as set_up:
        key = set_up.prepare()
        gateway = set_up.daphne(backlog=1024)
        bare = set_up.daphne("bare", BARE_APP, backlog=1024)
        with serving(gateway, bare):
            SERVER_PIDS[gateway.port], SERVER_PIDS[bare.port] = gateway.pid, bare.pid
            print(machine("streaming benchmark", set_up.elapsed_s))
            print(
                f"gateway: daphne pid {gateway.pid}, model {MODEL} (simulated, answer cache bypassed); baseline: "
                f"{BARE_APP} under daphne pid {bare.pid}; client: this process "
                f"(pid {os.getpid()}), raw asyncio WebSocket (RFC 6455) and SSE readers"
            )
            for transport in args.transports:
                if args.warmup:
                    for server, k in ((gateway, key), (bare, None)):
                        warm = await measure_ttft(transport, server.port, k, args.warmup, 0, "warm-up")
                        if warm.errors:
                            raise RuntimeError(f"warm-up of {server.name} {transport} failed: {warm.error_sample}")

            if args.ttft_requests:
                print()
                print(
                    f"1. Time to first token, one stream at a time: {args.ttft_requests} per transport through the "
                    f"gateway, {args.baseline_ttft_requests} through the bare app; upstream scripted to "
                    f"{args.ttft_ms:g} ms to the first token, then 8 tokens at once"
                )
                rows = []
                for transport in args.transports:
                    bare_result = None
                    if args.baseline_ttft_requests:
                        bare_result = await measure_ttft(
                            transport, bare.port, None, args.baseline_ttft_requests, args.ttft_ms, "bare"
                        )
                    gate_result = await measure_ttft(
                        transport, gateway.port, key, args.ttft_requests, args.ttft_ms, "gw"
                    )
                    for name, result in (("bare app", bare_result), ("gateway", gate_result)):
                        if result is not None and result.errors:
                            failures += result.errors
                            print(f"!! TTFT {transport}, {name}: {result.errors} failed, e.g. {result.error_sample}")
                    rows += ttft_rows(transport, gate_result, bare_result, args.ttft_ms)
                print(table(["transport", "metric", "measured", "baseline", "ratio", "baseline is"], rows))

            if args.levels:
                print()
                per_socket = (
                    f"{args.chats_per_socket} chats per WebSocket"
                    if args.chats_per_socket > 1
                    else "one stream per WebSocket"
                )
                print(
                    f"2. Streams held at once: each stream {args.stream_tokens} tokens at {args.tokens_per_s:g} "
                    f"tokens/s (scripted gap {gap_ms:g} ms), no wait for the first token, starts spread over "
                    f"{args.ramp_s:g} s; "
                    f"{per_socket}, one SSE request per connection"
                )
                plan = [
                    ("gateway", gateway, key, level, transport)
                    for transport in args.transports
                    for level in args.levels
                ]
                if not args.no_baseline_hold:
                    plan += [("bare", bare, None, top, transport) for transport in args.transports]
                steady_rows, whole_rows = [], []
                held_levels: dict[str, list[int]] = {t: [] for t in args.transports}
                whole_levels: dict[str, list[int]] = {t: [] for t in args.transports}
                for server_name, server, k, level, transport in plan:
                    phase = Phase(server=server_name, transport=transport, streams=level, sockets=0)
                    hold = hold_ws if transport == "ws" else hold_sse
                    await hold(phase, server.port, k, args, f"{server_name} {transport} {level}")
                    phase.analyse(gap_ms / 1000, args.ramp_s, args.settle_s)
                    steady_row, whole_row, held, whole_held = hold_rows(phase, args, gap_ms)
                    steady_rows.append(steady_row)
                    whole_rows.append(whole_row)
                    if phase.errors:
                        failures += phase.errors
                        print(f"!! {server_name} {transport} {level}: {phase.errors} failed, e.g. {phase.error_sample}")
                    if server_name == "gateway" and held:
                        held_levels[transport].append(level)
                    if server_name == "gateway" and whole_held:
                        whole_levels[transport].append(level)
                    # Let the gateway's buffered metric writes of this phase land before the next one.
                    await asyncio.sleep(1.2)
                print()
                print(
                    f"Steady window: from {max(gap_ms / 1000, args.settle_s):g} s after the last stream's first token "
                    "(the starts' backlog drained) to the first stream's last token: all streams in flight, "
                    "none starting"
                )
                steady_headers = [
                    "server, transport",
                    "streams",
                    "held",
                    "complete",
                    "window s",
                    "gap p50 ms",
                    "ratio",
                    "gap p99 ms",
                    "ratio",
                    "late p99 ms",
                    "late max",
                    "server CPU",
                    "us/token",
                    "client CPU",
                    "verdict",
                ]
                print(table(steady_headers, steady_rows))
                print()
                print("Whole phase: from the first request to the last token, the ramp of stream starts included")
                whole_headers = [
                    "server, transport",
                    "streams",
                    "sockets",
                    "connect s",
                    "wall s",
                    "gap p99 ms",
                    "ratio",
                    "late p99 ms",
                    "late max",
                    "CPU in ramp",
                    "server CPU",
                    "us/token",
                    "ms/stream",
                    "client CPU",
                    "client lag p99",
                    "lag max",
                    "server RSS MB",
                    "verdict",
                ]
                print(table(whole_headers, whole_rows))
                print()
                print(
                    f"ratio = measured / scripted gap ({gap_ms:g} ms). late = how far token i of a stream arrived "
                    "after its stream's best-case schedule (the least delayed token of the stream + i x gap), ms. "
                    "CPU: share of one core; server = the daphne process (all threads), us/token = its CPU per token "
                    "delivered, ms/stream = its CPU per stream beyond the steady cost of its tokens (accept, start, "
                    "finish); client = this process. "
                    f"client lag = how late this process's event loop ran a {LAG_TICK_S * 1000:g} ms ticker, ms."
                )
                print(
                    f"held (steady window): every stream completed, p99 gap <= {gap_ms * (1 + args.tolerance):g} ms "
                    f"and p99 lateness <= {gap_ms * args.tolerance:g} ms (--tolerance {args.tolerance:g})."
                )
                print(
                    "The steady verdict is the streams held at a steady token rate; the whole-phase verdict adds "
                    f"what starting all of them within {args.ramp_s:g} s does to the streams already running."
                )
                for transport in args.transports:
                    name = TRANSPORT_NAMES[transport]
                    for label, ok in (("steady", held_levels[transport]), ("with the ramp", whole_levels[transport])):
                        first_bad = next((level for level in sorted(args.levels) if level not in ok), None)
                        upto = max((lv for lv in ok if first_bad is None or lv < first_bad), default=None)
                        if upto:
                            verdict = f"held {upto} concurrent streams without the per-token delay growing; " + (
                                f"it grew first at {first_bad}." if first_bad else "no level tried made it grow."
                            )
                        else:
                            verdict = f"the per-token delay grew already at {first_bad} concurrent streams."
                        print(f"gateway {name}, {label}: {verdict}")
    return 1 if failures else 0


main = command(run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
