"""The gateway's own asyncio Redis clients, one per event loop and URL, for the state that
must be shared by every process on the hot path: redis-py's (`redis_for`) for circuit
breakers and key and model limits, and a lean one (`lean_redis_for`, below) for the answer
cache's hot layer, called on every request. Short timeouts: a Redis that is down must cost a request milliseconds, not
seconds, and every caller fails open when it is."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmops.per_loop import PerLoop

SOCKET_TIMEOUT_S = 0.25

_CLIENTS: PerLoop[aioredis.Redis] = PerLoop()


def _redis_py(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry_on_timeout=False,
        health_check_interval=0,
    )


def redis_for(url: str) -> aioredis.Redis:
    return _CLIENTS.get(url, _redis_py, url)


# -- The lean client: the answer cache's hot layer, on every request ---------------------
#
# In redis-py's asyncio client (its connection pool, retry wrapper, stream reader and
# response callbacks) the GET and SET of every cache miss were 17% of the gateway's
# main-thread samples per proxied request on the production profile (py-spy during
# `python -m benchmarks.proxy --profile prod`). This one writes each command to one
# connection per event loop (at once when no reply is pending, else with the other commands
# sent in the same turn of the loop) and matches the replies in order (Redis answers in the order
# it was asked), so any number of requests in flight share the connection without a pool, a
# lock or a task. Its errors are redis-py's own classes.


class _Incomplete(Exception):
    pass


def _reply(buffer: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from `pos`: (the value, the position after it), or _Incomplete."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buffer[pos], bytes(buffer[pos + 1 : end]), end + 2
    if kind == 36:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        return bytes(buffer[pos : pos + size]), pos + size + 2
    if kind == 43:  # + simple string
        return line, pos
    if kind == 58:  # : integer
        return int(line), pos
    if kind == 45:  # - error
        message = line.decode("utf-8", "replace")
        return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message), pos
    if kind == 42:  # * array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _reply(buffer, pos)
            items.append(item)
        return items, pos
    raise RedisConnectionError(f"Redis sent a reply this client cannot read ({chr(kind)!r})")


def _command(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise DataError(f"Invalid input of type {type(arg).__name__} for a Redis command")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.closed = False
        # Commands sent while replies are pending, written together on the event loop's next
        # iteration (one write for Redis to read, one for it to answer): under load the
        # requests in flight share the round trips; an idle connection writes at once.
        self.corked: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiting:
                reply, pos = _reply(self.buffer, pos)
                answer = self.waiting.popleft()
                if answer.done():
                    continue  # its caller left (or timed out): the reply is dropped, the order kept
                if isinstance(reply, ResponseError):
                    answer.set_exception(reply)
                else:
                    answer.set_result(reply)
        except _Incomplete:
            pass
        except Exception as exc:  # a reply we cannot read: nothing after it can be trusted
            self.fail(exc)
            return
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        waiting, self.waiting = self.waiting, deque()
        for answer in waiting:
            if not answer.done():
                answer.set_exception(exc)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        answer = self.loop.create_future()
        if self.corked is not None:
            self.corked.append(payload)
        elif self.waiting:
            # Replies are pending: this turn's commands go in one write at its end.
            self.corked = [payload]
            self.loop.call_soon(self.uncork)
        else:
            self.transport.write(payload)  # type: ignore[union-attr]
        self.waiting.append(answer)
        return answer

    def uncork(self) -> None:
        corked, self.corked = self.corked, None
        if corked and not self.closed:
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))  # type: ignore[union-attr]

    def expire(self, answer: asyncio.Future[Any]) -> None:
        if not answer.done():
            # Redis is slow or gone: a later reply could not be told from this one's.
            answer.set_exception(RedisTimeoutError(f"Redis did not answer in {SOCKET_TIMEOUT_S} s"))
            self.fail(RedisTimeoutError("Redis did not answer in time"))


class LeanRedis:
    """`execute_command(*args)` on one connection per event loop (see above); it connects
    on first use and again after the connection was lost or timed out."""

    def __init__(self, options: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.options = options
        self.loop = loop
        self.connection: _Connection | None = None
        self.connecting: asyncio.Lock | None = None

    async def execute_command(self, *args: Any) -> Any:
        payload = _command(args)
        connection = self.connection
        if connection is None or connection.closed:
            connection = await self._connect()
        answer = connection.send(payload)
        timer = self.loop.call_later(SOCKET_TIMEOUT_S, connection.expire, answer)
        try:
            return await answer
        finally:
            timer.cancel()

    async def _connect(self) -> _Connection:
        if self.connecting is None:
            self.connecting = asyncio.Lock()
        async with self.connecting:
            if self.connection is not None and not self.connection.closed:
                return self.connection
            try:
                async with asyncio.timeout(SOCKET_TIMEOUT_S):
                    connection = await self._open()
            except TimeoutError as exc:
                raise RedisTimeoutError(f"Redis did not accept a connection in {SOCKET_TIMEOUT_S} s") from exc
            except OSError as exc:
                raise RedisConnectionError(f"Redis is unreachable: {exc.strerror or exc}") from exc
            self.connection = connection
            return connection

    async def _open(self) -> _Connection:
        options = self.options
        if "path" in options:
            _, connection = await self.loop.create_unix_connection(lambda: _Connection(self.loop), options["path"])
        else:
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            _, connection = await self.loop.create_connection(lambda: _Connection(self.loop), host, port)
        setup = []
        if options.get("password"):
            auth = ("AUTH", options["username"]) if options.get("username") else ("AUTH",)
            setup.append(connection.send(_command((*auth, options["password"]))))
        if options.get("db"):
            setup.append(connection.send(_command(("SELECT", options["db"]))))
        try:
            for answer in setup:
                await answer  # a refused password or database raises redis-py's ResponseError
        except BaseException:
            connection.fail(RedisConnectionError("the connection could not be set up"))
            raise
        return connection


# What the lean client reads from a URL; anything else (TLS, say) goes to redis-py.
_LEAN_OPTIONS = {"host", "port", "db", "username", "password", "path", "connection_class"}

_LEAN: PerLoop[Any] = PerLoop()


def _lean(url: str) -> Any:
    options = parse_url(url)
    kind = options.get("connection_class")
    if set(options) <= _LEAN_OPTIONS and kind in (None, aioredis.UnixDomainSocketConnection):
        return LeanRedis(options, asyncio.get_running_loop())
    return redis_for(url)


def lean_redis_for(url: str) -> Any:
    """The lean client of this event loop for `url` (redis:// or unix://), or redis-py's
    (redis_for) for a URL it does not speak. Both have `execute_command`."""
    return _LEAN.get(url, _lean, url)
