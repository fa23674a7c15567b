"""What the fake upstreams share: a threaded HTTP/1.1 server on a loopback port that records
every request and answers from a script each test sets.

A provider module's SDK talks to it over real TCP, so the SDK's own request building,
retries, timeouts, SSE parsing and error classes are what the tests exercise."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the decoded JSON, or the raw text when it was not JSON
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic())


@dataclass(slots=True)
class Failure:
    """One scripted error answer, in the provider's own error shape."""

    status: int
    message: str | None = None
    error_type: str | None = None
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamBreak:
    """Send `after` text deltas, then an error event and the end of the body; or, with
    `drop`, close the connection there without ending the body (a network failure)."""

    after: int
    message: str = "The upstream failed mid-stream."
    error_type: str | None = None
    drop: bool = False


class SSEWriter:
    """One chunked HTTP/1.1 body, each Server-Sent Event in its own chunk, flushed at once
    (so the client sees every event when it is sent, not when the body ends)."""

    def __init__(self, handler: BaseHTTPRequestHandler, upstream: FakeUpstream) -> None:
        self._handler = handler
        self._upstream = upstream
        self._sent = 0

    def event(self, data: Any, *, event: str | None = None) -> None:
        if self._sent and self._upstream.event_delay_s:
            self._upstream.pause(self._upstream.event_delay_s)
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        text = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
        raw = text.encode()
        self._handler.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self._handler.wfile.flush()
        self._sent += 1

    def end(self) -> None:
        self._handler.wfile.write(b"0\r\n\r\n")
        self._handler.wfile.flush()

    def drop(self) -> None:
        """Close the connection with the chunked body unfinished."""
        self._handler.close_connection = True
        self._handler.connection.shutdown(socket.SHUT_RDWR)


def text_pieces(text: str) -> list[str]:
    """Split an answer the way a model streams it: a word and its trailing space per piece."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


U = TypeVar("U", bound="FakeUpstream")


class FakeUpstream:
    """Base for the fake providers. Subclasses implement `route` for their wire protocol.

    Script it per test: `fail(...)` queues error answers (each used once, in order, before
    the normal answer), `delay_s` holds every response head back (to trigger timeouts),
    `event_delay_s` spaces stream events (the first goes at once), `break_stream(...)` fails
    the next stream after some text, `hold_after(n)` answers n requests and holds every
    later one until `release()` (how a test stops a client at a known point, not a time).
    With `notice_hangups`, a request held back by
    `delay_s` whose client closes the connection meanwhile is given up at once and kept in
    `hangups` (how a test sees that the gateway closed an upstream call it no longer needs)."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.delay_s = 0.0
        self.event_delay_s = 0.0
        self.notice_hangups = False
        self.hangups: list[RecordedRequest] = []
        self._hold_after: int | None = None
        self._released = threading.Event()
        self._failures: deque[Failure] = deque()
        self._stream_break: StreamBreak | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting --------------------------------------------------------------------

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        times: int = 1,
        error_type: str | None = None,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        for _ in range(times):
            self._failures.append(Failure(status, message, error_type, retry_after, dict(headers or {})))

    def break_stream(self, after: int, message: str = "The upstream failed mid-stream.", **kwargs: Any) -> None:
        self._stream_break = StreamBreak(after, message, **kwargs)

    def hold_after(self, answered: int) -> None:
        """Answer `answered` more requests, then hold each later one until `release()`."""
        with self._lock:
            self._hold_after = len(self.requests) + answered
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def pause(self, seconds: float) -> None:
        # An Event, not time.sleep: stop() wakes every paused handler at once.
        self._stopping.wait(seconds)

    @property
    def last(self) -> RecordedRequest:
        assert self.requests, f"the fake {self.name} upstream received no request"
        return self.requests[-1]

    # -- running ----------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeUpstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
            timeout = 10  # an idle pooled connection must not hold its thread forever

            def do_POST(self) -> None:
                upstream._serve(self)

            def do_GET(self) -> None:
                upstream._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, and every test stops a fake.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = RecordedRequest(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
            failure = self._failures.popleft() if self._failures else None
            held = self._hold_after is not None and len(self.requests) > self._hold_after
        try:
            if held:
                while not (self._released.wait(0.01) or self._stopping.is_set()):
                    pass
                if self._stopping.is_set():
                    return
            if self.delay_s:
                if self.notice_hangups:
                    if self._wait_or_hangup(handler, request, self.delay_s):
                        return
                else:
                    self.pause(self.delay_s)
                if self._stopping.is_set():
                    return
            if failure is not None:
                error_body = self.error_body(failure.status, failure.message, failure.error_type)
                headers = dict(failure.headers)
                if failure.retry_after is not None:
                    headers["Retry-After"] = failure.retry_after
                self.send_json(handler, failure.status, error_body, headers)
                return
            self.route(handler, request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout it was asked to hit, or a closed stream)

    def _wait_or_hangup(self, handler: BaseHTTPRequestHandler, request: RecordedRequest, seconds: float) -> bool:
        """Wait `seconds`, or less if the client closes the connection meanwhile: True then."""
        sock = handler.connection
        end = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([sock], [], [], min(left, 0.01))
            if not readable:
                continue
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:  # end of file: the client closed its side
                with self._lock:
                    self.hangups.append(request)
                return True
            self.pause(0.01)  # bytes of a next request: not a hang-up
        return False

    def take_stream_break(self) -> StreamBreak | None:
        with self._lock:
            broken, self._stream_break = self._stream_break, None
        return broken

    # -- what subclasses use and implement --------------------------------------------

    def route(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        raise NotImplementedError

    def error_body(self, status: int, message: str | None, error_type: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def response_headers(self) -> dict[str, str]:
        return {}

    def send_json(
        self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        raw = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        for name, value in {**self.response_headers(), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)
        handler.wfile.flush()

    def open_stream(self, handler: BaseHTTPRequestHandler) -> SSEWriter:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        for name, value in self.response_headers().items():
            handler.send_header(name, value)
        handler.end_headers()
        return SSEWriter(handler, self)


def running(upstream: U) -> Iterator[U]:
    """The body of a fixture: start the fake, hand it to the test, stop it."""
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()
