"""A fake Anthropic Messages API: POST /v1/messages, whole or streamed, in Anthropic's exact
wire format (what anthropic/_streaming.py parses):

- JSON `message` with `usage` {input_tokens (uncached only), output_tokens,
  cache_creation_input_tokens, cache_read_input_tokens};
- with `stream: true`, named events in the real order: message_start (usage so far,
  output_tokens 1), content_block_start, ping, content_block_delta (text_delta) per piece,
  content_block_stop, message_delta (stop_reason; usage cumulative, so output_tokens is
  the total, not an increment), message_stop;
- errors as `{"type": "error", "error": {"type", "message"}, "request_id"}` with a
  `request-id` header, and a mid-stream failure as `event: error` (the SDK raises on it).

Like the real API it wants `anthropic-version`, takes the key from `x-api-key` or
`Authorization: Bearer`, and from version 2026-10-21 rejects temperature/top_p/top_k.
Point a catalog entry's base_url at `fake.base_url` (the server root: the SDK adds
/v1/messages)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream, RecordedRequest, running, text_pieces

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
MESSAGES = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}

# From this API version on (the one the 2.x SDK sends) any sampling parameter is a 400.
SAMPLING_REMOVED = "2026-10-21"


def presented_key(request: RecordedRequest) -> str | None:
    """The API key a request carries: `x-api-key`, or `Authorization: Bearer` (what the 2.x
    SDK sends). Like the real API, x-api-key wins when both are there."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    authorization = request.headers.get("authorization", "")
    return authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None


@dataclass(slots=True)
class MessageAnswer:
    text: str = "Hello from the fake Claude."
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    input_tokens: int = 13  # as Anthropic counts: input neither read from nor written to the cache
    output_tokens: int = 9
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class FakeAnthropic(FakeUpstream):
    name = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self.answer = MessageAnswer()
        self.expected_key: str | None = None  # when set, any other x-api-key gets Anthropic's 401
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.root_url

    def reply(self, **fields: Any) -> MessageAnswer:
        """Answer every following request with these fields (the rest default)."""
        self.answer = MessageAnswer(**fields)
        return self.answer

    def response_headers(self) -> dict[str, str]:
        return {"request-id": f"req_fake{next(self._ids)}"}

    def error_body(self, status: int, message: str | None, error_type: str | None) -> dict[str, Any]:
        kind = error_type or ERROR_TYPES.get(status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message or MESSAGES.get(kind, "Upstream failure.")},
            "request_id": f"req_fake{next(self._ids)}",
        }

    def route(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        if request.method != "POST" or request.path.split("?")[0] != "/v1/messages":
            self.send_json(handler, 404, self.error_body(404, f"Not found: {request.method} {request.path}", None))
            return
        if "anthropic-version" not in request.headers:
            self.send_json(handler, 400, self.error_body(400, "anthropic-version: header is required", None))
            return
        if self.expected_key is not None and presented_key(request) != self.expected_key:
            self.send_json(handler, 401, self.error_body(401, None, None))
            return
        body = request.body if isinstance(request.body, dict) else {}
        if request.headers["anthropic-version"] >= SAMPLING_REMOVED:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    self.send_json(handler, 400, self.error_body(400, f"{name}: Extra inputs are not permitted", None))
                    return
        if body.get("stream"):
            self._stream(handler, body)
        else:
            self.send_json(handler, 200, self._message(body))

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        answer = self.answer
        return {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": answer.cache_creation_input_tokens,
            "cache_read_input_tokens": answer.cache_read_input_tokens,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, body: dict[str, Any], *, streaming: bool = False) -> dict[str, Any]:
        answer = self.answer
        return {
            "id": f"msg_fake{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [] if streaming else [{"type": "text", "text": answer.text}],
            "stop_reason": None if streaming else answer.stop_reason,
            "stop_sequence": None if streaming else answer.stop_sequence,
            # A stream's first event carries the input usage and a token or so of output.
            "usage": self._usage(min(1, answer.output_tokens) if streaming else answer.output_tokens),
        }

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        answer = self.answer
        broken = self.take_stream_break()
        sse = self.open_stream(handler)
        sse.event({"type": "message_start", "message": self._message(body, streaming=True)}, event="message_start")
        sse.event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            event="content_block_start",
        )
        sse.event({"type": "ping"}, event="ping")
        for sent, piece in enumerate(text_pieces(answer.text)):
            if broken is not None and sent == broken.after:
                if broken.drop:
                    sse.drop()
                    return
                sse.event(self.error_body(529, broken.message, broken.error_type), event="error")
                sse.end()
                return
            sse.event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                event="content_block_delta",
            )
        sse.event({"type": "content_block_stop", "index": 0}, event="content_block_stop")
        usage = self._usage(answer.output_tokens)
        usage.pop("service_tier")
        sse.event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
                "usage": usage,
            },
            event="message_delta",
        )
        sse.event({"type": "message_stop"}, event="message_stop")
        sse.end()


@pytest.fixture(name="fake_anthropic")
def fake_anthropic_fixture() -> Iterator[FakeAnthropic]:
    """A running fake, stopped after the test. Import this into a test module to use `fake_anthropic`."""
    yield from running(FakeAnthropic())
