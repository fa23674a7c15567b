"""Configuration snapshots for the hot path, one per app that owns configuration (the
catalog in `llmops.catalog`, cache policies in `caching.policies`, routes later), each
loading only its own models.

Every committed change to configuration bumps one version number in the database
(ConfigVersion). The process that made it drops its snapshots at once; every other process
(other daphne workers, a running server when `manage.py create_api_key` ran beside it)
reads the version at most once every LLMOPS_CONFIG_TTL_S seconds per snapshot and reloads
when it moved. So a request costs no database query unless its process's check is due.

This module imports nothing of the other apps: they import it."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save

from llmops.models import ConfigVersion, config_version_bump

T = TypeVar("T")

_all: weakref.WeakSet[ConfigSnapshot[Any]] = weakref.WeakSet()


class ConfigSnapshot(Generic[T]):
    """`await snapshot.get()`: what `load()` built from the committed rows, at most
    LLMOPS_CONFIG_TTL_S old once another process changed them."""

    def __init__(self, load: Callable[[], T]) -> None:
        self._load = load
        self._value: T | None = None
        self._version: int | None = None
        self._checked_at = 0.0
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        _all.add(self)

    async def get(self) -> T:
        value = self._value
        if value is not None and time.monotonic() - self._checked_at < settings.LLMOPS_CONFIG_TTL_S:
            return value
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        # One check at a time: the requests that arrive meanwhile wait for its result rather
        # than each taking a database connection to load the same rows.
        async with lock:
            value = self._value
            if value is not None and time.monotonic() - self._checked_at < settings.LLMOPS_CONFIG_TTL_S:
                return value
            version, fresh = await sync_to_async(self._refresh)(self._version if value is not None else None)
            if fresh is not None:
                self._value, self._version = fresh, version
            self._checked_at = time.monotonic()
            assert self._value is not None
            return self._value

    def _refresh(self, known: int | None) -> tuple[int, T | None]:
        try:
            # The version is read first: a change committed meanwhile is then loaded under
            # the older number, and the next check loads it again, never the other way round.
            version = ConfigVersion.objects.filter(pk=ConfigVersion.SINGLETON).values_list("version", flat=True).first()
            version = version or 0
            if known is not None and version == known:
                return version, None
            return version, self._load()
        finally:
            # API requests run without Django's request signals, so nothing else would hand
            # this connection back (to the pool, on PostgreSQL) once the request's thread ends.
            if not connection.in_atomic_block:
                connection.close()

    def reset(self) -> None:
        self._value = None
        self._version = None


def config_reset() -> None:
    """Drop this process's snapshots: the next read loads the configuration afresh."""
    for snapshot in list(_all):
        snapshot.reset()


def config_changed() -> None:
    """Drop this process's snapshots and move the shared version, so every process reloads."""
    config_reset()
    config_version_bump()


def _on_change(**_: Any) -> None:
    # After the commit: bumping the version inside the admin's transaction would let a
    # request reload the old rows under the new number, and keep them.
    transaction.on_commit(config_changed)


def config_watch(*models: type) -> None:
    """Reload the snapshots whenever a row of these models is saved or deleted."""
    for model in models:
        post_save.connect(_on_change, sender=model, dispatch_uid=f"config-save-{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
