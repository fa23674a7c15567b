"""The proxy benchmark counts the CPU of the processes a gateway shares its cores with
(PostgreSQL, Redis) by their names on /proc: a busy process of that name is counted, all
of it, and a process of another name is not."""

from __future__ import annotations

import subprocess
import sys

from benchmarks._harness import named_processes_cpu_s

# Names itself (PR_SET_NAME), spins until its process CPU reaches 0.3 s, says so and waits.
SPIN = """\
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode())
while time.process_time() < 0.3:
    pass
print("spun", flush=True)
sys.stdin.read()
"""


def test_the_cpu_of_processes_of_a_name_is_counted_and_no_other():
    name = "llmops-cpu-test"
    before = named_processes_cpu_s((name,))
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "spun\n"
        spent = named_processes_cpu_s((name,)) - before
        assert 0.25 <= spent < 2.0  # /proc counts in clock ticks (0.01 s)
        assert named_processes_cpu_s(("llmops-cpu-test-other",)) == 0.0
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    # Gone with its CPU: a process that exits between two readings is no longer counted.
    assert named_processes_cpu_s((name,)) == before
