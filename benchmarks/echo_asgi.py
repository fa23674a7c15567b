"""The smallest OpenAI-shaped upstream: a bare ASGI app that answers every POST with a fixed
chat.completion (or, with `"stream": true`, the same number of SSE chunks the gateway sends)
and GET /healthz with `{"status": "ok"}`.

`benchmarks.gateway_overhead` serves it with the same daphne as the gateway and uses it as
the baseline: what a direct call to an instant upstream costs through the same server and
client, so that gateway minus baseline is what the gateway itself adds.

    daphne -b 127.0.0.1 -p 8001 benchmarks.echo_asgi:application
"""

from __future__ import annotations

import json
from typing import Any

WORDS = ("simulated", "answer", "from", "the", "llmops", "gateway", "with", "no", "model", "behind", "it")
HEAD = {"id": "chatcmpl-echo0000000000000000000000", "created": 1700000000, "model": "echo"}


def _tokens(count: int) -> list[str]:
    return [("Simulated" if i == 0 else " " + WORDS[i % len(WORDS)]) for i in range(count)]


def _completion(count: int) -> bytes:
    body = {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_tokens(count)), "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count},
        "system_fingerprint": None,
    }
    return json.dumps(body).encode()


def _chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
    body = {
        **HEAD,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _stream_events(count: int) -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": token}, None) for token in _tokens(count)]
    events.append(_chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


_completions: dict[int, bytes] = {}
_streams: dict[int, list[bytes]] = {}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
HEALTH = b'{"status": "ok"}'


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    if scope["method"] != "POST":
        headers = [*JSON_HEADERS, (b"content-length", str(len(HEALTH)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": HEALTH})
        return
    try:
        data = json.loads(body)
        count = int((data.get("simulate") or {}).get("output_tokens", 16))
        stream = bool(data.get("stream"))
    except (ValueError, TypeError, AttributeError):
        count, stream = 16, False
    if stream:
        events = _streams.get(count) or _streams.setdefault(count, _stream_events(count))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = _completions.get(count) or _completions.setdefault(count, _completion(count))
    headers = [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
