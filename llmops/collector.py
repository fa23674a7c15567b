"""Full garbage collections when the server is idle, not in the middle of a load.

A full (generation-2) collection scans every object that is alive and not frozen: under
load that is every request in flight, so at 64 connections one took 25 ms of CPU, a pause
of every request in the process (`python -m benchmarks.proxy`, largest GC pause). The
request path leaves no cyclic garbage behind (tests/llmops/test_collector.py), so the
full collections have next to nothing to find; generation 0 and 1 collections stay
automatic, and short: a generation-1 collection comes after LLMOPS_GC_YOUNG_COLLECTIONS
(2) generation-0 ones rather than Python's 10, so that what survives two of them (the
requests in flight) moves on to the oldest generation instead of being scanned again by
every young collection (at 64 connections the longest generation-1 collection scanned
12,600 objects in 5-9 ms of CPU with 10, 6,300 in 1.8-2.3 ms with 2). This thread runs
the full collection itself: every
LLMOPS_GC_FULL_EVERY_S seconds, at a moment when no upstream call is in flight and none
started in the last second, or regardless once LLMOPS_GC_FULL_MAX_S have passed without
such a moment (a process that is never idle still collects its cycles)."""

from __future__ import annotations

import gc
import threading
import time

from django.conf import settings

from llmops.upstream import InFlight

IDLE_CHECK_S = 1.0
# gc's third threshold counts generation-1 collections between full ones: never reached.
NEVER = 1 << 30

_thread: threading.Thread | None = None
full_collections = 0


def _idle(entered_before: int) -> bool:
    return InFlight.current == 0 and InFlight.entered == entered_before


def _run() -> None:
    global full_collections
    last = time.monotonic()
    entered = InFlight.entered
    while True:
        time.sleep(IDLE_CHECK_S)
        since = time.monotonic() - last
        if since >= settings.LLMOPS_GC_FULL_EVERY_S and (_idle(entered) or since >= settings.LLMOPS_GC_FULL_MAX_S):
            gc.collect()
            full_collections += 1
            last = time.monotonic()
        entered = InFlight.entered


def start() -> None:
    """Take the full collections off the automatic schedule and run them here (once per
    process; LLMOPS_GC_IDLE=false keeps Python's own schedule)."""
    global _thread
    if _thread is not None or not settings.LLMOPS_GC_IDLE:
        return
    first, _, _ = gc.get_threshold()
    gc.set_threshold(first, settings.LLMOPS_GC_YOUNG_COLLECTIONS, NEVER)
    _thread = threading.Thread(target=_run, name="llmops-idle-gc", daemon=True)
    _thread.start()
