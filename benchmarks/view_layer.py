"""Which view layer is leaner: the gateway's own async dispatch, or adrf's async APIView?

Run it with `python -m benchmarks.view_layer` (about 40 s with the defaults on 2 cores).

The same work is served three ways, in one process, with no network server: requests go
straight into Django's ASGI handler (django.core.handlers.asgi.ASGIHandler, the project's
settings, a temporary SQLite database) as ASGI scopes with receive/send callables, and
every response must be 200 with the expected body or the run stops.

By default no middleware runs (`--middleware none`), so the figures are the view layer
alone. `--middleware project` puts the project's MIDDLEWARE in front (about 75 s): every
variant then pays the same extra cost, because under ASGI Django runs each process_request
/ process_view / process_response of those (sync) middleware through sync_to_async, 13
thread hops a request, which dilutes the ratios between the view layers.

  (a) project  - llmops.api.views (GatewayAPIView: a DRF APIView whose `dispatch` is a lean
                 coroutine: `llmops.auth.authorize`, the async handler, OpenAI's error shape).
  (b) adrf     - an adrf.views.APIView defined here: an async authentication class that awaits
                 the same `authorize`, IsAuthenticated, the same handler body, DRF `Response`.
                 adrf runs `initial` (authentication, permissions, throttles, negotiation)
                 through `sync_to_async` (a hop onto a worker thread), calls the async
                 authenticator back on the event loop with `async_to_sync`, and Django renders
                 the DRF Response through `sync_to_async` again.
  (c) plain    - a plain async Django function view doing the same: the floor.

Two endpoints: GET /v1/models (key check + catalog snapshot read), and POST
/v1/chat/completions on the simulated model "sim-small" with an instant upstream (same
ChatCompletionRequestSerializer, same InferenceRequest, same `llmops.pipeline.infer`,
same headers), so only the view layer differs.

Each endpoint is driven sequentially (one request at a time) and at concurrency 64
(asyncio.gather over batches of 64), with --requests requests per variant after
--warmup warm-up requests. The requests of a phase are split into --rounds rounds and
the variants take turns in a rotating order, so drift (garbage collection, the metric
writer thread flushing every 0.5 s, the CPU clock) falls on all of them alike.

How to read the table:
  median ms, p99 ms  wall time of one request through the ASGI handler (at concurrency 64
                     this includes waiting for the other requests of its batch).
  CPU ms/req         process CPU time (time.process_time: every thread, so the worker
                     threads that thread hops run on count) divided by the requests.
  loop CPU ms/req    CPU time of the event-loop thread only (time.thread_time).
  req/s              requests divided by the wall time of the phase.
  hops/req           asgiref thread crossings per request, counted in a separate short
                     pass: sync_to_async (loop -> worker thread) + async_to_sync
                     (worker thread -> loop). Django's ASGI handler itself makes some for
                     every request (request_started signal, response.close).
Every figure is followed by its ratio to variant (a) measured in the same run: above 1.00x
means more time/CPU/hops than the project's view, except for req/s where above 1.00x means
faster.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness.command import options, parsed
from benchmarks.harness.gateway import in_process

MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
SIMULATE = {"latency_ms": 0, "ttft_ms": 0, "tokens_per_s": 0, "output_tokens": 16}
VARIANTS = {
    "a": "(a) project GatewayAPIView",
    "b": "(b) adrf APIView",
    "c": "(c) plain async view",
}


class BenchmarkError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options(
        "view_layer", "Per-request wall time and CPU of the gateway's async dispatch vs adrf vs a plain async view."
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per variant and mode (2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per variant and endpoint (200)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight in the concurrent mode (64)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per phase (8)")
    parser.add_argument(
        "--middleware",
        choices=("none", "project"),
        default="none",
        help="none: no middleware, the view layer alone (default); project: the project's MIDDLEWARE in front",
    )
    parser.add_argument("--no-chat", action="store_true", help="only GET /v1/models")
    parser.add_argument("--no-plain", action="store_true", help="skip variant (c), the plain async view")
    args = parsed(parser, argv, at_least_one=("requests", "concurrency", "rounds"))
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


# --- setup -----------------------------------------------------------------------------


def build_urlconf(include_plain: bool) -> types.ModuleType:
    """The three variants side by side, each under its own prefix (/a, /b, /c)."""
    from adrf.views import APIView as AsyncAPIView
    from django.http import HttpRequest, HttpResponse, JsonResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.permissions import IsAuthenticated
    from rest_framework.response import Response

    from llmops import catalog
    from llmops.api.chat import CHAT_REQUEST, completion_body, inference_request, usd, validated
    from llmops.api.views import ChatCompletionsView, ModelListView, gateway_headers, model_body, read_json_object
    from llmops.auth import ApiKeyPrincipal, authorize
    from llmops.catalog import ApiKeyInfo
    from llmops.errors import GatewayError, error_response
    from llmops.pipeline import infer

    async def chat_answer(data: dict[str, Any], api_key: ApiKeyInfo) -> tuple[dict[str, Any], Any, Any]:
        """What ChatCompletionsView.post does after validation (non-streaming), step for step."""
        inference = inference_request(data, api_key=api_key, cache_mode="use")
        result = await infer(inference)
        return completion_body(result), result, None

    def add_headers(response: Any, result: Any, endpoint: Any) -> None:
        gateway_headers(response, request_id=result.request_id, model=result.model, provider=result.provider)
        response["x-llmops-cache"] = result.cache
        response["x-llmops-cost-usd"] = usd(result.cost_usd)

    # (b) adrf: async authentication (adrf calls it through async_to_sync), IsAuthenticated.
    class AsyncApiKeyAuthentication(BaseAuthentication):
        async def authenticate(self, request: Any) -> tuple[ApiKeyPrincipal, ApiKeyInfo]:
            info = await authorize(request._request)  # its GatewayError goes to the project's exception handler
            return ApiKeyPrincipal(info), info

        def authenticate_header(self, request: Any) -> str:
            return 'Bearer realm="llmops"'

    class AdrfModelListView(AsyncAPIView):
        authentication_classes = [AsyncApiKeyAuthentication]
        permission_classes = [IsAuthenticated]

        async def get(self, request: Any) -> Response:
            endpoints = await catalog.endpoint_list_enabled()
            return Response({"object": "list", "data": [model_body(e) for e in endpoints]})

    class AdrfChatCompletionsView(AsyncAPIView):
        authentication_classes = [AsyncApiKeyAuthentication]
        permission_classes = [IsAuthenticated]

        async def post(self, request: Any) -> Response:
            data = validated(CHAT_REQUEST, request.data)
            body, result, endpoint = await chat_answer(data, request.auth)
            response = Response(body)
            add_headers(response, result, endpoint)
            return response

    # (c) plain async function views: the floor.
    async def plain_models(request: HttpRequest) -> HttpResponse:
        try:
            await authorize(request)
        except GatewayError as exc:
            return error_response(exc)
        endpoints = await catalog.endpoint_list_enabled()
        return JsonResponse({"object": "list", "data": [model_body(e) for e in endpoints]})

    @csrf_exempt
    async def plain_chat(request: HttpRequest) -> HttpResponse:
        try:
            api_key = await authorize(request)
            data = validated(CHAT_REQUEST, read_json_object(request))
            body, result, endpoint = await chat_answer(data, api_key)
        except GatewayError as exc:
            return error_response(exc)
        response = HttpResponse(json.dumps(body), content_type="application/json")
        add_headers(response, result, endpoint)
        return response

    urlpatterns = [
        path("a" + MODELS_PATH, ModelListView.as_view()),
        path("a" + CHAT_PATH, ChatCompletionsView.as_view()),
        path("b" + MODELS_PATH, AdrfModelListView.as_view()),
        path("b" + CHAT_PATH, AdrfChatCompletionsView.as_view()),
    ]
    if include_plain:
        urlpatterns += [path("c" + MODELS_PATH, plain_models), path("c" + CHAT_PATH, plain_chat)]
    module = types.ModuleType("benchmarks_view_layer_urls")
    module.urlpatterns = urlpatterns
    return module


# --- the ASGI client -------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    label: str
    method: str
    path: str
    marker: bytes  # must appear in every 200 body
    body: Callable[[int], bytes] | None = None


def models_endpoint() -> Endpoint:
    return Endpoint(f"GET {MODELS_PATH}", "GET", MODELS_PATH, b"sim-small")


def chat_endpoint() -> Endpoint:
    template = json.dumps(
        {"model": "sim-small", "messages": [{"role": "user", "content": "view layer @@"}], "simulate": SIMULATE}
    )
    before, after = (part.encode() for part in template.split("@@"))

    def body(index: int) -> bytes:  # a different prompt each time: nothing can be answered from a cache
        return b"%s%d%s" % (before, index, after)

    return Endpoint(f"POST {CHAT_PATH}", "POST", CHAT_PATH, b'"chat.completion"', body)


class Client:
    """Calls the ASGI app the way a server would: one http.request message with the whole
    body, then a receive() that waits (for a disconnect that never comes) until Django
    cancels it, and a send() that collects the status and body."""

    def __init__(self, app: Callable[..., Awaitable[None]], raw_key: str) -> None:
        self.app = app
        self.base_headers = [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {raw_key}".encode()),
            (b"accept", b"application/json"),
        ]

    def scope(self, method: str, path: str, body_length: int | None) -> dict[str, Any]:
        headers = list(self.base_headers)
        if body_length is not None:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(body_length).encode())]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }

    async def request(self, variant: str, endpoint: Endpoint, index: int) -> float:
        """One request; returns its wall time in seconds, or raises if it was not a good 200."""
        body = endpoint.body(index) if endpoint.body else b""
        scope = self.scope(endpoint.method, f"/{variant}{endpoint.path}", len(body) if endpoint.body else None)
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.get_running_loop().create_future()  # the client never leaves
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        started = time.perf_counter()
        await self.app(scope, receive, send)
        elapsed = time.perf_counter() - started
        answer = b"".join(chunks)
        if status != 200 or endpoint.marker not in answer:
            raise BenchmarkError(
                f"{VARIANTS[variant]} {endpoint.label}: HTTP {status}, expected 200 with {endpoint.marker!r}: "
                f"{answer[:400]!r}"
            )
        return elapsed


# --- measuring -------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)


async def run_slice(
    client: Client, variant: str, endpoint: Endpoint, start: int, count: int, concurrency: int
) -> Tally:
    """`count` requests, one at a time (concurrency 1) or in gathered batches."""
    tally = Tally()
    cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    if concurrency == 1:
        for index in range(start, start + count):
            tally.latencies.append(await client.request(variant, endpoint, index))
    else:
        for batch in range(start, start + count, concurrency):
            indexes = range(batch, min(batch + concurrency, start + count))
            tally.latencies += await asyncio.gather(*(client.request(variant, endpoint, i) for i in indexes))
    tally.wall_s = time.perf_counter() - wall0
    tally.cpu_s = time.process_time() - cpu0
    tally.loop_cpu_s = time.thread_time() - loop0
    return tally


async def measure_phase(
    client: Client, variants: list[str], endpoint: Endpoint, *, requests: int, rounds: int, concurrency: int, first: int
) -> dict[str, Tally]:
    """Every variant serves `requests` requests, in `rounds` rounds taking turns in rotating order."""
    totals = {v: Tally() for v in variants}
    sizes = [requests // rounds + (1 if r < requests % rounds else 0) for r in range(rounds)]
    index = first
    for number, size in enumerate(sizes):
        if size == 0:
            continue
        order = variants[number % len(variants) :] + variants[: number % len(variants)]
        for variant in order:
            part = await run_slice(client, variant, endpoint, index, size, concurrency)
            index += size
            total = totals[variant]
            total.latencies += part.latencies
            total.wall_s += part.wall_s
            total.cpu_s += part.cpu_s
            total.loop_cpu_s += part.loop_cpu_s
    return totals


async def count_hops(client: Client, variants: list[str], endpoint: Endpoint, requests: int) -> dict[str, float]:
    """asgiref thread crossings per request, counted with asgiref patched (not during timing)."""
    from asgiref.sync import AsyncToSync, SyncToAsync

    counted = {"n": 0}
    original_s2a, original_a2s = SyncToAsync.__call__, AsyncToSync.__call__

    async def s2a(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["n"] += 1
        return await original_s2a(self, *args, **kwargs)

    def a2s(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["n"] += 1
        return original_a2s(self, *args, **kwargs)

    hops: dict[str, float] = {}
    SyncToAsync.__call__, AsyncToSync.__call__ = s2a, a2s  # type: ignore[method-assign]
    try:
        for variant in variants:
            counted["n"] = 0
            for index in range(requests):
                await client.request(variant, endpoint, 10_000_000 + index)
            hops[variant] = counted["n"] / requests
    finally:
        SyncToAsync.__call__, AsyncToSync.__call__ = original_s2a, original_a2s  # type: ignore[method-assign]
    return hops


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


def figures(tally: Tally, hops: float) -> dict[str, float]:
    n = tally.count
    return {
        "median": statistics.median(tally.latencies) * 1000,
        "p99": p99(tally.latencies) * 1000,
        "cpu": tally.cpu_s / n * 1000,
        "loop_cpu": tally.loop_cpu_s / n * 1000,
        "rps": n / tally.wall_s,
        "hops": hops,
    }


COLUMNS = (
    ("median", "median ms", 3),
    ("p99", "p99 ms", 3),
    ("cpu", "CPU ms/req", 3),
    ("loop_cpu", "loop CPU ms/req", 3),
    ("rps", "req/s", 0),
    ("hops", "hops/req", 1),
)


def table(title: str, results: dict[str, Tally], hops: dict[str, float]) -> str:
    rows = {v: figures(t, hops[v]) for v, t in results.items()}
    base = rows["a"]
    width = 17
    lines = [title, f"{'variant':<28}" + "".join(f"{heading:>{width}}" for _, heading, _ in COLUMNS)]
    for variant, row in rows.items():
        cells = []
        for key, _, digits in COLUMNS:
            ratio = row[key] / base[key] if base[key] else float("nan")
            cells.append(f"{row[key]:.{digits}f} ({ratio:.2f}x)".rjust(width))
        lines.append(f"{VARIANTS[variant]:<28}" + "".join(cells))
    return "\n".join(lines)


async def benchmark(args: argparse.Namespace, app: Any, raw_key: str, variants: list[str]) -> list[str]:
    from django.db import close_old_connections

    client = Client(app, raw_key)
    endpoints = [models_endpoint()] + ([] if args.no_chat else [chat_endpoint()])
    reports: list[str] = []
    index = 0
    for endpoint in endpoints:
        # Warm up every variant: imports, the catalog snapshot, per-loop semaphores, code paths.
        for variant in variants:
            await run_slice(client, variant, endpoint, index, args.warmup, 1)
            await run_slice(client, variant, endpoint, index, args.concurrency, args.concurrency)
            index += args.warmup + args.concurrency
        hops = await count_hops(client, variants, endpoint, 50)
        await asyncio.to_thread(close_old_connections)
        gc.collect()
        gc.freeze()  # as llmops/asgi.py does after start-up
        for concurrency, mode in ((1, "sequential"), (args.concurrency, f"concurrency {args.concurrency}")):
            results = await measure_phase(
                client,
                variants,
                endpoint,
                requests=args.requests,
                rounds=args.rounds,
                concurrency=concurrency,
                first=index,
            )
            index += args.requests * len(variants)
            title = (
                f"{endpoint.label} - {mode}, {args.requests} requests per variant ({args.rounds} interleaved rounds)"
            )
            reports.append(table(title, results, hops))
            print(reports[-1] + "\n", flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with in_process("llmops-view-layer-") as raw_key:
        import django
        import rest_framework
        from django.conf import settings
        from django.core.handlers.asgi import ASGIHandler

        from monitoring.recorder import METRICS, metrics_flush

        variants = ["a", "b"] + ([] if args.no_plain else ["c"])
        settings.ROOT_URLCONF = build_urlconf(include_plain=not args.no_plain)
        if args.middleware == "none":
            settings.MIDDLEWARE = []
        app = ASGIHandler()
        adrf_version = importlib.metadata.version("adrf")
        print(
            f"view layer benchmark: Python {platform.python_version()}, Django {django.get_version()}, "
            f"DRF {rest_framework.VERSION}, adrf {adrf_version}, {os.cpu_count()} CPUs; in-process ASGI, "
            f"middleware: {args.middleware} ({len(settings.MIDDLEWARE)} classes); "
            f"warm-up {args.warmup} per variant and endpoint\n",
            flush=True,
        )
        try:
            asyncio.run(benchmark(args, app, raw_key, variants))
        except BenchmarkError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            METRICS.stop()
            metrics_flush()
            from django.db import connections

            connections.close_all()
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
