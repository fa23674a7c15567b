"""The batches page's live feed (ws://HOST/ws/batches), for logged-in staff only.

On joining, the socket gets the page's rows as they are now (`batch.snapshot`), so that
nothing that changed between the page's render and the socket's opening is missed, and
after a reconnection the page is current again; then each batch's progress as its runner
publishes it (`batch.progress`), with its key's name added. A socket without a staff
session is closed with 4401 (not signed in) or 4403 (signed in, not staff)."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from llmops.batches.progress import PROGRESS_GROUP, progress_listening
from llmops.batches.selectors import batch_key_name, batches_recent

UNAUTHENTICATED = 4401
FORBIDDEN = 4403


class BatchProgressConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.key_names: dict[str, str] = {}
        self.joined = False
        # Accepted first: a close during the handshake reaches a browser as a bare failure,
        # without the code that tells the page why.
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if not user.is_staff:
            await self.close(code=FORBIDDEN)
            return
        await self.channel_layer.group_add(PROGRESS_GROUP, self.channel_name)
        self.joined = True
        # On the in-memory layer, runners on other threads send to the loops that listen.
        progress_listening(asyncio.get_running_loop())
        rows = await database_sync_to_async(batches_recent)()
        self.key_names.update((row["id"], row["api_key"]) for row in rows)
        await self.send_json({"type": "batch.snapshot", "batches": rows})

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(PROGRESS_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The feed only speaks: nothing a page sends is read (nor parsed as JSON)."""

    async def batch_progress(self, message: dict[str, Any]) -> None:
        batch = message["batch"]
        name = self.key_names.get(batch["id"])
        if name is None:
            # A batch this page has not shown yet: one lookup, then remembered.
            name = await database_sync_to_async(batch_key_name)(batch_id=batch["id"]) or ""
            self.key_names[batch["id"]] = name
        await self.send_json({"type": "batch.progress", "batch": {**batch, "api_key": name}})
