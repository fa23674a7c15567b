"""A model's concurrency in one process, shared by the server's event loop and the batch
runner's: interactive requests get freed slots before batch items, which hold at most
their share; whoever waits and leaves takes nothing with them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llmops.upstream import ModelSlots, batch_cap


async def test_a_freed_slot_goes_to_a_waiting_interactive_request_before_any_batch_item():
    slots = ModelSlots(limit=2, batch_cap=2)
    await slots.acquire(batch=True)
    await slots.acquire(batch=True)
    order: list[str] = []

    async def take(name: str, batch: bool) -> None:
        await slots.acquire(batch=batch)
        order.append(name)

    waiting_batch = asyncio.ensure_future(take("batch", True))
    await asyncio.sleep(0)
    waiting_interactive = asyncio.ensure_future(take("interactive", False))
    await asyncio.sleep(0)
    slots.release(batch=True)
    await asyncio.sleep(0.01)
    assert order == ["interactive"]
    slots.release(batch=True)
    await asyncio.wait_for(waiting_batch, 1)
    assert order == ["interactive", "batch"]
    await waiting_interactive


async def test_batch_items_hold_at_most_their_share_and_leave_the_rest_to_interactive_requests():
    slots = ModelSlots(limit=4, batch_cap=batch_cap(4))  # the default share: half
    assert slots.batch_cap == 2
    for _ in range(2):
        await slots.acquire(batch=True)
    third = asyncio.ensure_future(slots.acquire(batch=True))
    await asyncio.sleep(0.01)
    assert not third.done()  # the batch's share is held
    for _ in range(2):
        await asyncio.wait_for(slots.acquire(batch=False), 1)  # interactive ones still get in
    assert slots.used == 4
    slots.release(batch=True)
    await asyncio.wait_for(third, 1)
    assert (slots.used, slots.batch_used) == (4, 2)


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on():
    slots = ModelSlots(limit=1, batch_cap=1)
    await slots.acquire(batch=False)
    leaving = asyncio.ensure_future(slots.acquire(batch=False))
    staying = asyncio.ensure_future(slots.acquire(batch=False))
    await asyncio.sleep(0)
    slots.release(batch=False)  # handed to `leaving`, whose wake-up is still on its way
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    await asyncio.wait_for(staying, 1)
    assert slots.used == 1


async def test_a_cancelled_waiter_takes_nothing():
    slots = ModelSlots(limit=1, batch_cap=1)
    await slots.acquire(batch=False)
    waiter = asyncio.ensure_future(slots.acquire(batch=True))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    slots.release(batch=False)
    assert slots.used == 0
    await asyncio.wait_for(slots.acquire(batch=True), 1)


def test_a_slot_freed_on_one_event_loop_wakes_a_waiter_on_another():
    slots = ModelSlots(limit=1, batch_cap=1)
    held = threading.Event()
    got: list[str] = []

    async def holder() -> None:
        await slots.acquire(batch=False)
        held.set()
        await asyncio.sleep(0.1)
        slots.release(batch=False)

    async def waiter() -> None:
        held.wait(5)
        await asyncio.wait_for(slots.acquire(batch=True), 5)
        got.append("woken")
        slots.release(batch=True)

    other = threading.Thread(target=lambda: asyncio.run(waiter()))
    other.start()
    asyncio.run(holder())
    other.join(10)
    assert got == ["woken"] and slots.used == 0


@pytest.mark.parametrize(("limit", "share", "cap"), [(100, 0.5, 50), (3, 0.5, 1), (10, 0.0, 1), (10, 1.0, 10)])
def test_the_batch_share_is_a_whole_number_of_slots_never_none(settings, limit, share, cap):
    settings.LLMOPS_BATCH_CONCURRENCY_SHARE = share
    assert batch_cap(limit) == cap
