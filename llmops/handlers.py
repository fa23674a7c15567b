"""The ASGI handler for the gateway's API paths (/v1/, /healthz).

Django's own handler runs every old-style middleware hook and the sync receivers of the
request_started/request_finished signals on a worker thread: about fifteen thread hops
per request, which measured as most of the gateway's CPU per request. The API needs none
of them: it authenticates with its own keys, answers JSON, and touches the database only
through the catalog loader, which closes its own connections. So this handler runs the
view with no middleware and no signals; the admin and pages keep Django's full handler.

It also refuses what it can before reading a body: a declared length over the limit (413),
a POST without a valid key (401); and it reads the body into memory, counting, stopping
with a 413 at the first chunk past LLMOPS_MAX_BODY_BYTES. (Django's read_body spools the
whole body to a temporary file first, whatever its size.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpResponse
from django.urls import set_script_prefix

from llmops import catalog
from llmops.catalog import ApiKeyInfo
from llmops.errors import AuthenticationFailed, GatewayError, error_response

API_PREFIXES = ("/v1/", "/healthz")
# The same answers as llmops.auth.authorize gives, which the view runs again (from the
# snapshot: a dict lookup) unless it takes the key this handler found, request.llmops_api_key.
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="llmops"'}


# Uploads (POST /v1/files) may be as large as a batch file and its multipart envelope; they
# are spooled to a temporary file rather than held in memory.
UPLOAD_PATH = "/v1/files"
UPLOAD_ENVELOPE_BYTES = 64 * 1024


def too_large(limit: int) -> HttpResponse:
    return error_response(GatewayError(f"The body is larger than {limit} bytes.", status=413, code="request_too_large"))


def file_too_large() -> HttpResponse:
    limit = settings.LLMOPS_BATCH_MAX_FILE_BYTES
    return error_response(
        GatewayError(
            f"The file is larger than {limit} bytes, the most a batch file may hold (LLMOPS_BATCH_MAX_FILE_BYTES).",
            param="file",
            code="file_too_large",
        )
    )


async def scope_api_key(authorization: bytes | None) -> ApiKeyInfo | HttpResponse:
    """The key an `Authorization: Bearer` header carries, or the 401 to answer instead."""
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return error_response(
            AuthenticationFailed(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
                headers=WWW_AUTHENTICATE,
            )
        )
    info = await catalog.api_key_get(token)
    if info is None:
        return error_response(
            AuthenticationFailed("Incorrect or revoked API key.", code="invalid_api_key", headers=WWW_AUTHENTICATE)
        )
    return info


async def body_read(receive: Any, limit: int) -> io.BytesIO | None:
    """The request body in memory, or None as soon as it passes `limit` bytes (the rest is
    never read). Raises RequestAborted when the client leaves first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))


async def upload_read(receive: Any, limit: int) -> IO[bytes] | None:
    """An upload's body, spooled to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE; None
    (and the file closed) as soon as it passes `limit` bytes."""
    spooled = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    spooled.close()
                    return None
                spooled.write(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled


class ApiASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        authorization = declared = None
        for name, value in scope["headers"]:  # ASGI header names are lower-case
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                declared = value
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit = (
            settings.LLMOPS_BATCH_MAX_FILE_BYTES + UPLOAD_ENVELOPE_BYTES if upload else settings.LLMOPS_MAX_BODY_BYTES
        )
        refusal = file_too_large if upload else lambda: too_large(limit)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.send_response(refusal(), send)
            return
        api_key: ApiKeyInfo | None = None
        if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            found = await scope_api_key(authorization)
            if isinstance(found, HttpResponse):
                await self.send_response(found, send)
                return
            api_key = found
        try:
            body_file = await (upload_read if upload else body_read)(receive, limit)
        except RequestAborted:
            return
        if body_file is None:
            await self.send_response(refusal(), send)
            return
        set_script_prefix(get_script_prefix(scope))
        request, refusal = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(refusal, send)
            return
        request.llmops_api_key = api_key  # type: ignore[attr-defined]

        async def respond() -> None:
            response = await self.run_get_response(request)
            try:
                with contextlib.suppress(asyncio.CancelledError):  # the client left mid-answer
                    await self.send_response(response, send)
            finally:
                close = getattr(response, "llmops_close", None)
                if close is not None:
                    await close()

        # A client that disconnects cancels the view, and with it the upstream call.
        disconnect = asyncio.ensure_future(self.listen_for_disconnect(receive))
        answer = asyncio.ensure_future(respond())
        try:
            await asyncio.wait((disconnect, answer), return_when=asyncio.FIRST_COMPLETED)
            for task in (disconnect, answer):
                if not task.done():
                    task.cancel()
            # Waited for, not awaited, and their exceptions read, not raised: raising them
            # here would tie this frame, the tasks and their exceptions into a reference
            # cycle per request, which only a full collection frees (a long pause under load).
            await asyncio.wait((disconnect, answer))
            if not disconnect.cancelled():
                disconnect.exception()  # RequestAborted: the client left
            failure = None if answer.cancelled() else answer.exception()
            if failure is not None:
                raise failure
        except asyncio.CancelledError:
            # The server cancelled the whole request (some do when the client goes away):
            # the view's task must stop too, and with it the upstream call.
            for task in (disconnect, answer):
                task.cancel()
            raise
        finally:
            body_file.close()


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)
