"""The smallest OpenAI-shaped upstream: a bare ASGI app that answers every POST with a fixed
chat.completion (or, with `"stream": true`, the same number of SSE chunks the gateway sends)
and GET /healthz with `{"status": "ok"}` and how many answers and streams it has served.

The answer has `simulate.output_tokens` tokens (the gateway's own request shape), else
`max_completion_tokens` or `max_tokens` (what an OpenAI client such as the gateway's
`openai` provider sends), else 16. A stream is OpenAI's wire format: `data: {...}` lines of
`chat.completion.chunk`s, then `data: [DONE]`; with `stream_options.include_usage` every
chunk carries `"usage": null` and a last chunk with no choices carries the usage.

With ECHO_API_KEY set in its environment it answers only requests carrying
`Authorization: Bearer <that value>` (401 otherwise), as a self-hosted OpenAI-compatible
server started with an API key does.

`benchmarks.gateway_overhead` serves it with the same daphne as the gateway and uses it as
the baseline: what a direct call to an instant upstream costs through the same server and
client, so that gateway minus baseline is what the gateway itself adds. With
`--upstream http` it serves it a second time as the gateway's real HTTP upstream.

    daphne -b 127.0.0.1 -p 8001 benchmarks.echo_asgi:application
"""

from __future__ import annotations

import json
import os
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
        "usage": _usage(count),
        "system_fingerprint": None,
    }
    return json.dumps(body).encode()


def _usage(count: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None, usage: bool) -> bytes:
    body = {
        **HEAD,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage:
        body["usage"] = None  # OpenAI's shape when the usage is asked for: null but on the usage chunk
    return _event(body)


def _stream_events(count: int, usage: bool) -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""}, None, usage)]
    events += [_chunk({"content": token}, None, usage) for token in _tokens(count)]
    events.append(_chunk({}, "stop", usage))
    if usage:
        events.append(_event({**HEAD, "object": "chat.completion.chunk", "choices": [], "usage": _usage(count)}))
    events.append(b"data: [DONE]\n\n")
    return events


_completions: dict[int, bytes] = {}
_streams: dict[tuple[int, bool], list[bytes]] = {}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# What each answer had to carry when ECHO_API_KEY is set (None: anything goes).
EXPECTED_AUTHORIZATION = f"Bearer {os.environ['ECHO_API_KEY']}".encode() if os.environ.get("ECHO_API_KEY") else None
UNAUTHORIZED = json.dumps(
    {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}
).encode()
# Answers served, for /healthz: whoever started the server can check what reached it.
served = {"completions": 0, "streams": 0}


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _token_count(data: dict[str, Any]) -> int:
    simulate = data.get("simulate")
    if simulate:
        return int(simulate.get("output_tokens", 16))
    return int(data.get("max_completion_tokens") or data.get("max_tokens") or 16)


def request_shape(body: bytes) -> tuple[int, bool, bool]:
    """(tokens to answer, whether to stream, whether to send the usage chunk) of a request body."""
    try:
        data = json.loads(body)
        count = _token_count(data)
        stream = bool(data.get("stream"))
        return count, stream, stream and bool((data.get("stream_options") or {}).get("include_usage"))
    except (ValueError, TypeError, AttributeError):
        return 16, False, False


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    if scope["method"] != "POST":
        await _answer(send, 200, json.dumps({"status": "ok", **served}).encode())
        return
    if EXPECTED_AUTHORIZATION is not None and EXPECTED_AUTHORIZATION not in (
        value for name, value in scope["headers"] if name == b"authorization"
    ):
        await _answer(send, 401, UNAUTHORIZED)
        return
    count, stream, usage = request_shape(body)
    if stream:
        served["streams"] += 1
        events = _streams.get((count, usage)) or _streams.setdefault((count, usage), _stream_events(count, usage))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    served["completions"] += 1
    await _answer(send, 200, _completions.get(count) or _completions.setdefault(count, _completion(count)))
