"""What the benchmarks measure outside the load itself and how they print it: the CPU time
and resident memory of processes (from /proc), the kernel's TCP counters, the collector's
pauses a gateway reports on /healthz (LLMOPS_GC_STATS=1), percentiles, ratios and tables."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, list[bytes]]:
    """A process's name and the fields of /proc's stat after it (state first)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace"), data[
        data.rindex(b")") + 2 :
    ].split()


def _cpu_s(fields: list[bytes]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included, from /proc."""
    return _cpu_s(_stat(pid)[1])


def named_processes_cpu_s(names: tuple[str, ...]) -> dict[tuple[int, int], float]:
    """User + system CPU seconds of every process on the machine whose name (/proc's comm)
    starts with one of `names`, such as the PostgreSQL and Redis servers a gateway shares its
    cores with, by (pid, start time): `cpu_spent` of two readings."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError):
                name, fields = _stat(int(entry))
                if name.startswith(names):
                    found[(int(entry), int(fields[19]))] = _cpu_s(fields)
    return found


def cpu_spent(before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]) -> float:
    """The CPU seconds spent between two readings of named_processes_cpu_s by the processes
    alive at the second (one started meanwhile counts from 0; one that ended meanwhile is
    left out, its last moments with it, rather than taken away)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


def process_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def process_memory_kb(pid: int) -> tuple[int, int]:
    """(resident now, resident at its peak) of a process in KiB: VmRSS and VmHWM from /proc."""
    found = {"VmRSS:": 0, "VmHWM:": 0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            name = line.split(":", 1)[0] + ":"
            if name in found:
                found[name] = int(line.split()[1])
    return found["VmRSS:"], found["VmHWM:"]


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants, from /proc's children lists."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
    return found


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (one that ends meanwhile is skipped)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += process_cpu_s(member)
    return total


class PeakRss:
    """The most resident memory a process tree held at once, sampled on a thread every
    `every` seconds while the block runs (a process's own VmHWM cannot be summed over a tree
    whose members peak at different times)."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def now_kb(self) -> int:
        return sum(process_memory_kb(pid)[0] for pid in process_tree(self.pid))

    def _sample(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, self.now_kb())
            self.samples += 1
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tcp_counters(*names: str) -> dict[str, int]:
    """System-wide TCP counters from /proc/net/netstat (e.g. ListenOverflows)."""
    try:
        with open("/proc/net/netstat") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for keys, values in zip(lines[::2], lines[1::2], strict=False):
        if keys.startswith("TcpExt:"):
            table = dict(zip(keys.split()[1:], values.split()[1:], strict=False))
            found = {name: int(table[name]) for name in names if name in table}
    return found


@dataclass
class GcFigures:
    """A gateway's collections since a moment, over its processes (llmops/gcstats.py): the
    longest pause (wall time), the longest CPU time of one, the longest pause of one that the
    kernel did not preempt, and how many it did."""

    wall_ms: float
    cpu_ms: float
    unpreempted_ms: float
    preempted: int

    @classmethod
    def of(cls, states: list[dict]) -> GcFigures:
        """From the /healthz "gc" of each process asked with ?gc_since=."""
        return cls(
            max(s["longest_pause_ms_since"] for s in states),
            max(s["longest_collection_cpu_ms_since"] for s in states),
            max(s["longest_unpreempted_pause_ms_since"] for s in states),
            sum(s["preempted_collections_since"] for s in states),
        )


def machine(name: str, set_up_s: float | None = None) -> str:
    """The line a benchmark opens with: the machine, its load and Python (and the set-up time)."""
    line = (
        f"{name}: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"Python {platform.python_version()}"
    )
    return line if set_up_s is None else f"{line}, set-up {set_up_s:.1f} s"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or value != value or base != base:
        return "n/a"
    return f"{value / base:.2f}x"


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def compared(metric: str, value: float | None, base: float | None, digits: int = 2, *, difference: bool = True):
    """A row comparing a figure with its baseline: the metric, both, their difference
    (unless not `difference`) and their ratio."""
    delta = fmt(value - base, digits) if difference and value is not None and base is not None else ""
    return [metric, fmt(value, digits), fmt(base, digits), delta, ratio(value, base)]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
