"""How long the garbage collector stops this process: opt-in (LLMOPS_GC_STATS=1), for
benchmarks and diagnosis, shown on /healthz under "gc" only when on.

One `gc.callbacks` hook, two perf_counter, a time, two thread_time and two getrusage calls
per collection (its pause, its CPU time, and whether the kernel preempted the thread meanwhile).
It counts collections per generation and keeps their total and longest pause (per
generation); the last RECENT collections one by one (when, generation, pause, CPU time,
preempted), and the longest pause of each wall-clock second of the last hour. A
benchmark asks for the longest pause since a moment of its own (`/healthz?gc_since=<unix
time>`) without resetting anything: answered from the collections one by one while they
reach back that far, so that a collection a moment before (an idle full collection just
before a load starts, in the same second) is not counted in the load; from the seconds
beyond that. Pauses are wall-clock time: on a busy machine they include time the process
spent descheduled in the middle of a collection; a collection's CPU time does not
(longest_collection_cpu_ms), nor does the longest pause of the collections that ran without
an involuntary context switch (longest_unpreempted_pause_ms_since, beside the count of the
preempted ones): what is the collector's and what is the machine's. A collection not
preempted can still wait: for the GIL, when a finalizer it runs lets another thread take
it (a voluntary switch), or for a hypervisor that ran another guest on the CPU (steal time,
which no counter of the thread sees)."""

from __future__ import annotations

import gc
import os
import resource
import time
from array import array
from typing import Any

ENV = "LLMOPS_GC_STATS"
KEEP_SECONDS = 3600
RECENT = 8192  # collections kept one by one: at 100 a second under load, over a minute

_installed = False
_started = 0.0
_started_cpu = 0.0
_collections = [0, 0, 0]
_pause_total_s = 0.0
_started_switches = 0
_longest_s = [0.0, 0.0, 0.0, 0.0]  # per generation, then the longest CPU time of any collection
# unix second -> its longest pause per generation, longest CPU time, longest pause of a
# collection not preempted (s), and the count of preempted ones; oldest first
_by_second: dict[int, list[float]] = {}
# The last RECENT collections, FIELDS doubles each (unix time of the end, generation, pause,
# CPU, 1.0 if preempted), as a ring: an array is no object the collector tracks, and copying
# it is one step.
FIELDS = 5
_recent = array("d", bytes(8 * FIELDS * RECENT))
_recorded = 0  # collections recorded in all; the next one goes to slot _recorded % RECENT
_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _switches() -> int:
    return resource.getrusage(_THREAD).ru_nivcsw


def _hook(phase: str, info: dict[str, Any]) -> None:
    global _started, _started_cpu, _started_switches, _pause_total_s, _recorded
    now = time.perf_counter()
    generation = info.get("generation", 2)
    if phase == "start":
        _started_switches = _switches()
        _started_cpu = time.thread_time()
        _started = time.perf_counter()
        return
    pause = now - _started
    cpu = time.thread_time() - _started_cpu
    preempted = _switches() != _started_switches
    _collections[generation] += 1
    _pause_total_s += pause
    if pause > _longest_s[generation]:
        _longest_s[generation] = pause
    if cpu > _longest_s[3]:
        _longest_s[3] = cpu
    # The clock a caller's `since` comes from: perf_counter plus an offset taken at install
    # drifts from it when the wall clock is slewed or stepped.
    when = time.time()
    slot = FIELDS * (_recorded % RECENT)
    _recent[slot] = when
    _recent[slot + 1] = generation
    _recent[slot + 2] = pause
    _recent[slot + 3] = cpu
    _recent[slot + 4] = 1.0 if preempted else 0.0
    _recorded += 1
    second = int(when)
    bucket = _by_second.get(second)
    if bucket is None:
        bucket = _by_second[second] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        if len(_by_second) > KEEP_SECONDS:
            del _by_second[next(iter(_by_second))]
    if pause > bucket[generation]:
        bucket[generation] = pause
    if cpu > bucket[3]:
        bucket[3] = cpu
    if preempted:
        bucket[5] += 1
    elif pause > bucket[4]:
        bucket[4] = pause


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install() -> None:
    """Start recording (once per process)."""
    global _installed
    if _installed:
        return
    gc.callbacks.append(_hook)
    _installed = True


def install_from_env() -> bool:
    if enabled_by_env():
        install()
    return _installed


def _copy(value: Any) -> Any:
    """A copy of a record that a collection may change meanwhile (in any thread): copied
    again until no collection came between."""
    for _ in range(10):
        recorded = _recorded
        try:
            copied = value.copy() if isinstance(value, dict) else value[:]
        except RuntimeError:  # the dict of seconds changed size during the copy
            continue
        if recorded == _recorded:
            return recorded, copied
    return _recorded, {} if isinstance(value, dict) else value[:0]


def longest_since(since: float) -> list[float]:
    """From the unix time `since` on: the longest pause per generation, the longest CPU time
    of a collection, the longest pause of a collection not preempted (s), and the count of
    preempted collections."""
    recorded, ring = _copy(_recent)
    longest = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # Not the slot the next collection writes: a collection in another thread may be writing
    # it (the hook is Python code) before _recorded moves on.
    kept = min(recorded, RECENT - 1)
    oldest = since
    preempted_in_oldest_second = 0
    for index in range(recorded - kept, recorded):
        slot = FIELDS * (index % RECENT)
        when, generation, pause, cpu, preempted = ring[slot : slot + FIELDS]
        if index == recorded - kept:
            oldest = when
        if when >= since:
            longest[int(generation)] = max(longest[int(generation)], pause)
            longest[3] = max(longest[3], cpu)
            if preempted:
                longest[5] += 1
                if int(when) == int(oldest):
                    preempted_in_oldest_second += 1
            else:
                longest[4] = max(longest[4], pause)
    if recorded > kept and oldest > since:
        # The ring no longer reaches back to `since`: the seconds before its oldest entry
        # (of the oldest entry's own second, what the ring does not hold).
        _, seconds = _copy(_by_second)
        for second, bucket in seconds.items():
            if int(since) <= second <= int(oldest):
                longest[:5] = [max(a, b) for a, b in zip(longest[:5], bucket[:5], strict=True)]
                longest[5] += bucket[5] - (preempted_in_oldest_second if second == int(oldest) else 0)
    return longest


def gc_snapshot(since: float | None = None) -> dict[str, Any] | None:
    """The figures so far, or None when not recording. With `since` (unix time), also the
    longest pause from then on."""
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
        longest = longest_since(since)
        state["since"] = since
        state["longest_pause_ms_since"] = round(max(longest[:3]) * 1000, 3)
        state["longest_pause_ms_since_by_generation"] = [round(pause * 1000, 3) for pause in longest[:3]]
        state["longest_collection_cpu_ms_since"] = round(longest[3] * 1000, 3)
        state["longest_unpreempted_pause_ms_since"] = round(longest[4] * 1000, 3)
        state["preempted_collections_since"] = int(longest[5])
    return state
