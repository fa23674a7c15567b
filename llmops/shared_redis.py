"""The gateway's own asyncio Redis connection (one pool per event loop and URL), for the
state that must be shared by every process on the hot path: circuit breakers and key
limits. Short timeouts: a Redis that is down must cost a request milliseconds, not
seconds, and every caller fails open when it is."""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis

SOCKET_TIMEOUT_S = 0.25

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = weakref.WeakKeyDictionary()


def redis_for(url: str) -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry_on_timeout=False,
            health_check_interval=0,
        )
    return client
