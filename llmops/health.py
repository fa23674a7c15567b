"""GET /healthz: the state of the database, cache and broker. 503 when the database is down."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

from caching.store import HotLayerHealth
from llmops import catalog
from llmops.breakers import SharedStateHealth, breaker_states, known_breakers
from llmops.gcstats import gc_snapshot
from llmops.limits import limits_health
from llmops.providers import local as local_provider
from llmops.upstream import InFlight
from monitoring.recorder import METRICS, RollupHealth

CHECK_TIMEOUT_S = 3.0


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "engine": connection.vendor}
    except Exception as exc:
        return {"ok": False, "engine": connection.vendor, "error": type(exc).__name__}
    finally:
        connection.close()  # runs on a pool thread: hand the connection back


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


async def _catalog_models() -> list[str]:
    try:
        return [e.name for e in await asyncio.wait_for(catalog.endpoint_list_enabled(), CHECK_TIMEOUT_S)]
    except Exception:
        return known_breakers()  # the database is down: the breakers this process has met


async def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        # Not on the request's thread-sensitive worker: a hung database must not hold up
        # the other checks.
        "database": asyncio.ensure_future(sync_to_async(_database, thread_sensitive=False)()),
        "cache": asyncio.ensure_future(_cache()),
        "broker": asyncio.ensure_future(sync_to_async(_broker, thread_sensitive=False)()),
    }
    # A check still running at the deadline is reported as failed; its thread is left to
    # finish on its own rather than waited for (a blocked thread cannot be cancelled).
    await asyncio.wait(checks.values(), timeout=CHECK_TIMEOUT_S)
    results = {
        name: task.result() if task.done() else {"ok": False, "error": f"{name} check timed out"}
        for name, task in checks.items()
    }
    database, cache_state, broker = results["database"], results["cache"], results["broker"]
    healthy = database["ok"]
    degraded = not (cache_state["ok"] and broker["ok"])
    body = {
        "status": "down" if not healthy else ("degraded" if degraded else "ok"),
        "database": database,
        "cache": cache_state,
        "broker": broker,
        "answer_cache": {"errors": HotLayerHealth.errors, "bypassed": HotLayerHealth.bypassed},
        "limits": limits_health(),
        "breakers": breaker_states(await _catalog_models()),
        "breaker_redis_errors": SharedStateHealth.errors,
        # The in-process model's runtime (llama-cpp-python, built on install): optional, so
        # its absence does not make the gateway degraded.
        "local_model": _local_model(),
        "metrics": {"pending": METRICS.pending(), "dropped": METRICS.dropped, "rollups_missed": RollupHealth.missed},
        # Which server process answered (manage.py serve starts several on one port).
        "process": {
            "index": int(os.environ.get("LLMOPS_PROCESS_INDEX", "0")),
            "count": int(os.environ.get("LLMOPS_SERVER_PROCESSES", "1")),
            "pid": os.getpid(),
            "event_loop": _loop_name(),
        },
        "upstream_in_flight": InFlight.current,
        "upstream_in_flight_peak": InFlight.peak,
    }
    # Only with LLMOPS_GC_STATS=1; ?gc_since=<unix time> adds the longest pause since then.
    gc_state = gc_snapshot(_gc_since(request))
    if gc_state is not None:
        body["gc"] = gc_state
    return JsonResponse(body, status=200 if healthy else 503)


def _local_model() -> dict[str, Any]:
    reason = local_provider.unavailable()
    return {"available": True} if reason is None else {"available": False, "reason": reason}


def _loop_name() -> str:
    """ "uvloop" or "asyncio": the event loop this process serves on."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def _gc_since(request: HttpRequest) -> float | None:
    try:
        return float(request.GET["gc_since"])
    except (KeyError, ValueError):
        return None
