"""Benchmarks of the gateway, each runnable as `python -m benchmarks.<name>`.

Every benchmark starts its own gateway (temporary SQLite database, daphne on a free
loopback port), measures a baseline in the same run, and prints each figure with its
ratio to that baseline."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def loop_run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on uvloop's event loop where it is installed (not on Windows), as the
    gateway's server processes do, else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
