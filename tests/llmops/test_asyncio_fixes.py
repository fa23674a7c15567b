"""A task cancelled while it waits in asyncio.wait_for stops, even when what it waited for
has just finished (Python 3.11 returned the result instead), and so does one cancelled
during a Redis command (redis-py wraps each command in wait_for)."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from llmops.shared_redis import redis_for


async def test_a_cancellation_arriving_with_the_result_is_not_dropped():
    done = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(asyncio.wait_for(done, timeout=5))
    await asyncio.sleep(0)  # it waits now
    done.set_result("answer")
    waiting.cancel()  # in the same turn of the loop: 3.11's own wait_for returned "answer"
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_wait_for_still_times_out_and_cancels_what_it_waited_for():
    started = []

    async def slow():
        started.append(True)
        await asyncio.sleep(10)

    task = asyncio.ensure_future(slow())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, timeout=0.01)
    assert task.cancelled()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow(), timeout=0)  # already late: never started
    assert started == [True]
    assert await asyncio.wait_for(asyncio.sleep(0, "fine"), timeout=1) == "fine"


@pytest.mark.services
async def test_a_task_cancelled_during_a_redis_command_stops_wherever_the_command_was():
    client = redis_for(settings.REDIS_URL)
    await client.ping()
    outcomes = []
    # Cancelled after 0, 1, 2, ... turns of the loop: at every step of sending and reading.
    for turns in range(10):
        task = asyncio.ensure_future(client.get("llmops:test:nothing"))
        for _ in range(turns):
            await asyncio.sleep(0)
        if task.done():
            break  # the command was over before this many turns
        task.cancel()
        try:
            await task
            outcomes.append("went on")
        except asyncio.CancelledError:
            outcomes.append("stopped")
    assert outcomes and set(outcomes) == {"stopped"}, outcomes
    assert await client.ping()  # and the client is usable afterwards
