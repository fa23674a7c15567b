"""An OpenAI-compatible upstream that answers at once and costs next to nothing: HTTP/1.1
keep-alive on a bare asyncio protocol (no framework, no ASGI server), so that on a 2-core
machine the upstream takes as little CPU as it can from the gateway it stands behind.

POST (any path): a `chat.completion`, or with `"stream": true` OpenAI's SSE wire format in
chunked transfer encoding (a role chunk, one chunk per token, a finish chunk, the usage chunk
when `stream_options.include_usage`, `data: [DONE]`), all written at once, with as many
tokens as benchmarks.echo_asgi would send (its builders). GET: `{"status": "ok",
"completions": N, "streams": M}`, the answers served, so that whoever started it can check
what reached it. With ECHO_API_KEY set it answers 401 to any request without
`Authorization: Bearer <that value>`.

    python -m benchmarks.fast_upstream PORT
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from benchmarks import loop_run
from benchmarks.echo_asgi import UNAUTHORIZED, _completion, _stream_events, request_shape

EXPECTED = f"bearer {os.environ['ECHO_API_KEY']}".encode() if os.environ.get("ECHO_API_KEY") else None
served = {"completions": 0, "streams": 0}
_whole: dict[int, bytes] = {}
_streamed: dict[tuple[int, bool], bytes] = {}


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
    return head + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _chunked(events: list[bytes]) -> bytes:
    parts = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
    parts += [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def answer(head: bytes, body: bytes) -> bytes:
    if head.startswith(b"GET"):
        return _response(b"200 OK", b"application/json", json.dumps({"status": "ok", **served}).encode())
    if EXPECTED is not None and EXPECTED not in head.lower():
        return _response(b"401 Unauthorized", b"application/json", UNAUTHORIZED)
    count, stream, usage = request_shape(body)
    if stream:
        served["streams"] += 1
        found = _streamed.get((count, usage))
        if found is None:
            found = _streamed[(count, usage)] = _chunked(_stream_events(count, usage))
        return found
    served["completions"] += 1
    found = _whole.get(count)
    if found is None:
        found = _whole[count] = _response(b"200 OK", b"application/json", _completion(count))
    return found


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            at = head.lower().find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(answer(head, body))  # type: ignore[attr-defined]
            if b"connection: close" in head.lower():
                self.transport.close()
                return


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    loop_run(serve(int(sys.argv[1])))
