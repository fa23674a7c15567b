"""The upstreams the benchmarks put behind (or beside) the gateway, all OpenAI-compatible:

- `echo_app`, the smallest upstream: a bare ASGI app that answers every POST with a fixed
  chat.completion (or, with `"stream": true`, OpenAI's SSE wire format: `data: {...}` lines
  of `chat.completion.chunk`s, then `data: [DONE]`; with `stream_options.include_usage`
  every chunk carries `"usage": null` and a last chunk with no choices carries the usage),
  and GET /healthz with `{"status": "ok"}` and how many answers and streams it has served.
  The answer has `simulate.output_tokens` tokens (the gateway's own request shape), else
  `max_completion_tokens` or `max_tokens` (what an OpenAI client sends), else 16. Served by
  the same daphne as the gateway it is the baseline of (`benchmarks.gateway_overhead`):
  what a direct call to an instant upstream costs through the same server and client.

      daphne -b 127.0.0.1 -p 8001 benchmarks.harness.servers:echo_app

- the fast upstream, the same answers on a bare asyncio protocol (HTTP/1.1 keep-alive, no
  framework, no ASGI server, streams in chunked encoding written at once), so that on a
  2-core machine it takes as little CPU as it can from the gateway it stands behind
  (`benchmarks.proxy`, `benchmarks.upstream_clients`):

      python -m benchmarks.harness.servers PORT

  With ECHO_API_KEY set, both answer only requests carrying `Authorization: Bearer <that
  value>` (401 otherwise), as a self-hosted server started with an API key does.

- `flaky_app`, a scripted upstream for failure benchmarks (`benchmarks.failover`). Each first
  path segment is a lane with its own mode and counters: a catalog model with `base_url =
  http://127.0.0.1:8002/<lane>/v1` calls `POST /<lane>/v1/chat/completions`. A lane is
  `healthy` (every request answered at once; lanes start so), `flaky` (a `fail_rate` share
  fail, evenly mixed: 429 with `Retry-After: 0`, 500, and a `slow_s` sleep before answering,
  past the gateway's upstream timeout; drawn from a seeded random sequence per lane, so runs
  repeat) or `dead` (503 at once). `POST /control/<lane>` with a JSON body such as
  `{"mode": "flaky", "fail_rate": 0.3, "slow_s": 1.0, "seed": 1}` switches a lane and answers
  its counters from before the switch; `GET /stats` answers every lane's counters: requests
  received, per outcome, per mode, and the arrival times (seconds since the last switch) of
  the first `ARRIVALS_KEPT` requests in the current mode. Nothing there streams.

      daphne -b 127.0.0.1 -p 8002 benchmarks.harness.servers:flaky_app
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

WORDS = ("simulated", "answer", "from", "the", "llmops", "gateway", "with", "no", "model", "behind", "it")
HEAD = {"id": "chatcmpl-echo0000000000000000000000", "created": 1700000000, "model": "echo"}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def tokens(count: int) -> list[str]:
    return [("Simulated" if i == 0 else " " + WORDS[i % len(WORDS)]) for i in range(count)]


def _usage(count: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}


def _completion(count: int, content: str | None = None, head: dict[str, Any] = HEAD) -> bytes:
    message = {"role": "assistant", "content": "".join(tokens(count)) if content is None else content, "refusal": None}
    body = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(count),
        "system_fingerprint": None,
    }
    return json.dumps(body).encode()


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
    events += [_chunk({"content": token}, None, usage) for token in tokens(count)]
    events.append(_chunk({}, "stop", usage))
    if usage:
        events.append(_event({**HEAD, "object": "chat.completion.chunk", "choices": [], "usage": _usage(count)}))
    events.append(b"data: [DONE]\n\n")
    return events


def _error(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def request_shape(body: bytes) -> tuple[int, bool, bool]:
    """(tokens to answer, whether to stream, whether to send the usage chunk) of a request body."""
    try:
        data = json.loads(body)
        simulate = data.get("simulate")
        if simulate:
            count = int(simulate.get("output_tokens", 16))
        else:
            count = int(data.get("max_completion_tokens") or data.get("max_tokens") or 16)
        stream = bool(data.get("stream"))
        return count, stream, stream and bool((data.get("stream_options") or {}).get("include_usage"))
    except (ValueError, TypeError, AttributeError):
        return 16, False, False


async def read_body(receive: Any) -> bytes | None:
    """An ASGI request's whole body; None when the client went away first."""
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def send_json(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the echo app

_completions: dict[int, bytes] = {}
_streams: dict[tuple[int, bool], list[bytes]] = {}
API_KEY = os.environ.get("ECHO_API_KEY")
# What each answer had to carry when ECHO_API_KEY is set (None: anything goes).
EXPECTED_AUTHORIZATION = f"Bearer {API_KEY}".encode() if API_KEY else None
UNAUTHORIZED = _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
# Answers served, for /healthz: whoever started the server can check what reached it.
served = {"completions": 0, "streams": 0}


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive) or b""
    if scope["method"] != "POST":
        await send_json(send, 200, json.dumps({"status": "ok", **served}).encode())
        return
    if EXPECTED_AUTHORIZATION is not None and EXPECTED_AUTHORIZATION not in (
        value for name, value in scope["headers"] if name == b"authorization"
    ):
        await send_json(send, 401, UNAUTHORIZED)
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
    await send_json(send, 200, _completions.get(count) or _completions.setdefault(count, _completion(count)))


# ---------------------------------------------------------------- the fast upstream

EXPECTED = f"bearer {API_KEY}".encode() if API_KEY else None
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


def fast_answer(head: bytes, body: bytes) -> bytes:
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


class FastUpstream(asyncio.Protocol):
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
            self.transport.write(fast_answer(head, body))  # type: ignore[attr-defined]
            if b"connection: close" in head.lower():
                self.transport.close()
                return


async def fast_serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FastUpstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- the flaky app

MODES = ("healthy", "flaky", "dead")
ARRIVALS_KEPT = 50_000
FAILURES = ("429", "500", "slow")
RATE_LIMITED = _error("Rate limit reached (scripted).", "rate_limit_exceeded")
SERVER_ERROR = _error("The server had an error (scripted).", "server_error")
UNAVAILABLE = _error("The upstream is down (scripted).", "service_unavailable")


def _rng(seed: Any) -> Any:
    import random  # here: the fast upstream, a baseline whose memory is printed, draws nothing

    return random.Random(seed)


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        head = {"id": "chatcmpl-flaky000000000000000000000", "created": 1700000000, "model": name}
        self.answer = _completion(7, f"An answer from the {name} lane.", head)
        self.mode = "healthy"
        self.fail_rate = 0.3
        self.slow_s = 1.0
        self.rng = _rng(1)
        self.received = 0
        self.outcomes: dict[str, int] = {}
        self.by_mode: dict[str, int] = {}
        self.switched_at = time.monotonic()
        self.arrivals: list[float] = []  # seconds since the switch, in the current mode
        self.in_flight = 0
        self.in_flight_peak = 0

    def switch(self, settings: dict[str, Any]) -> None:
        mode = settings.get("mode", self.mode)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        self.fail_rate = float(settings.get("fail_rate", self.fail_rate))
        self.slow_s = float(settings.get("slow_s", self.slow_s))
        if "seed" in settings:
            self.rng = _rng(settings["seed"])
        self.switched_at = time.monotonic()
        self.arrivals = []

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "fail_rate": self.fail_rate,
            "slow_s": self.slow_s,
            "received": self.received,
            "outcomes": dict(self.outcomes),
            "by_mode": dict(self.by_mode),
            "in_mode": len(self.arrivals),
            "in_mode_s": round(time.monotonic() - self.switched_at, 3),
            "arrivals_s": [round(t, 4) for t in self.arrivals],
            "in_flight_peak": self.in_flight_peak,
        }

    def pick(self) -> str:
        """The outcome of the next request."""
        self.received += 1
        self.by_mode[self.mode] = self.by_mode.get(self.mode, 0) + 1
        if len(self.arrivals) < ARRIVALS_KEPT:
            self.arrivals.append(time.monotonic() - self.switched_at)
        if self.mode == "dead":
            outcome = "503"
        elif self.mode == "flaky" and self.rng.random() < self.fail_rate:
            outcome = FAILURES[self.rng.randrange(len(FAILURES))]
        else:
            outcome = "200"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome


_lanes: dict[str, Lane] = {}


def lane(name: str) -> Lane:
    found = _lanes.get(name)
    if found is None:
        found = _lanes[name] = Lane(name)
    return found


async def flaky_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive) or b""
    parts = scope["path"].strip("/").split("/")
    method = scope["method"]
    if method == "GET" and parts == ["healthz"]:
        return await send_json(send, 200, b'{"status": "ok"}')
    if method == "GET" and parts == ["stats"]:
        return await send_json(send, 200, json.dumps({name: each.stats() for name, each in _lanes.items()}).encode())
    if method == "POST" and len(parts) == 2 and parts[0] == "control":
        target = lane(parts[1])
        before = target.stats()
        try:
            target.switch(json.loads(body or b"{}"))
        except (ValueError, TypeError, AttributeError) as exc:
            return await send_json(send, 400, _error(str(exc), "invalid_request_error"))
        return await send_json(send, 200, json.dumps(before).encode())
    if method == "POST" and len(parts) == 4 and parts[1:] == ["v1", "chat", "completions"]:
        target = lane(parts[0])
        outcome = target.pick()
        if outcome == "429":
            return await send_json(send, 429, RATE_LIMITED, [(b"retry-after", b"0")])
        if outcome == "500":
            return await send_json(send, 500, SERVER_ERROR)
        if outcome == "503":
            return await send_json(send, 503, UNAVAILABLE)
        target.in_flight += 1
        target.in_flight_peak = max(target.in_flight_peak, target.in_flight)
        try:
            if outcome == "slow":
                # Past the gateway's timeout, the caller has gone: daphne drops the late answer.
                await asyncio.sleep(target.slow_s)
            return await send_json(send, 200, target.answer)
        finally:
            target.in_flight -= 1
    return await send_json(send, 404, _error(f"No route for {method} {scope['path']}.", "not_found"))


if __name__ == "__main__":
    from benchmarks.harness import loop_run

    loop_run(fast_serve(int(sys.argv[1])))
