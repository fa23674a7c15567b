"""GET /healthz: the state of the database, cache and broker. 503 when the database is down."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

from llmops.pipeline import InFlight

CHECK_TIMEOUT_S = 3.0


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "engine": connection.vendor}
    except Exception as exc:
        connection.close()
        return {"ok": False, "engine": connection.vendor, "error": type(exc).__name__}


async def _cache() -> dict[str, Any]:
    backend = "redis" if settings.REDIS_URL else "locmem"
    probe = secrets.token_hex(4)
    try:
        await cache.aset("llmops:healthz", probe, timeout=10)
        # django-redis ignores Redis errors (fail open), so a lost write is how an outage shows.
        ok = await cache.aget("llmops:healthz") == probe
    except Exception:
        ok = False
    return {"ok": ok, "backend": backend}


def _broker() -> dict[str, Any]:
    url = settings.CELERY_BROKER_URL
    if not url:
        return {"ok": True, "configured": False, "mode": "in-process"}
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "configured": True}
    except Exception as exc:
        return {"ok": False, "configured": True, "error": type(exc).__name__}


async def _bounded(coro: Any, name: str) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(coro, CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"{name} check timed out"}


async def healthz(request: HttpRequest) -> JsonResponse:
    database, cache_state, broker = await asyncio.gather(
        _bounded(sync_to_async(_database)(), "database"),
        _bounded(_cache(), "cache"),
        _bounded(sync_to_async(_broker, thread_sensitive=False)(), "broker"),
    )
    healthy = database["ok"]
    degraded = not (cache_state["ok"] and broker["ok"])
    body = {
        "status": "down" if not healthy else ("degraded" if degraded else "ok"),
        "database": database,
        "cache": cache_state,
        "broker": broker,
        "upstream_in_flight": InFlight.current,
        "upstream_in_flight_peak": InFlight.peak,
    }
    return JsonResponse(body, status=200 if healthy else 503)
