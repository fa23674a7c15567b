"""Which upstream client the openai provider's hot path should use: the CPU each one spends
per chat completion and per 16-token stream, in this process, against
the harness's fast upstream in a process of its own (an instant OpenAI-compatible server).

    .venv/bin/python -m benchmarks.upstream_clients [--requests 3000] [--streams 1000]

Clients: the `openai` SDK on its default httpx2 transport and on its aiohttp transport
(`DefaultAioHttpClient`, when aiohttp is installed), httpx2 and aiohttp with JSON handled
here, the harness's bare HTTP/1.1 connection on asyncio streams (a floor: no pool, no
timeouts, no TLS), and the gateway's own provider (`llmops.providers.openai`, whatever it
uses now). Each runs one request at a time, then 16 at once, after a warm-up; the figure is
this process's CPU per call, with its ratio to the SDK on httpx2 from the same run."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from benchmarks.harness.client import CHAT_PATH, HttpConnection, post_request
from benchmarks.harness.command import options
from benchmarks.harness.figures import fmt, ratio, table
from benchmarks.harness.gateway import Served, free_port, serving, workspace

MESSAGES = [{"role": "user", "content": "Say something short."}]
BODY = {"model": "echo", "messages": MESSAGES, "max_tokens": 16}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


CLOSERS: list[Callable[[], Awaitable[None]]] = []


def clients(port: int) -> dict[str, tuple[Callable[[], Awaitable[str]], Callable[[], Awaitable[str]]]]:
    """name -> (one completion, one stream), each returning the answer's text."""
    import httpx2
    import openai

    base = f"http://127.0.0.1:{port}/v1"
    made: dict[str, tuple] = {}

    def sdk(client: openai.AsyncOpenAI) -> tuple:
        async def whole() -> str:
            answer = await client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=16)
            return answer.choices[0].message.content or ""

        async def stream() -> str:
            parts = []
            events = await client.chat.completions.create(
                model="echo", messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True}
            )
            async with events:
                async for chunk in events:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
            return "".join(parts)

        return whole, stream

    made["openai SDK, httpx2"] = sdk(openai.AsyncOpenAI(api_key="none", base_url=base, max_retries=0))
    try:
        import aiohttp
    except ImportError:
        aiohttp = None
    if aiohttp is not None:
        made["openai SDK, aiohttp"] = sdk(
            openai.AsyncOpenAI(api_key="none", base_url=base, max_retries=0, http_client=openai.DefaultAioHttpClient())
        )
    headers = {"Authorization": "Bearer none", "Content-Type": "application/json"}
    url = f"{base}/chat/completions"
    httpx_client = httpx2.AsyncClient(timeout=60)

    async def httpx_whole() -> str:
        response = await httpx_client.post(url, content=json.dumps(BODY).encode(), headers=headers)
        return json.loads(response.content)["choices"][0]["message"]["content"]

    async def httpx_stream() -> str:
        parts = []
        async with httpx_client.stream("POST", url, content=json.dumps(STREAM_BODY).encode(), headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        parts.append(chunk["choices"][0]["delta"]["content"])
        return "".join(parts)

    made["httpx2, own JSON"] = (httpx_whole, httpx_stream)
    if aiohttp is not None:
        session: list = []

        def aio() -> aiohttp.ClientSession:
            if not session:
                session.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)))
                CLOSERS.append(session[0].close)
            return session[0]

        async def aio_whole() -> str:
            async with aio().post(url, data=json.dumps(BODY).encode(), headers=headers) as response:
                return json.loads(await response.read())["choices"][0]["message"]["content"]

        async def aio_stream() -> str:
            parts = []
            async with aio().post(url, data=json.dumps(STREAM_BODY).encode(), headers=headers) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            parts.append(chunk["choices"][0]["delta"]["content"])
            return "".join(parts)

        made["aiohttp, own JSON"] = (aio_whole, aio_stream)
    pool: list[HttpConnection] = []

    async def bare(body: dict) -> bytes:
        conn = pool.pop() if pool else HttpConnection(port)
        _, _, raw = await conn.request(post_request(port, CHAT_PATH, "none", json.dumps(body).encode()))
        pool.append(conn)
        return raw

    async def bare_whole() -> str:
        return json.loads(await bare(BODY))["choices"][0]["message"]["content"]

    async def bare_stream() -> str:
        chunks = _events(await bare(STREAM_BODY))
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    made["bare asyncio HTTP/1.1 (floor)"] = (bare_whole, bare_stream)
    made["gateway's openai provider"] = provider_calls(base)
    return made


def provider_calls(base: str) -> tuple:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    os.environ.setdefault("LLMOPS_ALLOW_INSECURE_SECRET_KEY", "true")
    import django

    django.setup()
    from llmops.catalog import EndpointConfig
    from llmops.providers.base import ProviderCall
    from llmops.providers.openai import OpenAIProvider

    provider = OpenAIProvider()
    endpoint = EndpointConfig(
        name="echo", provider="openai", upstream_model="echo", base_url=base, api_key_env="",
        input_price_per_mtok=Decimal(0), output_price_per_mtok=Decimal(0), cached_input_price_per_mtok=Decimal(0),
        cache_write_price_per_mtok=Decimal(0), batch_discount=Decimal(0), context_window=8192, max_concurrency=0,
        simulation={}, enabled=True,
    )  # fmt: skip
    call = ProviderCall(messages=MESSAGES, params={"max_tokens": 16})

    async def whole() -> str:
        return (await provider.complete(endpoint, call)).text

    async def stream() -> str:
        return "".join([delta.text async for delta in provider.stream(endpoint, call)])

    return whole, stream


async def measure(call: Callable[[], Awaitable[str]], count: int, concurrency: int) -> float:
    """CPU milliseconds of this process per call, `concurrency` calls at a time."""
    expected = await call()
    assert expected, "the upstream's answer had no text"
    for _ in range(min(200, count)):
        await call()
    gc.collect()
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            if await call() != expected:
                raise RuntimeError("an answer changed between calls")

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) * 1000 / count


async def run(args: argparse.Namespace, port: int) -> list[list[str]]:
    made = clients(port)
    figures: dict[str, list[float]] = {}
    for name, (whole, stream) in made.items():
        figures[name] = [
            await measure(whole, args.requests, 1),
            await measure(whole, args.requests, 16),
            await measure(stream, args.streams, 1),
            await measure(stream, args.streams, 16),
        ]
    for close in CLOSERS:
        await close()
    base = figures["openai SDK, httpx2"]
    rows = []
    for name, values in figures.items():
        rows.append([name, *(f"{fmt(v, 3)} ({ratio(v, b)})" for v, b in zip(values, base, strict=True))])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = options("upstream_clients", __doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="completions per client and scenario (3000)")
    parser.add_argument("--streams", type=int, default=1000, help="16-token streams per client and scenario (1000)")
    args = parser.parse_args(argv)
    port = free_port()
    with workspace() as workdir:
        command = [sys.executable, "-m", "benchmarks.harness.servers", str(port)]
        with serving(Served("upstream", command, dict(os.environ), workdir, port, poll_s=0.05)):
            rows = asyncio.run(run(args, port))
    print(f"CPU of this process per call, ms (ratio to the openai SDK on httpx2), python {sys.version.split()[0]}")
    print(table(["client", "completion, 1", "completion, 16", "stream, 1", "stream, 16"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
