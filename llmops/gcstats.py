"""How long the garbage collector stops this process: opt-in (LLMOPS_GC_STATS=1), for
benchmarks and diagnosis, shown on /healthz under "gc" only when on.

One `gc.callbacks` hook, two perf_counter and two thread_time calls per collection (its
pause and its CPU time). It counts collections per
generation and keeps their total and longest pause (per generation), and the longest pause
of each wall-clock second of the last hour, so that a benchmark can ask for the longest
pause since a moment of its own (`/healthz?gc_since=<unix time>`) without resetting
anything. Pauses are wall-clock time: on a busy machine they include time the process
spent descheduled in the middle of a collection; a collection's CPU time does not (longest_collection_cpu_ms)."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

ENV = "LLMOPS_GC_STATS"
KEEP_SECONDS = 3600

_installed = False
_started = 0.0
_started_cpu = 0.0
_collections = [0, 0, 0]
_pause_total_s = 0.0
_longest_s = [0.0, 0.0, 0.0, 0.0]  # per generation, then the longest CPU time of any collection
# unix second -> the same four figures (s) for that second, oldest first
_by_second: dict[int, list[float]] = {}
_wall_offset = 0.0  # time.time() - time.perf_counter(), taken once at install


def _hook(phase: str, info: dict[str, Any]) -> None:
    global _started, _started_cpu, _pause_total_s
    now = time.perf_counter()
    generation = info.get("generation", 2)
    if phase == "start":
        _started = now
        _started_cpu = time.thread_time()
        return
    pause = now - _started
    cpu = time.thread_time() - _started_cpu
    _collections[generation] += 1
    _pause_total_s += pause
    if pause > _longest_s[generation]:
        _longest_s[generation] = pause
    if cpu > _longest_s[3]:
        _longest_s[3] = cpu
    second = int(now + _wall_offset)
    bucket = _by_second.get(second)
    if bucket is None:
        bucket = _by_second[second] = [0.0, 0.0, 0.0, 0.0]
        if len(_by_second) > KEEP_SECONDS:
            del _by_second[next(iter(_by_second))]
    if pause > bucket[generation]:
        bucket[generation] = pause
    if cpu > bucket[3]:
        bucket[3] = cpu


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install() -> None:
    """Start recording (once per process)."""
    global _installed, _wall_offset
    if _installed:
        return
    _wall_offset = time.time() - time.perf_counter()
    gc.callbacks.append(_hook)
    _installed = True


def install_from_env() -> bool:
    if enabled_by_env():
        install()
    return _installed


def gc_snapshot(since: float | None = None) -> dict[str, Any] | None:
    """The figures so far, or None when not recording. With `since` (unix time), also the
    longest pause from that second on."""
    if not _installed:
        return None
    state: dict[str, Any] = {
        "collections": list(_collections),
        "pause_total_ms": round(_pause_total_s * 1000, 3),
        "longest_pause_ms": round(max(_longest_s[:3]) * 1000, 3),
        "longest_pause_ms_by_generation": [round(pause * 1000, 3) for pause in _longest_s[:3]],
        "longest_collection_cpu_ms": round(_longest_s[3] * 1000, 3),
        "frozen_objects": gc.get_freeze_count(),
    }
    if since is not None:
        first = int(since)
        for _ in range(3):
            try:
                # A collection during the copy may add a second: copy again.
                seconds = _by_second.copy()
                break
            except RuntimeError:
                continue
        else:
            seconds = {}
        longest = [0.0, 0.0, 0.0, 0.0]
        for second, bucket in seconds.items():
            if second >= first:
                longest = [max(a, b) for a, b in zip(longest, bucket, strict=True)]
        state["since"] = since
        state["longest_pause_ms_since"] = round(max(longest[:3]) * 1000, 3)
        state["longest_pause_ms_since_by_generation"] = [round(pause * 1000, 3) for pause in longest[:3]]
        state["longest_collection_cpu_ms_since"] = round(longest[3] * 1000, 3)
    return state
