"""asyncio.wait_for as Python 3.12 has it, installed on 3.11 (imported first, by llmops).

On 3.11, `asyncio.wait_for` drops a cancellation that arrives after the awaited coroutine
has finished but before wait_for has returned: it returns the result and the task goes
on as if never cancelled (CPython gh-86296, fixed in 3.12 by building wait_for on
`asyncio.timeout`). redis-py wraps every command it sends in wait_for (its socket
timeout), so on 3.11 a task cancelled during a Redis call (a client that left, a batch
runner stopped by its server) could carry on. Seen in the embedded executor: a stopped
runner kept claiming and answering items for 25 s. 3.11's wait_for also runs each awaited
coroutine as a task of its own, a task per Redis command; this one awaits it in place."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await `awaitable`; TimeoutError (and the awaitable cancelled) after `timeout`
    seconds. A cancellation of the caller always propagates."""
    if timeout is not None and timeout <= 0:
        # Already late: a coroutine is not started at all, a future must be done already.
        future: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        if future.done():
            return future.result()
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await future  # until it has stopped
        if task is not None and task.cancelling() > asked:
            raise asyncio.CancelledError  # the caller was cancelled meanwhile
        if future.cancelled():
            raise TimeoutError
        return future.result()
    async with asyncio.timeout(timeout):
        return await awaitable


def install() -> None:
    if sys.version_info < (3, 12):
        asyncio.wait_for = wait_for  # type: ignore[assignment]
        asyncio.tasks.wait_for = wait_for  # type: ignore[assignment]
