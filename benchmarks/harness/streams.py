"""Both ends of a streamed chat, for the streaming benchmark: the clients (a minimal RFC 6455
WebSocket client, and an HTTP/1.1 reader of chunked SSE answers, on raw asyncio streams) and
`bare_app`, the baseline server: a bare ASGI app that speaks the gateway's WebSocket protocol
(`delta` then `done` events) and its SSE chunks, paced by the same `simulate` script as the
simulated model, with no Django, no pipeline and no gateway work: what the transport alone
costs through the same daphne and the same client.

    daphne -b 127.0.0.1 -p 8003 benchmarks.harness.streams:bare_app
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.harness.client import HOST
from benchmarks.harness.servers import SSE_HEADERS, read_body, send_json, tokens

WS_PATH = "/ws/v1/chat"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Every SSE chunk that carries a token has this (the gateway's and the bare app's alike);
# the first chunk's `{"role": "assistant", "content": ""}` does not.
TOKEN_MARK = b'"delta": {"content": '


# --------------------------------------------------------------------------- the bare app


def _script(data: dict[str, Any]) -> tuple[float, float, int]:
    sim = data.get("simulate") or {}
    ttft = float(sim.get("ttft_ms", 0)) / 1000
    rate = float(sim.get("tokens_per_s", 0))
    return ttft, (1 / rate if rate else 0.0), int(sim.get("output_tokens", 16))


async def _paced(data: dict[str, Any], emit: Callable[[str], Awaitable[None]]) -> float:
    """Sleep the scripted TTFT, then emit the tokens against the clock as the simulated
    provider does; returns the time the first token was emitted."""
    ttft, gap, count = _script(data)
    loop = asyncio.get_running_loop()
    if ttft:
        await asyncio.sleep(ttft)
    start = loop.time()
    for index, token in enumerate(tokens(count)):
        if gap and index:
            await asyncio.sleep(max(0.0, start + index * gap - loop.time()))
        await emit(token)
    return start


CHUNK_HEAD = '{"id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": 1700000000, "model": "bare"'


def _sse(choices: list[dict[str, Any]]) -> bytes:
    return f"data: {CHUNK_HEAD}, {json.dumps({'choices': choices})[1:]}\n\n".encode()


async def _bare_http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await read_body(receive)
    if body is None:
        return
    if scope["method"] != "POST":
        await send_json(send, 200, b'{"status": "ok"}')
        return
    data = json.loads(body)
    started = False

    async def emit(token: str) -> None:
        nonlocal started
        if not started:
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            role = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            await send({"type": "http.response.body", "body": _sse(role), "more_body": True})
        chunk = _sse([{"index": 0, "delta": {"content": token}, "finish_reason": None}])
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    await _paced(data, emit)
    final = _sse([{"index": 0, "delta": {}, "finish_reason": "stop"}]) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": final})


async def _bare_chat(send: Any, message: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    chat_id, began = message.get("id"), loop.time()

    async def emit(token: str) -> None:
        await send({"type": "websocket.send", "text": json.dumps({"type": "delta", "id": chat_id, "text": token})})

    first = await _paced(message, emit)
    done = {
        "type": "done",
        "id": chat_id,
        "model": "bare",
        "ttft_ms": round((first - began) * 1000, 3),
        "latency_ms": round((loop.time() - began) * 1000, 3),
    }
    await send({"type": "websocket.send", "text": json.dumps(done)})


async def _bare_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    chats: set[asyncio.Task[None]] = set()
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.disconnect":
                return
            elif message["type"] == "websocket.receive":
                data = json.loads(message.get("text") or message.get("bytes") or b"{}")
                if data.get("type") == "chat":
                    task = asyncio.ensure_future(_bare_chat(send, data))
                    chats.add(task)
                    task.add_done_callback(chats.discard)
    finally:
        for task in list(chats):
            task.cancel()


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline: the gateway's streaming protocols with nothing behind them but the script."""
    if scope["type"] == "http":
        await _bare_http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _bare_websocket(scope, receive, send)


# --------------------------------------------------------------------------- the clients


def _mask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    size = len(data)
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


class WebSocket:
    """A minimal RFC 6455 client: handshake, masked text frames out, frames in (ping
    answered, fragments joined), close. `receive` returns the arrival time of a read and
    every complete message in it, so tokens that arrive together share a timestamp."""

    __slots__ = ("buffer", "close_sent", "closed", "fragments", "key", "path", "port", "reader", "writer")

    def __init__(self, port: int, key: str | None, path: str = WS_PATH) -> None:
        self.port, self.key, self.path = port, key, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.closed = self.close_sent = False

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        nonce = base64.b64encode(os.urandom(16))
        auth = f"Authorization: Bearer {self.key}\r\n".encode() if self.key else b""
        self.writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (self.path.encode(), HOST.encode(), self.port, nonce, auth)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"101":
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")
        expected = base64.b64encode(hashlib.sha1(nonce + WS_GUID).digest())
        if b"sec-websocket-accept: " + expected.lower() not in head.lower():
            raise ConnectionError("WebSocket handshake: wrong Sec-WebSocket-Accept")

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.writer is not None
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, size)
        mask = os.urandom(4)
        self.writer.write(header + mask + _mask(payload, mask))

    def send_text(self, text: str) -> None:
        self._frame(0x1, text.encode())

    async def receive(self) -> tuple[float, list[bytes]]:
        assert self.reader is not None
        while True:
            data = await self.reader.read(65536)
            now = time.perf_counter()
            if not data:
                self.closed = True
                raise ConnectionError("the server closed the connection")
            self.buffer += data
            messages = self._parse()
            if messages or self.closed:
                return now, messages

    def _parse(self) -> list[bytes]:
        buf, pos, out = self.buffer, 0, []
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            size, head = second & 0x7F, 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            mask = b""
            if second & 0x80:
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            end = pos + head + size
            if len(buf) < end:
                break
            payload = bytes(buf[pos + head : end])
            if mask:
                payload = _mask(payload, mask)
            pos = end
            opcode = first & 0x0F
            if opcode == 0x8:
                self.closed = True
                if not self.close_sent:
                    self.close_sent = True
                    self._frame(0x8, payload[:2])
                break
            if opcode == 0x9:
                self._frame(0xA, payload)
            elif opcode == 0x0 or not first & 0x80:
                self.fragments.append(payload)
                if first & 0x80:
                    out.append(b"".join(self.fragments))
                    self.fragments = []
            elif opcode in (0x1, 0x2):
                out.append(payload)
        del buf[:pos]
        return out

    async def close(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            if not self.close_sent:
                self.close_sent = True
                self._frame(0x8, struct.pack("!H", 1000))
            async with asyncio.timeout(2.0):
                while not self.closed:
                    await self.receive()
        self.writer.close()
        self.writer = self.reader = None


class SseConnection:
    """One kept-alive HTTP/1.1 connection reading chunked SSE answers as they arrive."""

    __slots__ = ("buffer", "port", "reader", "writer")

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = bytearray()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None

    async def stream(self, request: bytes, times: list[float]) -> str | None:
        """Send one streaming request; appends the arrival time of each token to `times`.
        Returns an error text, or None when the stream ended with `data: [DONE]`."""
        if self.writer is None:
            await self.connect()
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200" or b"chunked" not in head.lower():
            self.close()
            return f"HTTP {head[9:12].decode()}: {head[:300]!r}"
        buf, pos, done, finished = self.buffer, 0, False, False
        buf.clear()
        while not finished:
            data = await reader.read(65536)
            now = time.perf_counter()
            if not data:
                self.close()
                return "the connection closed mid-stream"
            buf += data
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    break
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                if size == 0:
                    if len(buf) < line_end + 4:
                        break
                    pos, finished = line_end + 4, True
                    break
                end = line_end + 2 + size
                if len(buf) < end + 2:
                    break
                chunk = bytes(buf[line_end + 2 : end])
                pos = end + 2
                tokens = chunk.count(TOKEN_MARK)
                if tokens:
                    times.extend([now] * tokens)
                elif b"data: [DONE]" in chunk:
                    done = True
                elif b'"error"' in chunk:
                    return f"error event: {chunk[:300]!r}"
            del buf[:pos]
            pos = 0
        return None if done else "the stream ended without data: [DONE]"
