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

And OpenAI's Files and Batches API as the SDK calls it: POST /v1/files (a multipart upload),
GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches/{id}, POST
/v1/batches/{id}/cancel. A batch is `in_progress` for `batch_delay_s`, then `completed`:
each uploaded line is answered by the same chat completion logic as /v1/chat/completions,
into an output file (the answers) and an error file (the lines refused, and the ones a test
scripted to fail with `batch_fail(custom_id, ...)`); a custom_id given to `batch_drop` is in
neither, as a lost result would be. A cancelled batch goes `cancelling`, then `cancelled`
with the answers of its first `batch_early_lines` lines only (those it had finished).

Point a catalog entry's base_url at `fake.base_url` (it ends in /v1, as OpenAI's does)."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
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
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")
FILE_CONTENT = re.compile(r"\A/v1/files/([^/]+)/content\Z")
BATCH = re.compile(r"\A/v1/batches/([^/]+)\Z")
BATCH_CANCEL = re.compile(r"\A/v1/batches/([^/]+)/cancel\Z")


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


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    lines: list[dict[str, Any]]
    ends_at: float  # time.monotonic() when it completes
    status: str = "in_progress"
    errors: dict[str, Any] | None = None
    answered: dict[int, tuple[bool, dict[str, Any]]] = field(default_factory=dict)  # line index -> (ok, out line)
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int | None] = field(default_factory=dict)


class FakeOpenAI(FakeUpstream):
    name = "openai"

    def __init__(self) -> None:
        super().__init__()
        self.answer = ChatAnswer()
        self.expected_key: str | None = None  # when set, any other Bearer key gets OpenAI's 401
        self._ids = itertools.count(1)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        # Its own lock: a batch answers its requests with the logic that takes the base one.
        self._batch_lock = threading.Lock()
        self.batch_delay_s = 0.1  # how long a batch is in progress before it completes
        self.batch_early_lines = 0  # lines answered at once (kept when the batch is cancelled)
        self.batch_failures: dict[str, tuple[int, str]] = {}  # custom_id -> (status, message)
        self.batch_dropped: set[str] = set()  # custom_ids whose result is lost

    def batch_fail(self, custom_id: str, status: int = 400, message: str | None = None) -> None:
        """The batch line with this custom_id is answered with this error (in the error file)."""
        self.batch_failures[custom_id] = (status, message or ERRORS.get(status, ERRORS[500])[2])

    def batch_drop(self, custom_id: str) -> None:
        """The batch line with this custom_id gets no result in either file."""
        self.batch_dropped.add(custom_id)

    def batch_lines(self) -> list[dict[str, Any]]:
        """Every line of every batch this fake was given, in order."""
        return [line for batch in self.batches.values() for line in batch.lines]

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
        path, method = request.path.split("?")[0], request.method
        found = None
        if method == "POST" and path == "/v1/chat/completions":
            found = self._chat
        elif method == "POST" and path == "/v1/files":
            found = self._file_create
        elif method == "GET" and FILE_CONTENT.match(path):
            found = self._file_content
        elif method == "POST" and path == "/v1/batches":
            found = self._batch_create
        elif method == "GET" and BATCH.match(path):
            found = self._batch_retrieve
        elif method == "POST" and BATCH_CANCEL.match(path):
            found = self._batch_cancel
        if found is None:
            self.send_json(handler, 404, self.error_body(404, f"Invalid URL ({request.method} {request.path})", None))
            return
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.expected_key is not None and presented != self.expected_key:
            # Real OpenAI masks most of the key; the fake echoes it whole, so a leak cannot hide.
            self.send_json(handler, 401, self.error_body(401, f"Incorrect API key provided: {presented}.", None))
            return
        found(handler, request)

    def _chat(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("stream"):
            self._stream(handler, body)
        else:
            self.send_json(handler, 200, self._completion(body))

    # -- files and batches ------------------------------------------------------------

    def _not_found(self, handler: BaseHTTPRequestHandler, what: str) -> None:
        self.send_json(handler, 404, self.error_body(404, f"No such {what}", None))

    def _file_create(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        content_type = request.headers.get("content-type", "")
        raw = request.body.encode() if isinstance(request.body, str) else b""
        form = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        upload, purpose = fields.get("file"), fields.get("purpose")
        if upload is None or purpose is None:
            self.send_json(handler, 400, self.error_body(400, "Send the fields file and purpose.", None))
            return
        stored = self._file_store(
            upload.get_filename() or "upload", purpose.get_content().strip(), upload.get_payload(decode=True)
        )
        self.send_json(handler, 200, stored.body())

    def _file_store(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(f"file-fake{next(self._ids)}", filename, purpose, content, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def _file_content(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        stored = self.files.get(FILE_CONTENT.match(request.path.split("?")[0])[1])
        if stored is None:
            self._not_found(handler, "file")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(stored.content)))
        for name, value in self.response_headers().items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(stored.content)
        handler.wfile.flush()

    def _batch_create(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        stored = self.files.get(body.get("input_file_id", ""))
        if stored is None or stored.purpose != "batch":
            self.send_json(
                handler, 400, self.error_body(400, "The input file must be a file uploaded for batch.", None)
            )
            return
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            self.send_json(handler, 400, self.error_body(400, "Unsupported endpoint or completion_window.", None))
            return
        now = int(time.time())
        batch = FakeBatch(
            id=f"batch_fake{next(self._ids)}",
            input_file_id=stored.id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            lines=[],
            ends_at=time.monotonic() + self.batch_delay_s,
            times={"created_at": now, "in_progress_at": now, "expires_at": now + 24 * 3600},
        )
        errors = []
        for number, raw in enumerate(stored.content.decode().splitlines(), 1):
            try:
                batch.lines.append(json.loads(raw))
            except ValueError:
                errors.append({"code": "invalid_json_line", "line": number, "message": "Invalid JSON.", "param": None})
        with self._batch_lock:
            self.batches[batch.id] = batch
            if errors:
                batch.status, batch.errors = "failed", {"object": "list", "data": errors}
                batch.times["failed_at"] = now
            for index in range(min(self.batch_early_lines, len(batch.lines))):
                batch.answered[index] = self._batch_answer(batch.lines[index])
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_answer(self, line: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """One line of a batch as the chat endpoint answers it: (succeeded, its output line)."""
        custom_id = line.get("custom_id")
        request_id = f"req_fake{next(self._ids)}"
        failure = self.batch_failures.get(custom_id)
        if failure is None and (line.get("method") != "POST" or line.get("url") != "/v1/chat/completions"):
            failure = (400, "Only POST /v1/chat/completions is supported in this batch.")
        if failure is not None:
            status, body = failure[0], self.error_body(failure[0], failure[1], None)
        else:
            status, body = 200, self._completion(line.get("body") if isinstance(line.get("body"), dict) else {})
        out = {
            "id": f"batch_req_fake{next(self._ids)}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        return status == 200, out

    def _batch_end(self, batch: FakeBatch, status: str) -> None:
        """Answer the rest (completed) or keep what was answered (cancelled), write the files."""
        if status == "completed":
            for index, line in enumerate(batch.lines):
                if index not in batch.answered:
                    batch.answered[index] = self._batch_answer(line)
        kept = [answer for index, answer in sorted(batch.answered.items())]
        kept = [answer for answer in kept if answer[1]["custom_id"] not in self.batch_dropped]
        for ok, kind in ((True, "output"), (False, "error")):
            lines = [json.dumps(out) + "\n" for good, out in kept if good is ok]
            if lines:
                stored = self._file_store(f"{batch.id}_{kind}.jsonl", "batch_output", "".join(lines).encode())
                setattr(batch, f"{kind}_file_id", stored.id)
        now = int(time.time())
        batch.status = status
        batch.times.update(finalizing_at=now, **{f"{status}_at": now})

    def _batch_of(self, handler: BaseHTTPRequestHandler, pattern: re.Pattern[str], path: str) -> FakeBatch | None:
        batch = self.batches.get(pattern.match(path.split("?")[0])[1])
        if batch is None:
            self._not_found(handler, "batch")
        return batch

    def _batch_retrieve(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        batch = self._batch_of(handler, BATCH, request.path)
        if batch is None:
            return
        with self._batch_lock:
            if batch.status == "in_progress" and time.monotonic() >= batch.ends_at:
                self._batch_end(batch, "completed")
            elif batch.status == "cancelling":
                self._batch_end(batch, "cancelled")
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_cancel(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        batch = self._batch_of(handler, BATCH_CANCEL, request.path)
        if batch is None:
            return
        with self._batch_lock:
            if batch.status in BATCH_ENDED:
                message = f"Cannot cancel a batch with status '{batch.status}'."
                self.send_json(handler, 409, self.error_body(409, message, "invalid_request_error"))
                return
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(time.time())
        self.send_json(handler, 200, self._batch_body(batch))

    def _batch_body(self, batch: FakeBatch) -> dict[str, Any]:
        answered = [ok for ok, _ in batch.answered.values()] if batch.status in BATCH_ENDED else []
        times = {
            name: batch.times.get(name)
            for name in (
                "created_at",
                "in_progress_at",
                "expires_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        }
        models = {line.get("body", {}).get("model") for line in batch.lines if isinstance(line.get("body"), dict)}
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": models.pop() if len(models) == 1 else None,
            "errors": batch.errors,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            **times,
            "request_counts": {
                "total": len(batch.lines),
                "completed": sum(answered),
                "failed": len(answered) - sum(answered),
            },
            "metadata": batch.metadata,
        }

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
