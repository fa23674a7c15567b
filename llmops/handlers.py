"""The ASGI handler for the gateway's API paths (/v1/, /healthz).

Django's own handler runs every old-style middleware hook and the sync receivers of the
request_started/request_finished signals on a worker thread: about fifteen thread hops
per request, which measured as most of the gateway's CPU per request. The API needs none
of them: it authenticates with its own keys, answers JSON, and touches the database only
through the catalog loader, which closes its own connections. So this handler runs the
view with no middleware and no signals; the admin and pages keep Django's full handler."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

API_PREFIXES = ("/v1/", "/healthz")


class ApiASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return

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
                if task.done():
                    with contextlib.suppress(RequestAborted):  # the client disconnected
                        task.result()
                else:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
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
