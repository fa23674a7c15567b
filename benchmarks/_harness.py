"""What the benchmarks share: a throwaway gateway (temporary SQLite database, migrated,
seeded, one API key) served by daphne on a free loopback port, a second daphne for a
baseline app, the CPU time of those processes, a lean HTTP/1.1 keep-alive client on raw
asyncio streams, percentiles and tables.

The client is deliberately small (no pool, no header objects, one connection per worker,
no garbage collection during a phase) so that on a 2-core machine it takes as little CPU
as possible away from the server it measures, and it never caps concurrency itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The environment the gateway runs with: the embedded default (SQLite, local-memory cache,
# no broker), whatever the calling shell has set.
DROPPED_ENV = (
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "REDIS_URL",
    "REDIS_URL_FILE",
    "CELERY_BROKER_URL",
    "CELERY_BROKER_URL_FILE",
    "CELERY_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND_FILE",
    "DJANGO_SETTINGS_MODULE",
)

SETUP_SCRIPT = """
import io, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
import django
django.setup()
from django.core.management import call_command
quiet = io.StringIO()
call_command("migrate", verbosity=0, stdout=quiet)
call_command("seed_catalog", stdout=quiet)
out = io.StringIO()
call_command("create_api_key", sys.argv[1], stdout=out, stderr=quiet)
print(out.getvalue().strip().splitlines()[-1])
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Lift this process's soft open-file limit towards `wanted` (daphne children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


def gateway_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{workdir / 'gateway.sqlite3'}",
            "DEBUG": "false",
            # A throwaway gateway on one machine: the development SECRET_KEY, asked for by name.
            "LLMOPS_ALLOW_INSECURE_SECRET_KEY": "true",
            "LOG_LEVEL": "WARNING",
            "ACCESS_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


DJANGO_SETUP = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
import django
django.setup()
"""


def gateway_script(env: dict[str, str], script: str, *args: str, timeout: float = 120) -> str:
    """Run `script` in a fresh Python with Django set up on the gateway's environment (e.g. to
    add catalog rows before the gateway starts); returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_SETUP + script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"A set-up script on the gateway's database failed:\n{done.stderr[-4000:]}")
    return done.stdout


def prepare_gateway(env: dict[str, str]) -> str:
    """Migrate and seed the temporary database and create an API key; returns the key."""
    done = subprocess.run(
        [sys.executable, "-c", SETUP_SCRIPT, "benchmark"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"Setting up the gateway database failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


class Daphne:
    """One daphne process serving `app` on a free loopback port."""

    def __init__(self, app: str, env: dict[str, str], workdir: Path, name: str, backlog: int | None = None):
        self.app, self.env, self.name = app, env, name
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.backlog = backlog
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        daphne = Path(sys.executable).parent / "daphne"
        if self.backlog:
            # `-b/-p` listen with Twisted's default backlog of 50; an endpoint string can say more.
            listen = ["-e", f"tcp:port={self.port}:interface={HOST}:backlog={self.backlog}"]
        else:
            listen = ["-b", HOST, "-p", str(self.port)]
        command = [str(daphne), *listen, self.app]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, path: str = "/healthz", timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} daphne exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, body = http_get(self.port, path, timeout=2.0)
                if status == 200:
                    return json.loads(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} daphne did not answer {path} within {timeout:.0f} s:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class CeleryWorker:
    """One `celery -A llmops worker` in a process group of its own, so that `kill()` (SIGKILL
    to the group) takes its pool's children with it, as a machine that dies would."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, concurrency: int = 1) -> None:
        self.env, self.name, self.concurrency = env, name, concurrency
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        celery = Path(sys.executable).parent / "celery"
        command = [str(celery), "-A", "llmops", "worker", "--concurrency", str(self.concurrency)]
        command += ["--loglevel", "INFO", "--hostname", f"{self.name}@%h"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker logs that it is ready (connected to the broker, consuming)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"celery worker {self.name} exited with {code}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"celery worker {self.name} was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Whether the worker logged that it is ready (connected to the broker, consuming)."""
        return " ready." in self.log_tail(1_000_000)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)  # a warm shutdown: running tasks give their items back
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# The production profile's services, where the test suite finds them (tests/run_profiles.py).
SERVICES_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
SERVICES_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def services_unreachable(database_url: str = SERVICES_DATABASE_URL, redis_url: str = SERVICES_REDIS_URL) -> str | None:
    """Why the production profile cannot run here (PostgreSQL or Redis unreachable), or None."""
    problems = []
    try:
        psycopg.connect(database_url, connect_timeout=3).close()
    except Exception as exc:
        problems.append(f"PostgreSQL unreachable at {database_url} ({type(exc).__name__}: {str(exc).strip()[:200]})")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis unreachable at {redis_url} ({type(exc).__name__}: {str(exc).strip()[:200]})")
    return "; ".join(problems) or None


@contextlib.contextmanager
def services_profile(
    database_url: str = SERVICES_DATABASE_URL, redis_url: str = SERVICES_REDIS_URL
) -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL database (created on `database_url`'s server, dropped afterwards)
    and an empty Redis database on `redis_url`'s server (emptied afterwards): the environment
    a gateway and its Celery workers share on the production profile. Stop every process
    using them before the block ends."""
    name = f"llmops_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = redis.Redis.from_url(redis_url)
    host, port = base.connection_pool.connection_kwargs["host"], base.connection_pool.connection_kwargs["port"]
    claimed = None
    # An empty database of this server, not the test suite's (15): marked as taken at once.
    for number in range(14, 0, -1):
        candidate = redis.Redis(host=host, port=port, db=number)
        if candidate.dbsize() == 0 and candidate.set("llmops-bench:claimed", os.getpid(), nx=True):
            claimed = candidate
            break
    try:
        if claimed is None:
            raise RuntimeError(f"Redis at {host}:{port} has no empty database (1-14) for the benchmark")
        number = claimed.connection_pool.connection_kwargs["db"]
        url = urlsplit(database_url)
        yield {
            "DATABASE_URL": urlunsplit(url._replace(path=f"/{name}")),
            "REDIS_URL": f"redis://{host}:{port}/{number}",
            "CELERY_BROKER_URL": f"redis://{host}:{port}/{number}",
        }
    finally:
        if claimed is not None:
            claimed.flushdb()
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking one-shot GET (health checks, outside any measured phase)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        parts, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(parts)
    return int(head[9:12]), body


def post_request(port: int, path: str, key: str | None, body: bytes) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HttpConnection:
    """One persistent HTTP/1.1 connection; requests on it go one after another.

    A bare asyncio protocol parses each response from what arrives and wakes the caller once,
    when it is whole: the load generator shares the cores with the servers it measures, and
    on asyncio's streams (a wake-up per readuntil, readline and readexactly) it took twice
    the CPU per request."""

    __slots__ = ("_protocol", "head", "port")

    def __init__(self, port: int) -> None:
        self.port = port
        self._protocol: _Response | None = None
        self.head = b""  # the status line and headers of the last response

    async def connect(self) -> None:
        _, self._protocol = await asyncio.get_running_loop().create_connection(_Response, HOST, self.port)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
        self._protocol = None

    async def request(self, data: bytes) -> tuple[int, float, bytes]:
        """Send one request; returns (status, time of the first body bytes, body)."""
        if self._protocol is None or self._protocol.lost:
            await self.connect()
        protocol = self._protocol
        assert protocol is not None
        try:
            status, self.head, first, body, close = await protocol.send(data)
        except BaseException:
            # Given up on (cancelled) or failed: a response still on its way would be taken
            # for the next request's, so this connection is done.
            self.close()
            raise
        if close:
            self.close()
        return status, first, body


class _Response(asyncio.Protocol):
    """The client side of one keep-alive connection: a response parsed as its bytes arrive
    (Content-Length, chunked, or until the server closes)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.head: bytes | None = None
        self.length = -1  # Content-Length; -1 unknown
        self.chunked = self.close_after = False
        self.at = 0  # chunked: where the next chunk's size line starts
        self.parts: list[bytes] = []
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            done = self._parse()
        except ValueError as exc:
            self.waiter.set_exception(exc)
            self.close()
            return
        if done is not None:
            self.waiter.set_result(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        done = None
        try:
            if self.head is not None and self.length < 0 and not self.chunked:  # the body ends with the connection
                done = self._done(bytes(self.buffer), True)
            elif self.chunked and self.buffer[self.at : self.at + 3] == b"0\r\n":
                self.buffer += b"\r\n"  # the last chunk without its final CRLF, then the close
                done = self._chunks()
        except ValueError as error:
            waiter.set_exception(error)
            return
        if done is not None:
            waiter.set_result(done)
        else:
            waiter.set_exception(exc or asyncio.IncompleteReadError(bytes(self.buffer), None))

    def _done(self, body: bytes, close: bool) -> tuple[int, bytes, float, bytes, bool]:
        head = self.head or b""
        result = (int(head[9:12]), head, self.first or time.perf_counter(), body, close or self.close_after)
        self._reset()
        return result

    def _parse(self) -> tuple[int, bytes, float, bytes, bool] | None:
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.head = bytes(buffer[: end + 4])
            del buffer[: end + 4]
            for line in self.head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = b"close" in value.lower()
        if self.chunked:
            return self._chunks()
        if self.length >= 0 and len(buffer) >= self.length:
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            return self._done(body, False)
        return None

    def _chunks(self) -> tuple[int, bytes, float, bytes, bool] | None:
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n", self.at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[self.at : line_end]).split(b";")[0].strip(), 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)  # no trailers: the last chunk's CRLF
                if trailer_end < 0:
                    return None
                del buffer[: trailer_end + 4]
                return self._done(b"".join(self.parts), False)
            if len(buffer) < line_end + 2 + size + 2:
                return None
            if not self.first:
                self.first = time.perf_counter()
            self.parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
            self.at = line_end + 2 + size + 2
            if self.at > 65536:  # keep the buffer short on long streams
                del buffer[: self.at]
                self.at = 0


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""
    wall_s: float = 0.0
    connect_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s * 1000 / self.requests


async def run_load(
    port: int,
    build: Callable[[int], bytes],
    check: Callable[..., str | None],
    *,
    requests: int,
    concurrency: int,
    cold: bool = False,
    with_head: bool = False,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`requests` requests from `concurrency` workers, each on its own keep-alive connection.

    Connections are opened before the clock starts (a warm pool), unless `cold`: then each
    worker connects inside the measured burst. `check(status, body)` returns an error text
    or None; with `with_head`, `check(status, body, head)` also gets the response's status
    line and headers (bytes). Garbage collection is off in this process while the clock runs.
    With `stop`, the load ends early once it is set (each worker finishes its request in
    hand): pass a large `requests` to run until told; `requests` then counts those sent."""
    result = LoadResult(requests=requests, concurrency=concurrency)
    concurrency = max(1, min(concurrency, requests))
    indices = iter(range(requests))
    go = asyncio.Event()
    latencies, first_bytes = result.latencies_ms, result.first_byte_ms
    connections = [HttpConnection(port) for _ in range(concurrency)]

    async def worker(conn: HttpConnection) -> None:
        await go.wait()
        for index in indices:
            if stop is not None and stop.is_set():
                break
            data = build(index)
            started = time.perf_counter()
            try:
                status, first, body = await conn.request(data)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                result.errors += 1
                result.error_sample = result.error_sample or f"{type(exc).__name__}: {exc}"
                continue
            finished = time.perf_counter()
            problem = check(status, body, conn.head) if with_head else check(status, body)
            if problem:
                result.errors += 1
                result.error_sample = result.error_sample or problem
                continue
            latencies.append((finished - started) * 1000)
            first_bytes.append((first - started) * 1000)

    gc.collect()
    if not cold:
        # Not timed as part of the load. Daphne's `-b/-p` listens with Twisted's backlog of 50:
        # when its accept queue is full the kernel drops a SYN and the client retries a
        # second later, so opening many connections can take seconds (pacing does not help).
        connect_started = time.perf_counter()
        await asyncio.gather(*(conn.connect() for conn in connections))
        result.connect_s = time.perf_counter() - connect_started
    tasks = [asyncio.create_task(worker(conn)) for conn in connections]
    await asyncio.sleep(0)
    gc.disable()
    try:
        cpu_started = time.process_time()
        started = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - started
        result.client_cpu_s = time.process_time() - cpu_started
        if stop is not None:
            result.requests = result.ok + result.errors
    finally:
        gc.enable()
        for conn in connections:
            conn.close()
    return result


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


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
