"""A fake OpenAI Chat Completions API: POST /v1/chat/completions, whole or streamed, in
OpenAI's exact wire format (what openai/_streaming.py parses):

- JSON `chat.completion`, usage with `prompt_tokens_details.cached_tokens`;
- with `stream: true`, `data: {chat.completion.chunk}` events (a role chunk, one chunk per
  text piece, a finish_reason chunk; every chunk has `"usage": null` and a last chunk with
  `choices: []` carries the usage when `stream_options.include_usage`), then `data: [DONE]`;
- with `logprobs: true` (whole answers), `choices[0].logprobs.content`: one entry per token
  (`token`, `logprob`, `bytes`, `top_logprobs`), the tokens being the text's pieces with
  the logprobs a test scripted (`reply(token_logprobs=[...])`); `"logprobs": null` otherwise;
- errors as `{"error": {"message", "type", "param", "code"}}` with `x-request-id`, and a
  mid-stream failure as a `data: {"error": ...}` event (the SDK raises APIError on it).

Point a catalog entry's base_url at `fake.base_url` (it ends in /v1, as OpenAI's does)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream, RecordedRequest, running, text_pieces

# What OpenAI answers for each status: (error type, code, message).
ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
DEFAULT_LOGPROB = -0.25


def _tokens(text: str) -> list[str]:
    return text_pieces(text) if text else []


@dataclass(slots=True)
class ChatAnswer:
    text: str = "Hello from the fake OpenAI."
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    cached_tokens: int = 0
    sends_usage: bool = True  # False: like compatible servers that report no usage at all
    # One natural-log probability per piece of `text` (text_pieces), sent when a request asks
    # for logprobs; None: every piece gets DEFAULT_LOGPROB.
    token_logprobs: list[float] | None = None


class FakeOpenAI(FakeUpstream):
    name = "openai"

    def __init__(self) -> None:
        super().__init__()
        self.answer = ChatAnswer()
        self.expected_key: str | None = None  # when set, any other Bearer key gets OpenAI's 401
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def reply(self, **fields: Any) -> ChatAnswer:
        """Answer every following request with these fields (the rest default)."""
        answer = ChatAnswer(**fields)
        if answer.token_logprobs is not None and len(answer.token_logprobs) != len(_tokens(answer.text)):
            # The tokens a real server reports spell out its answer: so do the fake's.
            raise ValueError(f"token_logprobs needs one value per piece of the text: {_tokens(answer.text)}")
        self.answer = answer
        return answer

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_fake{next(self._ids)}", "openai-processing-ms": "1"}

    def error_body(self, status: int, message: str | None, error_type: str | None) -> dict[str, Any]:
        default_type, code, default_message = ERRORS.get(status, ("server_error", None, "Upstream failure."))
        return {
            "error": {
                "message": message or default_message,
                "type": error_type or default_type,
                "param": None,
                "code": code,
            }
        }

    def route(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        if request.method != "POST" or request.path.split("?")[0] != "/v1/chat/completions":
            self.send_json(handler, 404, self.error_body(404, f"Invalid URL ({request.method} {request.path})", None))
            return
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.expected_key is not None and presented != self.expected_key:
            # Real OpenAI masks most of the key; the fake echoes it whole, so a leak cannot hide.
            self.send_json(handler, 401, self.error_body(401, f"Incorrect API key provided: {presented}.", None))
            return
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("stream"):
            self._stream(handler, body)
        else:
            self.send_json(handler, 200, self._completion(body))

    def _usage(self) -> dict[str, Any]:
        answer = self.answer
        return {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _logprobs(self) -> dict[str, Any]:
        pieces = _tokens(self.answer.text)
        values = self.answer.token_logprobs
        if values is None:
            values = [DEFAULT_LOGPROB] * len(pieces)
        content = [
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
            for token, logprob in zip(pieces, values, strict=True)
        ]
        return {"content": content, "refusal": None}

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.answer.text, "refusal": None, "annotations": []},
                    "logprobs": self._logprobs() if body.get("logprobs") is True else None,
                    "finish_reason": self.answer.finish_reason,
                }
            ],
            "usage": self._usage() if self.answer.sends_usage else None,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        include_usage = self.answer.sends_usage and bool((body.get("stream_options") or {}).get("include_usage"))
        broken = self.take_stream_break()
        head = {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if include_usage:
                data["usage"] = None
            return data

        sse = self.open_stream(handler)
        sse.event(chunk({"role": "assistant", "content": "", "refusal": None}))
        for sent, piece in enumerate(text_pieces(self.answer.text)):
            if broken is not None and sent == broken.after:
                if broken.drop:
                    sse.drop()
                    return
                sse.event(self.error_body(500, broken.message, broken.error_type))
                sse.end()
                return
            sse.event(chunk({"content": piece}))
        sse.event(chunk({}, self.answer.finish_reason))
        if include_usage:
            sse.event({**head, "choices": [], "usage": self._usage()})
        sse.event("[DONE]")
        sse.end()


@pytest.fixture(name="fake_openai")
def fake_openai_fixture() -> Iterator[FakeOpenAI]:
    """A running fake, stopped after the test. Import this into a test module to use `fake_openai`."""
    yield from running(FakeOpenAI())
