"""A batch's progress as the batches page shows it, sent over the channel layer to the
group every open page listens on. With Redis (production) any process may send; with the
in-memory layer (the embedded default) the layer lives on the server's event loop, so a
runner on another thread hands the message to that loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.utils import timezone

from llmops.batches.models import Batch

logger = logging.getLogger(__name__)

PROGRESS_GROUP = "llmops.batches"

# The event loops that serve pages listening for progress (the in-memory layer's loops).
_listening: set[asyncio.AbstractEventLoop] = set()
_lock = threading.Lock()


def progress_listening(loop: asyncio.AbstractEventLoop) -> None:
    """A page's socket on `loop` listens (called by the consumer as it joins the group)."""
    with _lock:
        _listening.add(loop)


def batch_progress(batch: Batch) -> dict[str, Any]:
    """What the page shows of a batch: counts, cost so far against the estimate, time left."""
    done = batch.completed + batch.failed
    started = batch.in_progress_at
    eta_s = None
    if started is not None and done and batch.total > done and not batch.ended:
        elapsed = (timezone.now() - started).total_seconds()
        eta_s = round(elapsed / done * (batch.total - done), 1)
    return {
        "id": batch.id,
        "status": batch.status,
        "model": batch.model,
        "execution": batch.execution,
        "total": batch.total,
        "completed": batch.completed,
        "failed": batch.failed,
        "cost_usd": format(batch.cost_usd, "f"),
        "estimated_cost_usd": None if batch.estimated_cost_usd is None else format(batch.estimated_cost_usd, "f"),
        "created_at": int(batch.created_at.timestamp()),
        "eta_s": eta_s,
    }


async def progress_publish(progress: dict[str, Any]) -> None:
    """Send a batch's progress to every open batches page; never fails its caller."""
    message = {"type": "batch.progress", "batch": progress}
    try:
        layer = get_channel_layer()
        if layer is None:
            return
        if isinstance(layer, InMemoryChannelLayer):
            here = asyncio.get_running_loop()
            with _lock:
                loops = [loop for loop in _listening if not loop.is_closed()]
                _listening.intersection_update(loops)
            for loop in loops:
                if loop is here:
                    await layer.group_send(PROGRESS_GROUP, message)
                else:
                    asyncio.run_coroutine_threadsafe(layer.group_send(PROGRESS_GROUP, message), loop)
            return
        await layer.group_send(PROGRESS_GROUP, message)
    except Exception:
        logger.warning("Batch progress could not be sent to the channel layer", exc_info=True)
