"""The collector's pauses as /healthz reports them (LLMOPS_GC_STATS=1, llmops/gcstats.py):
the longest pause since a moment counts the collections from that moment on, not the
whole second it falls in."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from array import array

import pytest

from llmops import gcstats

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def recording():
    """The hook installed for one test, then removed (the rest of the suite runs without)."""
    was_installed = gcstats._installed
    gcstats.install()
    yield
    if not was_installed:
        gc.callbacks.remove(gcstats._hook)
        gcstats._installed = False


def full_collection_then_since() -> float:
    """A moment just after a full collection, in the same wall-clock second (so that a
    per-second figure holds both)."""
    for _ in range(5):
        gc.collect()
        since = time.time()
        last = gcstats.FIELDS * ((gcstats._recorded - 1) % gcstats.RECENT)
        ended, generation = gcstats._recent[last], gcstats._recent[last + 1]
        if int(since) == int(ended) and generation == 2:
            return since
    raise AssertionError("no full collection and moment in the same second in five tries")


async def test_a_full_collection_just_before_the_moment_is_not_counted_after_it(recording, http):
    since = full_collection_then_since()
    gc.collect(0)
    response = await http.get(f"/healthz?gc_since={since:.6f}")
    state = response.json()["gc"]
    by_generation = state["longest_pause_ms_since_by_generation"]
    assert by_generation[2] == 0.0, state
    assert by_generation[0] > 0.0, state
    assert state["longest_pause_ms_by_generation"][2] > 0.0  # still in the figures since start
    assert state["collections"][2] >= 1


async def test_a_full_collection_after_the_moment_is_counted(recording, http):
    since = time.time()
    gc.collect()
    state = (await http.get(f"/healthz?gc_since={since:.6f}")).json()["gc"]
    assert state["longest_pause_ms_since_by_generation"][2] > 0.0
    assert state["longest_pause_ms_since"] == max(state["longest_pause_ms_since_by_generation"])
    assert state["longest_collection_cpu_ms_since"] > 0.0


def test_beyond_the_collections_kept_one_by_one_the_seconds_answer(recording, monkeypatch):
    monkeypatch.setattr(gcstats, "RECENT", 4)
    monkeypatch.setattr(gcstats, "_recent", array("d", bytes(8 * gcstats.FIELDS * 4)))
    monkeypatch.setattr(gcstats, "_recorded", 0)
    before = time.time() - 0.001
    gc.collect()  # soon pushed out of the ring by the young collections below
    full_pause = gcstats._recent[2]
    for _ in range(8):
        gc.collect(0)
    assert gcstats._recorded == 9
    assert all(gcstats._recent[gcstats.FIELDS * slot + 1] == 0 for slot in range(4))  # no full collection kept
    longest = gcstats.longest_since(before)
    assert longest[2] >= full_pause > 0.0
    # Only the ring reaches a moment after the full collection.
    # The oldest young collection read (the slot the next one writes is not: RECENT - 1 are).
    after = gcstats._recent[gcstats.FIELDS * ((gcstats._recorded + 1) % 4)]
    assert gcstats.longest_since(after)[2] == 0.0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_a_collection_preempted_by_another_process_is_told_apart(recording):
    """Pinned to one CPU beside a process that spins on it, a long full collection is
    preempted: it counts as preempted and its pause is not the longest unpreempted one."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    heap = [[index] for index in range(1_500_000)]  # a full collection of this takes tens of ms
    spin = f"import os; os.sched_setaffinity(0, {{{cpu}}}); print('spinning', flush=True)\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline().strip() == "spinning"
        os.sched_setaffinity(0, {cpu})
        since = time.time()
        for _ in range(3):
            gc.collect()
    finally:
        os.sched_setaffinity(0, before)
        spinner.kill()
        spinner.wait()
        del heap
    longest = gcstats.longest_since(since)
    assert longest[5] >= 1, longest
    assert longest[2] > longest[4], longest  # the longest full pause was a preempted one
    for _ in range(20):  # alone on its CPUs again: a short young collection, not preempted
        gc.collect(0)
        state = gcstats.gc_snapshot(since)
        if state["longest_unpreempted_pause_ms_since"] > 0.0:
            break
    assert state["preempted_collections_since"] >= 1
    assert 0.0 < state["longest_unpreempted_pause_ms_since"] < state["longest_pause_ms_since"]
