"""`manage.py serve`: several daphne processes on one port, on uvloop, each saying on /healthz
which one it is; one that dies is started again; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness.client import http_get

ROOT = Path(__file__).resolve().parents[2]


def _get(port: int, path: str) -> dict:
    status, body = http_get(port, path)
    assert status == 200, body
    return json.loads(body)


def _processes_seen(port: int, wanted: int, timeout: float = 60) -> dict[int, int]:
    """index -> pid of the processes /healthz answered from, until `wanted` were seen."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < wanted and time.monotonic() < deadline:
        try:
            process = _get(port, "/healthz")["process"]
        except OSError:
            time.sleep(0.1)
            continue
        assert process["count"] == wanted
        assert process["event_loop"] == ("uvloop" if sys.platform != "win32" else "asyncio")  # llmops/server.py
        seen[process["index"]] = process["pid"]
    return seen


@contextlib.contextmanager
def serving(tmp_path: Path, processes: int, **extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DATABASE_URL", "REDIS_URL"))}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "LLMOPS_ALLOW_INSECURE_SECRET_KEY": "true"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("ACCESS_LOG_LEVEL", None)
    env |= {"PYTHONUNBUFFERED": "1", **extra}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    command = [*manage, "serve", "--processes", str(processes), "--port", "0"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert f"with {processes} daphne process(es)" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        yield server, port
    finally:
        if server.poll() is None:
            server.kill()  # its server processes die with it (PR_SET_PDEATHSIG)
            server.wait()


@pytest.fixture
def served(tmp_path):
    with serving(tmp_path, 2) as both:
        yield both


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_two_processes_share_one_port_and_say_which_answered(served):
    server, port = served
    seen = _processes_seen(port, 2)
    assert set(seen) == {0, 1} and len(set(seen.values())) == 2

    # One dies: it is started again on its socket, the other goes on answering meanwhile.
    os.kill(seen[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    restarted = seen
    while restarted.get(0) == seen[0] and time.monotonic() < deadline:
        restarted = _processes_seen(port, 2)
    assert restarted[0] != seen[0] and restarted[1] == seen[1]

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert not any(_alive(pid) for pid in restarted.values())
    with pytest.raises(OSError):
        _get(port, "/healthz")


def test_server_processes_do_not_outlive_a_killed_serve(served):
    server, port = served
    pids = _processes_seen(port, 2)
    server.kill()
    server.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids.values())


def test_llmops_uvloop_false_keeps_asyncios_own_loop(monkeypatch):
    from llmops.server import loop_policy_install

    monkeypatch.setenv("LLMOPS_UVLOOP", "false")
    before = asyncio.get_event_loop_policy()
    assert loop_policy_install() == "asyncio" and asyncio.get_event_loop_policy() is before


@pytest.mark.parametrize("level", ["INFO", None])
def test_the_access_log_is_written_when_access_log_level_asks_for_it(tmp_path, level):
    """daphne's line per request on stdout with ACCESS_LOG_LEVEL=INFO (or DEBUG); none by
    default (WARNING), as with runserver."""
    with serving(tmp_path, 1, **({"ACCESS_LOG_LEVEL": level} if level else {})) as (server, port):
        lines: list[str] = []

        def read() -> None:
            for line in server.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _processes_seen(port, 1)
        assert http_get(port, "/v1/models?access-log-probe")[0] == 401
        deadline = time.monotonic() + 10
        while level and not any("access-log-probe" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        reader.join(timeout=10)
    probes = [line for line in lines if "access-log-probe" in line]
    if level:
        assert len(probes) == 1 and '"GET /v1/models?access-log-probe" 401' in probes[0], lines
    else:
        assert probes == [], probes


def test_twisted_writes_no_request_log_of_its_own(monkeypatch):
    from daphne.http_protocol import HTTPFactory

    from llmops.server import twisted_request_log_off

    monkeypatch.setattr(HTTPFactory, "log", HTTPFactory.log)  # put back afterwards

    written: list[str] = []
    factory = HTTPFactory.__new__(HTTPFactory)
    factory._logFile = type("LogFile", (), {"write": lambda self, line: written.append(line)})()
    factory._logDateTime, factory._logFormatter = "now", lambda when, request: f"{when} {request}"
    twisted_request_log_off()
    factory.log("GET /")
    assert written == []
