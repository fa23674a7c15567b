"""Streaming chat over a WebSocket (ws://HOST/ws/v1/chat), through the one pipeline.

A client authenticates with `Authorization: Bearer <key>` on the handshake, or, from a
browser, with a first message `{"type": "auth", "key": ...}`, or is a logged-in staff
member on the built-in pages. It then sends
`{"type": "chat", "id": ..., "model": ..., "messages": [...], ...}` (the same fields as a
chat completion) and receives `delta` events, then `done`; `{"type": "cancel", "id": ...}`
stops an answer and its upstream call. Several chats run at once on one socket, told
apart by `id`. Bad input gets an `error` event and the socket stays usable; a socket that
is not authenticated is closed with code 4401 before any model is called."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import OriginValidator
from django.conf import settings

from llmops import catalog
from llmops.api.chat import chat_request_data, inference_request, route_body, usd
from llmops.auth import api_key_for_staff
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.pipeline import Inference, InferenceRequest
from llmops.providers.base import UpstreamError

logger = logging.getLogger(__name__)

UNAUTHENTICATED = 4401


class BrowserOriginValidator(OriginValidator):
    """A browser sends an Origin, which must be one of ALLOWED_HOSTS, so a page elsewhere
    cannot borrow a visitor's session. Other clients send none and authenticate with a key."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        return parsed_origin is None or self.validate_origin(parsed_origin)


def _header_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.api_key: ApiKeyInfo | None = None
        self.chats: dict[str, asyncio.Task[None]] = {}
        await self.accept()
        key = _header_key(self.scope)
        user = self.scope.get("user")
        if key is not None:
            self.api_key = await catalog.api_key_get(key)
            if self.api_key is None:
                await self.close(code=UNAUTHENTICATED)
        elif user is not None and user.is_authenticated and user.is_staff:
            # The built-in pages: a logged-in staff member, on their own playground key.
            self.api_key = await database_sync_to_async(api_key_for_staff)(user)
            await self.send_event({"type": "ready"})

    async def disconnect(self, code: int) -> None:
        # The client left: stop every answer it was receiving, and the upstream calls behind them.
        for task in list(self.chats.values()):
            task.cancel()
        if self.chats:
            await asyncio.gather(*self.chats.values(), return_exceptions=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        if len(raw.encode()) > settings.LLMOPS_MAX_BODY_BYTES:
            await self.error(
                None, "request_too_large", f"Messages are limited to {settings.LLMOPS_MAX_BODY_BYTES} bytes."
            )
            return
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            await self.error(None, "invalid_json", "The message is not valid JSON.")
            return
        if not isinstance(message, dict):
            await self.error(None, "invalid_json", "A message must be a JSON object.")
            return
        kind, chat_id = message.get("type"), message.get("id")
        if self.api_key is None:
            if kind == "auth" and isinstance(message.get("key"), str):
                self.api_key = await catalog.api_key_get(message["key"])
                if self.api_key is not None:
                    await self.send_event({"type": "ready"})
                    return
            await self.close(code=UNAUTHENTICATED)
            return
        if kind == "chat":
            await self.start_chat(chat_id, message)
        elif kind == "cancel":
            task = self.chats.get(str(chat_id))
            if task is None:
                await self.error(chat_id, "unknown_id", f"No answer with id {chat_id!r} is in progress.")
            else:
                task.cancel()
        elif kind == "auth":
            await self.send_event({"type": "ready"})
        else:
            await self.error(chat_id, "unknown_type", "type must be chat, cancel or auth.")

    async def start_chat(self, chat_id: Any, message: dict[str, Any]) -> None:
        assert self.api_key is not None
        # The key as configured now: one revoked or expired since the socket opened ends it.
        current = await catalog.api_key_by_id(self.api_key.id)
        if current is None:
            await self.error(chat_id, "invalid_api_key", "Incorrect, revoked or expired API key.")
            await self.close(code=UNAUTHENTICATED)
            return
        self.api_key = current
        if not isinstance(chat_id, (str, int)) or isinstance(chat_id, bool) or str(chat_id) == "":
            await self.error(None, "missing_id", "A chat needs an id (a string or a number) to tell its events apart.")
            return
        key = str(chat_id)
        if key in self.chats:
            await self.error(chat_id, "duplicate_id", f"An answer with id {chat_id!r} is already in progress.")
            return
        if len(self.chats) >= settings.LLMOPS_WS_MAX_CHATS:
            await self.error(
                chat_id, "too_many_chats", f"At most {settings.LLMOPS_WS_MAX_CHATS} answers at once on one socket."
            )
            return
        payload = {k: v for k, v in message.items() if k not in ("type", "id")}
        try:
            data = chat_request_data(payload)
        except GatewayError as exc:
            await self.error(chat_id, exc.code or exc.error_type, exc.message)
            return
        request = inference_request(
            data,
            api_key=self.api_key,
            cache_mode=(data.get("cache") or {}).get("mode", "use"),
            endpoint_kind="ws.chat",
        )
        task = asyncio.ensure_future(self.answer(chat_id, request))
        self.chats[key] = task
        task.add_done_callback(lambda _: self.chats.pop(key, None))

    async def answer(self, chat_id: Any, request: InferenceRequest) -> None:
        stream = Inference(request, stream=True)
        try:
            await stream.open()
            await stream.first()
            async for text in stream:
                await self.send_event({"type": "delta", "id": chat_id, "text": text})
            result = stream.result
            assert result is not None
            usage = result.usage
            await self.send_event(
                {
                    "type": "done",
                    "id": chat_id,
                    "model": result.model,
                    "attempts": result.upstream_calls,
                    "usage": {
                        "prompt_tokens": usage.input_tokens,
                        "completion_tokens": usage.output_tokens,
                        "total_tokens": usage.input_tokens + usage.output_tokens,
                    },
                    "cost_usd": usd(result.cost_usd),
                    "cache": result.cache,
                    "latency_ms": round(result.latency_ms, 3),
                    "ttft_ms": None if result.ttft_ms is None else round(result.ttft_ms, 3),
                    "finish_reason": result.finish_reason,
                    **route_body(result),
                }
            )
        except asyncio.CancelledError:
            await stream.aclose()
            if not self.closing:
                await self.send_event({"type": "cancelled", "id": chat_id})
        except (GatewayError, UpstreamError) as exc:
            code = getattr(exc, "code", None) or exc.error_type
            await self.error(chat_id, code, exc.message)
        except Exception:
            logger.exception("WebSocket chat %s failed", chat_id)
            await self.error(chat_id, "server_error", "The gateway failed while answering.")
        finally:
            await stream.aclose()

    @property
    def closing(self) -> bool:
        return getattr(self, "_closed", False)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self._closed = True
        await super().websocket_disconnect(message)

    async def send_event(self, event: dict[str, Any]) -> None:
        if not self.closing:
            await self.send(text_data=json.dumps(event))

    async def error(self, chat_id: Any, code: str, message: str) -> None:
        await self.send_event({"type": "error", "id": chat_id, "code": code, "message": message})
