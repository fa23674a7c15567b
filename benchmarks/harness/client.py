"""The load generator: a lean HTTP/1.1 keep-alive client on a bare asyncio protocol, the
closed-loop load it runs (`run_load`), the requests it sends and the checks of what comes back.

The client is deliberately small (no pool, no header objects, one connection per worker,
no garbage collection during a phase) so that on a 2-core machine it takes as little CPU
as possible away from the server it measures, and it never caps concurrency itself."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness.figures import percentile

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking one-shot GET (health checks, outside any measured phase)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        parts, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(parts)
    return int(head[9:12]), body


def post_request(port: int, path: str, key: str | None, body: bytes) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def get_request(port: int, path: str, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}\r\n".encode()


def chat_requests(
    port: int, key: str | None, body: dict[str, Any], *, path: str = CHAT_PATH, headers: str = ""
) -> Callable[[int], bytes]:
    """Request bytes for index i: `body` as JSON with i in place of its "@@" (put in the
    prompt, every request is a new question, never an answer-cache hit); `headers`, more
    header lines, each ending in CRLF."""
    before, after = (part.encode() for part in json.dumps(body).split("@@"))
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Content-Type: application/json\r\n{headers}"
    head_bytes = head.encode()

    def build(index: int) -> bytes:
        data = b"%s%d%s" % (before, index, after)
        return b"%sContent-Length: %d\r\n\r\n%s" % (head_bytes, len(data), data)

    return build


def check_answer(status: int, body: bytes) -> str | None:
    """A check for run_load: a 200 chat completion."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    return None if b'"choices"' in body else f"no choices in answer: {body[:300]!r}"


def check_stream(status: int, body: bytes) -> str | None:
    """A check for run_load: a 200 SSE stream that ended with [DONE]."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    return None if body.endswith(b"data: [DONE]\n\n") else f"stream did not end with [DONE]: {body[-300:]!r}"


def checker(stream: bool) -> Callable[[int, bytes], str | None]:
    return check_stream if stream else check_answer


def header(head: bytes, name: bytes) -> str | None:
    """The value of a response header (`name` in lower case), or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return None


async def request_once(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one request on a connection of its own, without blocking the
    event loop that a load may be sharing."""
    conn = HttpConnection(port)
    try:
        status, _, body = await conn.request(data)
        return status, conn.head, body
    finally:
        conn.close()


async def healthz(port: int, query: str = "") -> dict[str, Any]:
    """A server's /healthz (with `query`, e.g. "?gc_since=..."), or {} when it is not 200."""
    status, _, body = await request_once(port, get_request(port, "/healthz" + query))
    return json.loads(body) if status == 200 else {}


class HttpConnection:
    """One persistent HTTP/1.1 connection; requests on it go one after another.

    A bare asyncio protocol parses each response from what arrives and wakes the caller once,
    when it is whole: the load generator shares the cores with the servers it measures, and
    on asyncio's streams (a wake-up per readuntil, readline and readexactly) it took twice
    the CPU per request."""

    __slots__ = ("_protocol", "head", "port")

    def __init__(self, port: int) -> None:
        self.port = port
        self._protocol: _Response | None = None
        self.head = b""  # the status line and headers of the last response

    async def connect(self) -> None:
        _, self._protocol = await asyncio.get_running_loop().create_connection(_Response, HOST, self.port)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
        self._protocol = None

    async def request(self, data: bytes) -> tuple[int, float, bytes]:
        """Send one request; returns (status, time of the first body bytes, body)."""
        if self._protocol is None or self._protocol.lost:
            await self.connect()
        protocol = self._protocol
        assert protocol is not None
        try:
            status, self.head, first, body, close = await protocol.send(data)
        except BaseException:
            # Given up on (cancelled) or failed: a response still on its way would be taken
            # for the next request's, so this connection is done.
            self.close()
            raise
        if close:
            self.close()
        return status, first, body


class _Response(asyncio.Protocol):
    """The client side of one keep-alive connection: a response parsed as its bytes arrive
    (Content-Length, chunked, or until the server closes)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.head: bytes | None = None
        self.length = -1  # Content-Length; -1 unknown
        self.chunked = self.close_after = False
        self.at = 0  # chunked: where the next chunk's size line starts
        self.parts: list[bytes] = []
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            done = self._parse()
        except ValueError as exc:
            self.waiter.set_exception(exc)
            self.close()
            return
        if done is not None:
            self.waiter.set_result(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        done = None
        try:
            if self.head is not None and self.length < 0 and not self.chunked:  # the body ends with the connection
                done = self._done(bytes(self.buffer), True)
            elif self.chunked and self.buffer[self.at : self.at + 3] == b"0\r\n":
                self.buffer += b"\r\n"  # the last chunk without its final CRLF, then the close
                done = self._chunks()
        except ValueError as error:
            waiter.set_exception(error)
            return
        if done is not None:
            waiter.set_result(done)
        else:
            waiter.set_exception(exc or asyncio.IncompleteReadError(bytes(self.buffer), None))

    def _done(self, body: bytes, close: bool) -> tuple[int, bytes, float, bytes, bool]:
        head = self.head or b""
        result = (int(head[9:12]), head, self.first or time.perf_counter(), body, close or self.close_after)
        self._reset()
        return result

    def _parse(self) -> tuple[int, bytes, float, bytes, bool] | None:
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.head = bytes(buffer[: end + 4])
            del buffer[: end + 4]
            for line in self.head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = b"close" in value.lower()
        if self.chunked:
            return self._chunks()
        if self.length >= 0 and len(buffer) >= self.length:
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            return self._done(body, False)
        return None

    def _chunks(self) -> tuple[int, bytes, float, bytes, bool] | None:
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n", self.at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[self.at : line_end]).split(b";")[0].strip(), 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)  # no trailers: the last chunk's CRLF
                if trailer_end < 0:
                    return None
                del buffer[: trailer_end + 4]
                return self._done(b"".join(self.parts), False)
            if len(buffer) < line_end + 2 + size + 2:
                return None
            if not self.first:
                self.first = time.perf_counter()
            self.parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
            self.at = line_end + 2 + size + 2
            if self.at > 65536:  # keep the buffer short on long streams
                del buffer[: self.at]
                self.at = 0


@dataclass(kw_only=True)
class Failures:
    """How many of something failed, and the first problem's text."""

    errors: int = 0
    error_sample: str = ""

    def fail(self, problem: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or problem


@dataclass
class LoadResult(Failures):
    requests: int
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    connect_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s * 1000 / self.requests


async def run_load(
    port: int,
    build: Callable[[int], bytes],
    check: Callable[..., str | None],
    *,
    requests: int,
    concurrency: int,
    cold: bool = False,
    with_head: bool = False,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`requests` requests from `concurrency` workers, each on its own keep-alive connection.

    Connections are opened before the clock starts (a warm pool), unless `cold`: then each
    worker connects inside the measured burst. `check(status, body)` returns an error text
    or None; with `with_head`, `check(status, body, head)` also gets the response's status
    line and headers (bytes). Garbage collection is off in this process while the clock runs.
    With `stop`, the load ends early once it is set (each worker finishes its request in
    hand): pass a large `requests` to run until told; `requests` then counts those sent."""
    result = LoadResult(requests=requests, concurrency=concurrency)
    concurrency = max(1, min(concurrency, requests))
    indices = iter(range(requests))
    go = asyncio.Event()
    latencies, first_bytes = result.latencies_ms, result.first_byte_ms
    connections = [HttpConnection(port) for _ in range(concurrency)]

    async def worker(conn: HttpConnection) -> None:
        await go.wait()
        for index in indices:
            if stop is not None and stop.is_set():
                break
            data = build(index)
            started = time.perf_counter()
            try:
                status, first, body = await conn.request(data)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                result.fail(f"{type(exc).__name__}: {exc}")
                continue
            finished = time.perf_counter()
            problem = check(status, body, conn.head) if with_head else check(status, body)
            if problem:
                result.fail(problem)
                continue
            latencies.append((finished - started) * 1000)
            first_bytes.append((first - started) * 1000)

    gc.collect()
    if not cold:
        # Not timed as part of the load. Daphne's `-b/-p` listens with Twisted's backlog of 50:
        # when its accept queue is full the kernel drops a SYN and the client retries a
        # second later, so opening many connections can take seconds (pacing does not help).
        connect_started = time.perf_counter()
        await asyncio.gather(*(conn.connect() for conn in connections))
        result.connect_s = time.perf_counter() - connect_started
    tasks = [asyncio.create_task(worker(conn)) for conn in connections]
    await asyncio.sleep(0)
    gc.disable()
    try:
        cpu_started = time.process_time()
        started = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - started
        result.client_cpu_s = time.process_time() - cpu_started
        if stop is not None:
            result.requests = result.ok + result.errors
    finally:
        gc.enable()
        for conn in connections:
            conn.close()
    return result


async def warm_up(
    port: int, build: Callable[[int], bytes], check: Callable[..., str | None], requests: int, name: str,
    *, with_head: bool = False,
) -> None:  # fmt: skip
    """`requests` requests at 8 in flight before a measured phase; any error stops the benchmark."""
    if requests:
        done = await run_load(port, build, check, requests=requests, concurrency=8, with_head=with_head)
        if done.errors:
            raise RuntimeError(f"warm-up of {name} failed: {done.error_sample}")
