"""What every upstream call takes while it runs: a slot of its model's concurrency limit
and a place in this process's in-flight count. The pipeline's attempt loop and the
semantic cache's embedding calls both take them here, so both are bounded and counted
alike; whatever takes a slot gives it back with `release()` on every way out."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmops.catalog import EndpointConfig


class InFlight:
    """Upstream calls this process holds open right now, and the most it ever held."""

    current = 0
    peak = 0

    @classmethod
    def enter(cls) -> None:
        cls.current += 1
        if cls.current > cls.peak:
            cls.peak = cls.current

    @classmethod
    def leave(cls) -> None:
        cls.current -= 1


_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _semaphore(endpoint: EndpointConfig) -> asyncio.Semaphore | None:
    if not endpoint.max_concurrency:
        return None
    loop = asyncio.get_running_loop()
    per_loop = _semaphores.get(loop)
    if per_loop is None:
        per_loop = _semaphores[loop] = {}
    key = (endpoint.name, endpoint.max_concurrency)
    semaphore = per_loop.get(key)
    if semaphore is None:
        semaphore = per_loop[key] = asyncio.Semaphore(endpoint.max_concurrency)
    return semaphore


class UpstreamSlot:
    """One upstream call's hold on its model: taken by `upstream_slot`, given back once."""

    __slots__ = ("_semaphore", "held")

    def __init__(self, semaphore: asyncio.Semaphore | None) -> None:
        self._semaphore = semaphore
        self.held = True
        InFlight.enter()

    def release(self) -> None:
        if self.held:
            self.held = False
            InFlight.leave()
            if self._semaphore is not None:
                self._semaphore.release()


async def upstream_slot(endpoint: EndpointConfig) -> UpstreamSlot:
    """Wait for a free slot of the model's concurrency limit (per process) and take it."""
    semaphore = _semaphore(endpoint)
    if semaphore is not None:
        await semaphore.acquire()  # cancelled while waiting: nothing was taken
    return UpstreamSlot(semaphore)
