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
/v1/messages).

Usage is scripted by default (`reply(input_tokens=..., cache_read_input_tokens=...)`): the
numbers are reported whatever the request holds, which forces a cache write or read. With
`measure_usage = True` it is measured instead, as the real API would: input tokens counted
from the request (`count_tokens`: four characters a token, rounded up per block, so tests
can assert exact numbers), and the cache columns decided by a prompt cache that behaves like
Anthropic's (`FakePromptCache`): prefixes marked with `cache_control` are remembered for their
TTL, the first request with one is a write, a later identical prefix a read. The cache
checks (at most four breakpoints, none on an empty text block) apply in both modes.

And the Message Batches API as the SDK calls it: POST /v1/messages/batches, GET
/v1/messages/batches/{id}, GET /v1/messages/batches/{id}/results (JSONL, in no particular
order, like the real one), POST /v1/messages/batches/{id}/cancel. A batch is `in_progress`
for `batch_delay_s`, then `ended`: each request's params answered by the same logic as
/v1/messages (a request it would refuse is `errored`, and so is one a test scripted with
`batch_fail(custom_id, ...)`). A cancelled batch goes `canceling`, then `ended` with its
first `batch_early_lines` requests answered and the rest `canceled`. `results_root` moves
the results_url the API names to another server (as a misbehaving upstream might)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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

# Prompt caching, as Anthropic documents it: at most four breakpoints a request, a prefix
# cached only from a minimum length, five minutes (or an hour) from its last use, and a hit
# found at a breakpoint or up to 20 blocks before it.
MAX_BREAKPOINTS = 4
CACHE_TTLS_S = {"5m": 300.0, "1h": 3600.0}
CACHE_LOOKBACK_BLOCKS = 20

BATCH = re.compile(r"\A/v1/messages/batches/([^/]+)\Z")
BATCH_RESULTS = re.compile(r"\A/v1/messages/batches/([^/]+)/results\Z")
BATCH_CANCEL = re.compile(r"\A/v1/messages/batches/([^/]+)/cancel\Z")
CUSTOM_ID = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")


class InvalidRequest(Exception):
    """A request the real API answers 400 to (the message is Anthropic's)."""


def count_tokens(text: str) -> int:
    """The fake's tokenizer: four characters a token, rounded up."""
    return (len(text) + 3) // 4


@dataclass(slots=True)
class PromptBlock:
    """One block of a request in the order Anthropic caches them: tools, system, messages."""

    content: str  # what identifies it in a cache key (cache_control left out)
    tokens: int
    ttl: str | None  # the TTL of its breakpoint; None when it carries no cache_control


def _breakpoint_ttl(where: str, cache_control: Any) -> str | None:
    if cache_control is None:
        return None
    if not isinstance(cache_control, dict) or cache_control.get("type") != "ephemeral":
        raise InvalidRequest(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = cache_control.get("ttl", "5m")
    if ttl not in CACHE_TTLS_S:
        raise InvalidRequest(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return ttl


def _block(where: str, role: str, block: Any) -> PromptBlock:
    if isinstance(block, str):
        block = {"type": "text", "text": block}
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where}: Input should be a valid dictionary")
    ttl = _breakpoint_ttl(where, block.get("cache_control"))
    rest = {name: value for name, value in block.items() if name != "cache_control"}
    if rest.get("type") == "text":
        text = rest.get("text")
        if not isinstance(text, str) or not text:
            if ttl is not None:
                raise InvalidRequest(f"{where}.text: cache_control cannot be set for empty text blocks")
            raise InvalidRequest(f"{where}: text content blocks must be non-empty")
        tokens = count_tokens(text)
    else:
        tokens = count_tokens(json.dumps(rest, sort_keys=True))
    return PromptBlock(content=json.dumps([role, rest], sort_keys=True), tokens=tokens, ttl=ttl)


def prompt_blocks(body: dict[str, Any]) -> list[PromptBlock]:
    """A request's input as blocks, each `cache_control` checked as the real API does."""
    blocks = [_block(f"tools.{i}", "tool", tool) for i, tool in enumerate(body.get("tools") or [])]
    system = body.get("system")
    if isinstance(system, str):
        if system:
            blocks.append(_block("system", "system", system))
    elif system is not None:
        blocks += [_block(f"system.{i}", "system", part) for i, part in enumerate(system)]
    messages = body.get("messages") or []
    for m, message in enumerate(messages):
        role, content = message.get("role", ""), message.get("content")
        if isinstance(content, str) and not content:
            if m == len(messages) - 1 and role == "assistant":
                continue
            raise InvalidRequest(
                f"messages.{m}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        parts = [content] if isinstance(content, str) else list(content or [])
        blocks += [_block(f"messages.{m}.content.{i}", role, part) for i, part in enumerate(parts)]
    automatic = _breakpoint_ttl("cache_control", body.get("cache_control"))
    if automatic is not None and blocks and blocks[-1].ttl is None:
        blocks[-1].ttl = automatic  # top-level cache_control marks the last cacheable block
    marked = sum(block.ttl is not None for block in blocks)
    if marked > MAX_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {marked}."
        )
    return blocks


@dataclass(slots=True)
class CacheResult:
    """What one request did with the prompt cache, in Anthropic's usage terms."""

    input_tokens: int  # neither read from nor written to the cache
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    written_by_ttl: dict[str, int] = field(default_factory=lambda: {"5m": 0, "1h": 0})
    breakpoints: int = 0


class FakePromptCache:
    """Anthropic's prompt cache in miniature. An entry is the exact prefix up to a breakpoint
    (with the model and API key: the real cache is per model and organisation), kept until
    its TTL has passed since its last use. A request reads the longest cached prefix found at
    a breakpoint or up to 20 blocks before one, and writes every marked prefix beyond it that
    reaches `min_tokens`; the tokens after the last marked prefix are ordinary input."""

    def __init__(self, min_tokens: int = 1024) -> None:
        self.min_tokens = min_tokens
        self.clock: Callable[[], float] = time.monotonic  # tests move time by replacing it
        self.entries: dict[str, tuple[float, float]] = {}  # prefix hash -> (expires at, TTL)
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def apply(self, scope: str, blocks: list[PromptBlock]) -> CacheResult:
        total = sum(block.tokens for block in blocks)
        marks = [i for i, block in enumerate(blocks) if block.ttl is not None]
        result = CacheResult(input_tokens=total, breakpoints=len(marks))
        if not marks:
            return result
        hashes, ends = [], []
        digest, running_total = hashlib.sha256(scope.encode()), 0
        for block in blocks:
            digest.update(b"\0" + block.content.encode())
            hashes.append(digest.hexdigest())
            running_total += block.tokens
            ends.append(running_total)
        now = self.clock()
        with self._lock:
            read_at = -1
            for mark in marks:
                for i in range(mark, max(-1, mark - CACHE_LOOKBACK_BLOCKS), -1):
                    if i <= read_at:
                        break
                    entry = self.entries.get(hashes[i])
                    if entry is not None and entry[0] > now:
                        read_at = i
                        break
            if read_at >= 0:
                ttl = self.entries[hashes[read_at]][1]
                self.entries[hashes[read_at]] = (now + ttl, ttl)  # a hit refreshes the entry
                result.cache_read_input_tokens = ends[read_at]
            written_to = ends[read_at] if read_at >= 0 else 0
            for mark in marks:
                if mark > read_at and ends[mark] >= self.min_tokens:
                    ttl = CACHE_TTLS_S[blocks[mark].ttl]
                    self.entries[hashes[mark]] = (now + ttl, ttl)
                    result.written_by_ttl[blocks[mark].ttl] += ends[mark] - written_to
                    written_to = ends[mark]
        result.cache_creation_input_tokens = sum(result.written_by_ttl.values())
        result.input_tokens = total - result.cache_read_input_tokens - result.cache_creation_input_tokens
        return result


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


def _rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class FakeMessageBatch:
    id: str
    requests: list[dict[str, Any]]
    version: str  # the anthropic-version its creation was sent with
    key: str | None
    ends_at: float  # time.monotonic() when it ends
    created_at: datetime
    status: str = "in_progress"
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # request index -> result
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None


class FakeAnthropic(FakeUpstream):
    name = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self.answer = MessageAnswer()
        self.expected_key: str | None = None  # when set, any other x-api-key gets Anthropic's 401
        # False: report the scripted usage. True: measure the input and let the cache decide.
        self.measure_usage = False
        self.cache = FakePromptCache()
        self.cache_results: list[CacheResult] = []  # one per request answered, in order
        self._ids = itertools.count(1)
        self.batches: dict[str, FakeMessageBatch] = {}
        # Its own lock: a batch answers its requests with the logic that takes the base one.
        self._batch_lock = threading.Lock()
        self.batch_delay_s = 0.1  # how long a batch is in progress before it ends
        self.batch_early_lines = 0  # requests answered at once (kept when the batch is cancelled)
        self.batch_failures: dict[str, tuple[str, str]] = {}  # custom_id -> (error type, message)
        self.results_root: str | None = None  # where the results_url points (None: this server)

    def batch_fail(self, custom_id: str, error_type: str = "invalid_request_error", message: str | None = None) -> None:
        """The batch request with this custom_id is `errored` with this error."""
        self.batch_failures[custom_id] = (error_type, message or MESSAGES.get(error_type, "Upstream failure."))

    def batch_requests(self) -> list[dict[str, Any]]:
        """Every request of every batch this fake was given, in order."""
        return [request for batch in self.batches.values() for request in batch.requests]

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
        path, method = request.path.split("?")[0], request.method
        found = None
        if method == "POST" and path == "/v1/messages":
            found = self._messages
        elif method == "POST" and path == "/v1/messages/batches":
            found = self._batch_create
        elif method == "GET" and BATCH.match(path):
            found = self._batch_retrieve
        elif method == "GET" and BATCH_RESULTS.match(path):
            found = self._batch_results
        elif method == "POST" and BATCH_CANCEL.match(path):
            found = self._batch_cancel
        if found is None:
            self.send_json(handler, 404, self.error_body(404, f"Not found: {request.method} {request.path}", None))
            return
        if "anthropic-version" not in request.headers:
            self.send_json(handler, 400, self.error_body(400, "anthropic-version: header is required", None))
            return
        if self.expected_key is not None and presented_key(request) != self.expected_key:
            self.send_json(handler, 401, self.error_body(401, None, None))
            return
        found(handler, request)

    def _messages(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        try:
            cached = self._measured(request.headers["anthropic-version"], presented_key(request), body)
        except InvalidRequest as exc:
            self.send_json(handler, 400, self.error_body(400, str(exc), None))
            return
        if body.get("stream"):
            self._stream(handler, body, cached)
        else:
            self.send_json(handler, 200, self._message(body, cached))

    def _measured(self, version: str, key: str | None, body: dict[str, Any]) -> CacheResult:
        """What a request does with the prompt cache, and the usage it reports (raises
        InvalidRequest for a request the real API answers 400 to)."""
        if version >= SAMPLING_REMOVED:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    raise InvalidRequest(f"{name}: Extra inputs are not permitted")
        cached = self.cache.apply(f"{key}\0{body.get('model')}", prompt_blocks(body))
        with self._lock:
            self.cache_results.append(cached)
        if not self.measure_usage:
            answer = self.answer
            cached = CacheResult(
                input_tokens=answer.input_tokens,
                cache_read_input_tokens=answer.cache_read_input_tokens,
                cache_creation_input_tokens=answer.cache_creation_input_tokens,
                written_by_ttl={"5m": answer.cache_creation_input_tokens, "1h": 0},
            )
        return cached

    # -- message batches --------------------------------------------------------------

    def _batch_create(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            self.send_json(handler, 400, self.error_body(400, "requests: Field required", None))
            return
        seen: set[str] = set()
        for i, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                message = f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                self.send_json(handler, 400, self.error_body(400, message, None))
                return
            if custom_id in seen or not isinstance(entry.get("params"), dict):
                message = f"requests.{i}: custom_id must be unique and params an object"
                self.send_json(handler, 400, self.error_body(400, message, None))
                return
            seen.add(custom_id)
        batch = FakeMessageBatch(
            id=f"msgbatch_fake{next(self._ids)}",
            requests=requests,
            version=request.headers["anthropic-version"],
            key=presented_key(request),
            ends_at=time.monotonic() + self.batch_delay_s,
            created_at=datetime.now(UTC),
        )
        with self._batch_lock:
            self.batches[batch.id] = batch
            for index in range(min(self.batch_early_lines, len(requests))):
                batch.results[index] = self._batch_result(batch, requests[index])
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_result(self, batch: FakeMessageBatch, entry: dict[str, Any]) -> dict[str, Any]:
        """One request of a batch as /v1/messages answers it, as a `result`."""
        failure = self.batch_failures.get(entry["custom_id"])
        params = entry["params"]
        if failure is None:
            try:
                if params.get("stream"):
                    raise InvalidRequest("stream: batch requests cannot be streamed")
                cached = self._measured(batch.version, batch.key, params)
            except InvalidRequest as exc:
                failure = ("invalid_request_error", str(exc))
        if failure is not None:
            error = {"type": "error", "error": {"type": failure[0], "message": failure[1]}, "request_id": None}
            return {"type": "errored", "error": error}
        return {"type": "succeeded", "message": self._message(params, cached)}

    def _batch_end(self, batch: FakeMessageBatch) -> None:
        if batch.status == "in_progress":
            for index, entry in enumerate(batch.requests):
                if index not in batch.results:
                    batch.results[index] = self._batch_result(batch, entry)
        else:  # canceling: what had not run is canceled
            for index in range(len(batch.requests)):
                batch.results.setdefault(index, {"type": "canceled"})
        batch.status = "ended"
        batch.ended_at = datetime.now(UTC)

    def _batch_of(
        self, handler: BaseHTTPRequestHandler, pattern: re.Pattern[str], path: str
    ) -> FakeMessageBatch | None:
        batch = self.batches.get(pattern.match(path.split("?")[0])[1])
        if batch is None:
            self.send_json(handler, 404, self.error_body(404, "Message batch not found.", None))
        return batch

    def _batch_retrieve(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        batch = self._batch_of(handler, BATCH, request.path)
        if batch is None:
            return
        with self._batch_lock:
            if batch.status == "canceling" or (batch.status == "in_progress" and time.monotonic() >= batch.ends_at):
                self._batch_end(batch)
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_cancel(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        batch = self._batch_of(handler, BATCH_CANCEL, request.path)
        if batch is None:
            return
        with self._batch_lock:
            if batch.status == "in_progress":
                batch.status = "canceling"
                batch.cancel_initiated_at = datetime.now(UTC)
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_results(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        batch = self._batch_of(handler, BATCH_RESULTS, request.path)
        if batch is None:
            return
        if batch.status != "ended":
            self.send_json(handler, 400, self.error_body(400, "The batch is still processing.", None))
            return
        rows = [
            {"custom_id": batch.requests[index]["custom_id"], "result": result}
            for index, result in reversed(sorted(batch.results.items()))  # no order is promised
        ]
        raw = "".join(json.dumps(row) + "\n" for row in rows).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/binary")
        handler.send_header("Content-Length", str(len(raw)))
        for name, value in self.response_headers().items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)
        handler.wfile.flush()

    def _batch_body(self, batch: FakeMessageBatch) -> dict[str, Any]:
        ended = batch.status == "ended"
        kinds = [result["type"] for result in batch.results.values()] if ended else []
        root = self.results_root or self.root_url
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": kinds.count("succeeded"),
                "errored": kinds.count("errored"),
                "canceled": kinds.count("canceled"),
                "expired": kinds.count("expired"),
            },
            "ended_at": _rfc3339(batch.ended_at),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + timedelta(hours=24)),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at),
            "results_url": f"{root}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _usage(self, cached: CacheResult, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": cached.input_tokens,
            "cache_creation_input_tokens": cached.cache_creation_input_tokens,
            "cache_read_input_tokens": cached.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cached.written_by_ttl["5m"],
                "ephemeral_1h_input_tokens": cached.written_by_ttl["1h"],
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, body: dict[str, Any], cached: CacheResult, *, streaming: bool = False) -> dict[str, Any]:
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
            "usage": self._usage(cached, min(1, answer.output_tokens) if streaming else answer.output_tokens),
        }

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], cached: CacheResult) -> None:
        answer = self.answer
        broken = self.take_stream_break()
        sse = self.open_stream(handler)
        sse.event(
            {"type": "message_start", "message": self._message(body, cached, streaming=True)}, event="message_start"
        )
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
        usage = self._usage(cached, answer.output_tokens)
        usage.pop("service_tier")
        usage.pop("cache_creation")  # message_delta's usage has no TTL breakdown
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
