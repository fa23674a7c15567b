"""A throwaway gateway and the processes around it: the environment it runs with (a
temporary SQLite database, migrated, seeded, API keys; or, for the production profile, a
throwaway PostgreSQL database and an empty Redis database), the set-up scripts run on it, and
the processes a benchmark starts and stops (daphne for the gateway or a baseline app,
`manage.py serve`, a Celery worker, any server of its own) with their logs in a workspace."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from benchmarks.harness.client import HOST, http_get
from benchmarks.harness.figures import process_cpu_s, process_memory_kb, process_tree, tree_cpu_s

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_APP = "llmops.asgi:application"

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

DJANGO_SETUP = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
import django
django.setup()
"""
KEYS_SCRIPT = """
import io, sys
from django.core.management import call_command
for name in sys.argv[1:]:
    out = io.StringIO()
    call_command("create_api_key", name, stdout=out, stderr=io.StringIO())
    print(out.getvalue().strip().splitlines()[-1])
"""
SETUP_SCRIPT = (
    """
import io
from django.core.management import call_command
quiet = io.StringIO()
call_command("migrate", verbosity=0, stdout=quiet)
call_command("seed_catalog", stdout=quiet)
"""
    + KEYS_SCRIPT
)


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
    return gateway_script(env, SETUP_SCRIPT, "benchmark", timeout=300).strip().splitlines()[-1]


def create_keys(env: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """An API key for each name, on a database already set up: name -> raw key."""
    raw = gateway_script(env, KEYS_SCRIPT, *names).strip().splitlines()[-len(names) :]
    return dict(zip(names, raw, strict=True))


def django_configure(db_path: Path) -> str:
    """The gateway in this process, for benchmarks with no server: Django set up on a fresh
    SQLite file, migrated and seeded; returns a raw API key."""
    for name in DROPPED_ENV:
        os.environ.pop(name, None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "llmops.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    os.environ["LLMOPS_METRICS_FLUSH_INTERVAL_S"] = "0.5"
    os.environ["DEBUG"] = "false"  # DEBUG would log every query
    os.environ.setdefault("LLMOPS_ALLOW_INSECURE_SECRET_KEY", "true")  # and then the development key must be asked for
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django

    django.setup()

    from django.core.management import call_command

    from llmops.auth import api_key_create
    from llmops.seed import catalog_seed

    call_command("migrate", verbosity=0)
    catalog_seed()
    _, raw_key = api_key_create(name="bench")
    return raw_key


@contextlib.contextmanager
def in_process(prefix: str) -> Iterator[str]:
    """`django_configure` on a database in a temporary folder (removed afterwards); yields the key."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        yield django_configure(Path(workdir) / "bench.sqlite3")


class Served:
    """A process the benchmark starts (`command`, its output in `<name>.log` of the workdir),
    answering HTTP on `port` when it has one. With `own_group` it runs in a process group of
    its own, so that `kill()` takes its children with it, as a machine that dies would;
    `stop_group` sends the stop signal to that whole group too."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], workdir: Path, port: int = 0, *,
        own_group: bool = False, stop_group: bool = False, stop_s: float = 15.0, poll_s: float = 0.1,
    ) -> None:  # fmt: skip
        self.name, self.command, self.env, self.port = name, command, env, port
        self.log_path = workdir / f"{name}.log"
        self.own_group, self.stop_group, self.stop_s, self.poll_s = own_group, stop_group, stop_s, poll_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=self.own_group)  # fmt: skip

    def answer(self, path: str) -> dict | None:
        """What the process answers on `path` when it is ready (its JSON, {} when not JSON), else None."""
        try:
            status, body = http_get(self.port, path, timeout=2.0)
        except OSError:
            return None
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return {}

    def wait_ready(self, path: str = "/healthz", timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            state = self.answer(path)
            if state is not None:
                return state
            time.sleep(self.poll_s)
        raise RuntimeError(f"{self.name} was not ready on {path} within {timeout:.0f} s:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        """CPU seconds of the process and its children."""
        return tree_cpu_s(self.pid)

    def rss_mb(self) -> float:
        """Resident memory of the process and its children, MB."""
        return sum(process_memory_kb(pid)[0] for pid in process_tree(self.pid)) / 1024

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def _signal(self, number: int, group: bool) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, number)
            else:
                os.kill(self.pid, number)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL, self.own_group)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM, self.stop_group)
        try:
            self.process.wait(timeout=self.stop_s)
        except subprocess.TimeoutExpired:
            self.kill()


class Daphne(Served):
    """One daphne process serving the ASGI `app` on a free loopback port; with `backlog`, it
    listens with that backlog (`-b/-p` listen with Twisted's default of 50)."""

    def __init__(self, app: str, env: dict[str, str], workdir: Path, name: str, backlog: int | None = None):
        port = free_port()
        if backlog:
            listen = ["-e", f"tcp:port={port}:interface={HOST}:backlog={backlog}"]
        else:
            listen = ["-b", HOST, "-p", str(port)]
        super().__init__(name, [str(Path(sys.executable).parent / "daphne"), *listen, app], env, workdir, port)
        self.app = app

    def cpu_s(self) -> float:
        """CPU seconds of the daphne process, all its threads."""
        return process_cpu_s(self.pid)


class CeleryWorker(Served):
    """One `celery -A llmops worker` in a process group of its own: `kill()` (SIGKILL to the
    group) takes its pool's children with it; `stop()` is a warm shutdown, in which running
    tasks give their items back."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, concurrency: int = 1) -> None:
        command = [str(Path(sys.executable).parent / "celery"), "-A", "llmops", "worker", "--concurrency",
                   str(concurrency), "--loglevel", "INFO", "--hostname", f"{name}@%h"]  # fmt: skip
        super().__init__(name, command, env, workdir, own_group=True, stop_group=True, stop_s=30.0, poll_s=0.05)

    def answer(self, path: str) -> dict | None:
        return {} if self.ready() else None

    def ready(self) -> bool:
        """Whether the worker logged that it is ready (connected to the broker, consuming)."""
        return " ready." in self.log_tail(1_000_000)


@contextlib.contextmanager
def serving(*servers: Served) -> Iterator[list[Served]]:
    """Start the servers, wait until each is ready, and stop them all when the block ends
    (with any added to the list it yields); if it fails, print each one's log tail first."""
    running = list(servers)
    try:
        for server in running:
            server.start()
        for server in running:
            server.wait_ready()
        yield running
    except Exception:
        for server in running:
            print(f"--- {server.name} log ---\n{server.log_tail()}")
        raise
    finally:
        for server in running:
            server.stop()


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


@dataclass
class Throwaway:
    """A throwaway gateway's set-up: its folder (the SQLite database of the embedded default,
    the processes' logs) and the environment its processes run with."""

    workdir: Path
    env: dict[str, str]
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def database(self) -> str:
        return str(self.workdir / "gateway.sqlite3")

    def prepare(self) -> str:
        """Migrate and seed the database and create an API key; returns the key."""
        return prepare_gateway(self.env)

    def script(self, script: str, *args: str) -> str:
        return gateway_script(self.env, script, *args)

    def keys(self, names: tuple[str, ...]) -> dict[str, str]:
        return create_keys(self.env, names)

    def daphne(
        self, name: str = "gateway", app: str = GATEWAY_APP, *, env: dict[str, str] | None = None,
        backlog: int | None = None,
    ) -> Daphne:  # fmt: skip
        return Daphne(app, self.env if env is None else env, self.workdir, name, backlog)


@contextlib.contextmanager
def throwaway(extra: dict[str, str] | None = None, *, open_files: int = 0) -> Iterator[Throwaway]:
    """A workspace and the gateway's environment in it (`extra` on top); with `open_files`,
    this process's open-file limit lifted towards that many first."""
    if open_files:
        raise_open_files(open_files)
    with workspace() as workdir:
        yield Throwaway(workdir, gateway_env(workdir, extra))
