"""Objects bound to the event loop that made them (connection pools, asyncio locks): one
per loop and key, dropped with their loop (tests and `asyncio.run` start new loops)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class PerLoop(Generic[V]):
    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, V]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, key: Hashable, make: Callable[..., V], *args: Any) -> V:
        """This loop's object for `key`, made by `make(*args)` the first time."""
        loop = asyncio.get_running_loop()
        per_loop = self._by_loop.get(loop)
        if per_loop is None:
            per_loop = self._by_loop[loop] = {}
        value = per_loop.get(key)
        if value is None:
            value = per_loop[key] = make(*args)
        return value
