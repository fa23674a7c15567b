"""The upstream client of the hot path: aiohttp with the gateway's own JSON, one session
(a keep-alive connection pool) per event loop.

The official SDKs build pydantic models and transform every request: measured with
`python -m benchmarks.upstream_clients`, the openai SDK spends about eight times the CPU of
aiohttp with plain `json` per chat completion, and more per stream. So chat completions,
whole and streamed, go through here; the SDKs keep the less-travelled endpoints (embeddings,
files and batches) and their types.

Timeouts are per read, as the SDKs' are (httpx's read timeout): a stream may run as long as
its tokens keep coming, and a silence of `timeout` seconds ends it. Errors come out as the
gateway's UpstreamError, mapped as the SDK errors were (upstream_error_from_status), with
the upstream's own message, scrubbed of secrets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import urllib.request
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from llmops.providers.base import UpstreamError, upstream_error_from_status, upstream_text_scrubbed

TIMED_OUT = "The upstream model did not answer in time."
UNREACHABLE = "The upstream model could not be reached."
# What of an error body is read: enough for any provider's error message.
MAX_ERROR_BODY = 64 * 1024


class _Session:
    """An event loop's session, closed when the loop shuts down."""

    __slots__ = ("keeper", "session")

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.keeper: AsyncIterator[None] | None = None


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Session] = weakref.WeakKeyDictionary()


async def _kept_until_shutdown(loop: asyncio.AbstractEventLoop, held: _Session) -> AsyncIterator[None]:
    # An async generator of the loop's: asyncio.run, asgiref and the gateway's own loops call
    # loop.shutdown_asyncgens() before they close, which closes it, and so the session, gracefully.
    try:
        yield
    finally:
        _loops.pop(loop, None)
        if held.session is not None:
            await held.session.close()


async def session() -> aiohttp.ClientSession:
    """This event loop's upstream session (its connection pool is per host)."""
    loop = asyncio.get_running_loop()
    held = _loops.get(loop)
    if held is None:
        held = _loops[loop] = _Session()
        held.keeper = _kept_until_shutdown(loop, held)
        await anext(held.keeper)
    if held.session is None or held.session.closed:
        # No cookies (an upstream's Set-Cookie must not follow one tenant's call into the
        # next). Not trust_env: it looks for a proxy in a thread on every request and sends
        # ~/.netrc's credentials to whatever host the catalog names; proxies are `_proxy`'s.
        held.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            skip_auto_headers=("User-Agent",),
        )
    return held.session


async def sessions_close() -> None:
    """Close this event loop's upstream session now (a loop that is about to stop)."""
    held = _loops.pop(asyncio.get_running_loop(), None)
    if held is not None and held.keeper is not None:
        await held.keeper.aclose()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def _proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, with
    NO_PROXY), as the SDKs' httpx honoured them; read once per URL (the environment of a
    running gateway does not change)."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


_timeouts: dict[float, aiohttp.ClientTimeout] = {}


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    found = _timeouts.get(seconds)
    if found is None:
        found = _timeouts[seconds] = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    return found


def _error_message(status: int, raw: bytes) -> str:
    """The upstream's own error message: OpenAI's and Anthropic's {"error": {"message"}}, or
    the body's text."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"Upstream error {status}: {error['message']}"
        if isinstance(error, str):
            return f"Upstream error {status}: {error}"
    text = raw.decode("utf-8", "replace").strip()
    return f"Upstream error {status}: {text}" if text else f"Upstream error {status}"


def unreadable(what: str) -> UpstreamError:
    """An answer the gateway cannot parse (`what`: "a chat completion", "a stream event")."""
    return UpstreamError(f"The upstream answered {what} the gateway cannot read.")


def stream_error(error: Any) -> UpstreamError:
    """An error the upstream sent inside a stream that had begun (OpenAI's {"error"} chunk,
    Anthropic's `error` event): a 502 with its message, scrubbed of secrets."""
    message = error.get("message") if isinstance(error, dict) else error
    return UpstreamError(upstream_text_scrubbed(f"Upstream error: {message}"))


def transport_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and asyncio's both
        return UpstreamError(TIMED_OUT, status=504, error_type="upstream_timeout")
    return UpstreamError(UNREACHABLE, status=502, kind="unreachable")


async def _failed(response: aiohttp.ClientResponse) -> UpstreamError:
    raw = b""
    # A connection that breaks or stalls mid-body: what arrived before is the message.
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        while len(raw) < MAX_ERROR_BODY and (piece := await response.content.read(MAX_ERROR_BODY - len(raw))):
            raw += piece
    return upstream_error_from_status(
        response.status, _error_message(response.status, raw), response.headers.get("retry-after")
    )


async def _post(url: str, headers: dict[str, str], body: dict[str, Any], timeout: float) -> Any:
    data = json.dumps(body).encode()
    # No redirects followed (as the SDKs' httpx follows none): a host in the catalog cannot
    # send the request, and the key it carries, on to another; a 3xx is an upstream error.
    return (await session()).post(
        url, data=data, headers=headers, timeout=_timeout(timeout), proxy=_proxy(url), allow_redirects=False
    )


async def post_json(url: str, headers: dict[str, str], body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST a JSON body; the JSON answer, or UpstreamError."""
    try:
        async with await _post(url, headers, body, timeout) as response:
            if response.status >= 300:
                raise await _failed(response)
            raw = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc) from exc
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise UpstreamError(
            upstream_text_scrubbed(f"The upstream answered {len(raw)} bytes that are not JSON.")
        ) from exc
    if not isinstance(answer, dict):
        raise UpstreamError("The upstream answered JSON that is not an object.")
    return answer


async def post_events(
    url: str, headers: dict[str, str], body: dict[str, Any], timeout: float
) -> AsyncIterator[tuple[str, str]]:
    """POST a JSON body and yield the answer's server-sent events as (event, data), the
    data lines of an event joined with newlines; UpstreamError on a failure at any point."""
    try:
        async with await _post(url, headers, body, timeout) as response:
            if response.status >= 300:
                raise await _failed(response)
            pending = b""
            event, data = "", []
            async for piece in response.content.iter_any():
                pending += piece
                *lines, pending = pending.split(b"\n")
                for raw_line in lines:
                    line = raw_line.rstrip(b"\r")
                    if not line:
                        if data:
                            yield event or "message", "\n".join(data)
                        event, data = "", []
                    elif line.startswith(b"data:"):
                        data.append(line[6:].decode() if line[5:6] == b" " else line[5:].decode())
                    elif line.startswith(b"event:"):
                        event = line[6:].strip().decode()
            if data:
                yield event or "message", "\n".join(data)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc) from exc
