"""A scripted OpenAI-compatible upstream for failure benchmarks: a bare ASGI app, served by
its own daphne like `benchmarks.echo_asgi`.

    daphne -b 127.0.0.1 -p 8002 benchmarks.flaky_upstream:application

Each first path segment is a lane with its own mode and counters: a catalog model with
`base_url = http://127.0.0.1:8002/<lane>/v1` calls `POST /<lane>/v1/chat/completions`.
A lane's mode is one of

- `healthy`: every request gets a chat.completion at once;
- `flaky`: a `fail_rate` share of requests fail, evenly mixed: 429 with `Retry-After: 0`,
  500, and a `slow_s` sleep before answering (past the gateway's upstream timeout); which
  requests fail is drawn from a seeded random sequence per lane, so runs repeat;
- `dead`: every request gets 503 at once.

Lanes start healthy. `POST /control/<lane>` with a JSON body such as
`{"mode": "flaky", "fail_rate": 0.3, "slow_s": 1.0, "seed": 1}` switches a lane and answers
its counters from before the switch; `GET /stats` answers every lane's counters: requests
received, per outcome, per mode, and the arrival times (seconds since the last switch) of
the requests received in the current mode, the first `ARRIVALS_KEPT`. `GET /healthz`
answers `{"status": "ok"}`. Nothing here streams: the failure benchmark asks for whole
answers."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

MODES = ("healthy", "flaky", "dead")
ARRIVALS_KEPT = 50_000
JSON_HEADERS = [(b"content-type", b"application/json")]
FAILURES = ("429", "500", "slow")


def _completion(lane: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-flaky000000000000000000000",
            "object": "chat.completion",
            "created": 1700000000,
            "model": lane,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"An answer from the {lane} lane.", "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15},
            "system_fingerprint": None,
        }
    ).encode()


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


RATE_LIMITED = _error("Rate limit reached (scripted).", "rate_limit_exceeded")
SERVER_ERROR = _error("The server had an error (scripted).", "server_error")
UNAVAILABLE = _error("The upstream is down (scripted).", "service_unavailable")


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self.answer = _completion(name)
        self.mode = "healthy"
        self.fail_rate = 0.3
        self.slow_s = 1.0
        self.rng = random.Random(1)
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
            self.rng = random.Random(settings["seed"])
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


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    parts = scope["path"].strip("/").split("/")
    method = scope["method"]
    if method == "GET" and parts == ["healthz"]:
        return await _send(send, 200, b'{"status": "ok"}')
    if method == "GET" and parts == ["stats"]:
        return await _send(send, 200, json.dumps({name: each.stats() for name, each in _lanes.items()}).encode())
    if method == "POST" and len(parts) == 2 and parts[0] == "control":
        target = lane(parts[1])
        before = target.stats()
        try:
            target.switch(json.loads(body or b"{}"))
        except (ValueError, TypeError, AttributeError) as exc:
            return await _send(send, 400, _error(str(exc), "invalid_request_error"))
        return await _send(send, 200, json.dumps(before).encode())
    if method == "POST" and len(parts) == 4 and parts[1:] == ["v1", "chat", "completions"]:
        target = lane(parts[0])
        outcome = target.pick()
        if outcome == "429":
            return await _send(send, 429, RATE_LIMITED, [(b"retry-after", b"0")])
        if outcome == "500":
            return await _send(send, 500, SERVER_ERROR)
        if outcome == "503":
            return await _send(send, 503, UNAVAILABLE)
        target.in_flight += 1
        target.in_flight_peak = max(target.in_flight_peak, target.in_flight)
        try:
            if outcome == "slow":
                # Past the gateway's timeout, the caller has gone: daphne drops the late answer.
                await asyncio.sleep(target.slow_s)
            return await _send(send, 200, target.answer)
        finally:
            target.in_flight -= 1
    return await _send(send, 404, _error(f"No route for {method} {scope['path']}.", "not_found"))
