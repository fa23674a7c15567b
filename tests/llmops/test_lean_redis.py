"""The lean Redis client of the answer cache's hot layer (llmops/shared_redis.py): replies
matched to their commands in order on one connection, callers that leave, connections
lost, Redis slow or gone, passwords and databases. Against the real Redis in the services
profile; against small RESP servers on loopback for what a real Redis will not do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmops.shared_redis import SOCKET_TIMEOUT_S, LeanRedis, lean_redis_for, redis_for

services = pytest.mark.services


def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@services
async def test_it_reads_and_writes_what_redis_py_reads_and_writes():
    lean = lean_redis_for(settings.REDIS_URL)
    assert isinstance(lean, LeanRedis)
    other = sync_client()
    assert await lean.execute_command("SET", "llmops:test:lean:a", b"\x00bytes\r\n", "PX", 30_000) == b"OK"
    assert other.get("llmops:test:lean:a") == b"\x00bytes\r\n"
    other.set("llmops:test:lean:b", "é" * 5000)
    assert (await lean.execute_command("GET", "llmops:test:lean:b")).decode() == "é" * 5000
    assert await lean.execute_command("GET", "llmops:test:lean:none") is None
    assert await lean.execute_command("DEL", "llmops:test:lean:a", "llmops:test:lean:b") == 2
    assert await lean.execute_command("MGET", "llmops:test:lean:a", "llmops:test:lean:b") == [None, None]
    other.set("llmops:test:lean:word", "not a number")
    with pytest.raises(ResponseError, match="not an integer"):
        await lean.execute_command("INCR", "llmops:test:lean:word")
    # An error reply leaves the connection as it was.
    assert await lean.execute_command("INCRBY", "llmops:test:lean:count", 7) == 7
    other.delete("llmops:test:lean:word", "llmops:test:lean:count")


@services
async def test_hundreds_of_commands_in_flight_on_one_connection_each_get_their_own_reply():
    lean = lean_redis_for(settings.REDIS_URL)
    keys = [f"llmops:test:lean:many:{n}" for n in range(300)]
    await asyncio.gather(*(lean.execute_command("SET", key, f"value {n}", "PX", 30_000) for n, key in enumerate(keys)))
    replies = await asyncio.gather(*(lean.execute_command("GET", key) for key in keys))
    assert replies == [f"value {n}".encode() for n in range(300)]
    assert sync_client().delete(*keys) == 300


@services
async def test_commands_sent_while_replies_are_pending_go_to_redis_together():
    lean = lean_redis_for(settings.REDIS_URL)
    assert await lean.execute_command("PING") == b"PONG"
    connection = lean.connection
    transport = connection.transport
    writes: list[bytes] = []

    class Counted:
        def write(self, data: bytes) -> None:
            writes.append(data)
            transport.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(transport, name)

    connection.transport = Counted()
    keys = [f"llmops:test:lean:turn:{n}" for n in range(40)]
    try:
        # The first goes at once (no reply pending), the other 39 together at the end of the turn.
        sets = [lean.execute_command("SET", key, n, "PX", 30_000) for n, key in enumerate(keys)]
        assert await asyncio.gather(*sets) == [b"OK"] * 40 and len(writes) == 2
        assert writes[1].count(b"SET") == 39
        gets = [lean.execute_command("GET", key) for key in keys]
        assert await asyncio.gather(*gets) == [str(n).encode() for n in range(40)] and len(writes) == 4
        assert await lean.execute_command("GET", keys[7]) == b"7" and len(writes) == 5
    finally:
        connection.transport = transport
    sync_client().delete(*keys)


@services
async def test_callers_that_leave_do_not_shift_the_replies_of_the_others():
    lean = lean_redis_for(settings.REDIS_URL)
    keys = [f"llmops:test:lean:left:{n}" for n in range(90)]
    sync_client().mset({key: n for n, key in enumerate(keys)})
    assert await lean.execute_command("PING") == b"PONG"  # connected: each task below sends at once
    tasks = [asyncio.create_task(lean.execute_command("GET", key)) for key in keys]
    await asyncio.sleep(0)  # every command is on the wire
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for n, result in enumerate(results):
        if n % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == str(n).encode()
    # And the connection serves the next caller its own reply.
    assert await lean.execute_command("GET", keys[1]) == b"1"
    sync_client().delete(*keys)


@services
async def test_a_connection_redis_closes_fails_its_callers_and_the_next_call_reconnects():
    lean = lean_redis_for(settings.REDIS_URL)
    own_id = await lean.execute_command("CLIENT", "ID")
    waiting = asyncio.create_task(lean.execute_command("BLPOP", "llmops:test:lean:never", 0))
    await asyncio.sleep(0.05)
    assert sync_client().client_kill_filter(_id=own_id) == 1
    with pytest.raises(RedisConnectionError):
        await waiting
    assert await lean.execute_command("PING") == b"PONG"
    assert await lean.execute_command("CLIENT", "ID") != own_id


@services
async def test_the_hot_layer_writes_what_the_django_cache_api_reads():
    from django.core.cache import caches

    from caching.store import PREFIX, CachedAnswer, hot_get, hot_set
    from llmops.usage import Usage

    answer = CachedAnswer("lean-key", "an answer", "stop", Usage(3, 2), cost_usd=Decimal("0.5"))
    await hot_set(answer, 30)
    assert caches["answers"].get(PREFIX + "lean-key")["text"] == "an answer"
    caches["answers"].set(PREFIX + "lean-key-2", {**answer.dump(), "text": "from Django"}, 30)
    assert (await hot_get("lean-key-2")).text == "from Django"
    caches["answers"].delete_many([PREFIX + "lean-key", PREFIX + "lean-key-2"])
    assert await hot_get("lean-key") is None


# -- RESP servers on loopback ---------------------------------------------------------------


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    header = await reader.readline()
    if not header:
        raise EOFError
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


async def resp_server(answer: Callable[[list[bytes]], Awaitable[bytes | None]]) -> tuple[asyncio.Server, list]:
    """A server that reads RESP commands and writes what `answer` returns (None: nothing)."""
    seen: list[list[bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append([b"(connected)"])
        try:
            while True:
                command = await read_command(reader)
                seen.append(command)
                reply = await answer(command)
                if reply is not None:
                    writer.write(reply)
        except (EOFError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def url_of(server: asyncio.Server, auth: str = "", db: int = 0) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"redis://{auth}127.0.0.1:{port}/{db}"


async def test_it_authenticates_and_selects_the_database_of_its_url_before_the_first_command():
    async def answer(command: list[bytes]) -> bytes:
        return b"$5\r\nhello\r\n" if command[0] == b"GET" else b"+OK\r\n"

    server, seen = await resp_server(answer)
    async with server:
        lean = lean_redis_for(url_of(server, "someone:s3cret@", 3))
        assert await lean.execute_command("GET", "k") == b"hello"
        assert seen == [[b"(connected)"], [b"AUTH", b"someone", b"s3cret"], [b"SELECT", b"3"], [b"GET", b"k"]]


async def test_a_refused_password_is_redis_py_s_error_and_the_connection_is_dropped():
    async def answer(command: list[bytes]) -> bytes:
        return b"-WRONGPASS invalid username-password pair\r\n" if command[0] == b"AUTH" else b"+OK\r\n"

    server, seen = await resp_server(answer)
    async with server:
        lean = lean_redis_for(url_of(server, ":wrong@"))
        for _ in range(2):
            with pytest.raises(ResponseError, match="WRONGPASS"):
                await lean.execute_command("GET", "k")
        assert seen.count([b"(connected)"]) == 2  # tried again on a new connection each time
        assert [b"GET", b"k"] not in seen


async def test_a_redis_that_never_answers_times_out_and_the_next_call_reconnects():
    async def silent(command: list[bytes]) -> bytes | None:
        return None

    server, seen = await resp_server(silent)
    async with server:
        lean = lean_redis_for(url_of(server))
        started = time.monotonic()
        first = asyncio.create_task(lean.execute_command("GET", "a"))
        second = asyncio.create_task(lean.execute_command("GET", "b"))
        for task in (first, second):
            with pytest.raises(RedisTimeoutError):
                await task
        assert time.monotonic() - started < SOCKET_TIMEOUT_S + 1.0
        with pytest.raises(RedisTimeoutError):
            await lean.execute_command("GET", "c")
        assert seen.count([b"(connected)"]) == 2


async def test_an_unreachable_redis_is_a_connection_error_at_once():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    url = url_of(server)
    server.close()
    await server.wait_closed()
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match="unreachable"):
        await lean_redis_for(url).execute_command("GET", "k")
    assert time.monotonic() - started < 1.0


async def test_a_url_it_does_not_speak_goes_to_redis_py():
    assert lean_redis_for("rediss://127.0.0.1:6390/0") is redis_for("rediss://127.0.0.1:6390/0")
    assert isinstance(lean_redis_for("unix:///tmp/llmops-none.sock?db=2"), LeanRedis)
    assert isinstance(lean_redis_for("redis://127.0.0.1:6390/0?socket_keepalive=true"), type(redis_for("redis://x")))
