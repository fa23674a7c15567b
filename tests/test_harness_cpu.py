"""The proxy benchmark counts the CPU of the processes a gateway shares its cores with
(PostgreSQL, Redis) by their names on /proc: a busy process of that name is counted, all
of it, a process of another name is not, and one that ended between two readings is left
out rather than taken away."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.harness.figures import cpu_spent, named_processes_cpu_s

# Names itself (PR_SET_NAME), spins until its process CPU reaches 0.3 s, says so and waits.
SPIN = """\
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode())
while time.process_time() < 0.3:
    pass
print("spun", flush=True)
sys.stdin.read()
"""


def spinner(name: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "spun\n"
    return child


def stop(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=10)


def test_the_cpu_of_processes_of_a_name_is_counted_and_no_other():
    name = "llmops-cpu-test"
    before = named_processes_cpu_s((name,))
    child = spinner(name)
    try:
        after = named_processes_cpu_s((name,))
        assert [pid for pid, _ in after] == [child.pid]
        assert 0.25 <= cpu_spent(before, after) < 2.0  # /proc counts in clock ticks (0.01 s)
        assert named_processes_cpu_s(("llmops-cpu-test-other",)) == {}
    finally:
        stop(child)


def test_a_process_that_ended_between_two_readings_takes_nothing_away():
    first = spinner("llmops-cpu-gone")
    before = named_processes_cpu_s(("llmops-cpu-",))
    stop(first)
    second = spinner("llmops-cpu-new")
    try:
        spent = cpu_spent(before, named_processes_cpu_s(("llmops-cpu-",)))
        assert 0.25 <= spent < 2.0  # the new one's, from 0; not less for the one gone
    finally:
        stop(second)
