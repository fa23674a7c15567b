"""`manage.py serve`: the gateway on every core, several daphne processes on one port.

One gateway process runs one event loop, so it uses one core. This command opens one
listening socket per process on the same address with SO_REUSEPORT (the kernel spreads new
connections across them), and starts one daphne per socket (`-e fd:fileno=N`). A process
that exits is started again on its socket after a pause; SIGINT or SIGTERM stops them all
(each finishes the requests in hand, as a lone daphne does).

    manage.py serve [--processes N] [--host 127.0.0.1] [--port 8000] [--backlog 1024]

--processes defaults to LLMOPS_SERVER_PROCESSES, whose default is the machine's cores.
Each process's /healthz says which one answered ("process": index, count and pid).

What lives in one process and is not shared between them is in the README (Running it on
every core): on the embedded default, the answer cache (local memory), key limits and
breakers; everywhere, each model's concurrency slots and the in-flight count."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

RESTART_PAUSE_S = 1.0
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 15.0


def die_with_parent() -> None:
    """In a server process, before daphne starts: SIGTERM when this command dies, even by
    SIGKILL, so that no server process outlives it (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` sockets listening on one address, SO_REUSEPORT on each (the first binds the
    port when it is 0; the rest take the same one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def access_log_wanted() -> bool:
    return logging.getLogger("django.channels.server").getEffectiveLevel() <= logging.INFO


class Command(BaseCommand):
    help = "Serve the gateway with several daphne processes on one port (default: one per core)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--processes", type=int, default=None, help="server processes (LLMOPS_SERVER_PROCESSES)")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--backlog", type=int, default=1024, help="each socket's listen backlog (1024)")
        parser.add_argument("--app", default="llmops.asgi:application", help=f"the ASGI application ({'%(default)s'})")

    def handle(self, *args: Any, processes: int | None, host: str, port: int, backlog: int, app: str, **_: Any) -> None:
        count = processes if processes is not None else settings.LLMOPS_SERVER_PROCESSES
        if count < 1:
            raise CommandError("--processes must be at least 1.")
        if not hasattr(socket, "SO_REUSEPORT"):
            raise CommandError("This system has no SO_REUSEPORT: run daphne itself, one process.")
        try:
            sockets = listening_sockets(host, port, count, backlog)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        port = sockets[0].getsockname()[1]
        stopping = False
        # daphne writes a line per request to stdout at its verbosity 1; ACCESS_LOG_LEVEL (the
        # same setting as runserver's access log) asks for it with INFO or DEBUG.
        access_log = [] if access_log_wanted() else ["-v", "0"]

        def start(index: int) -> subprocess.Popen[bytes]:
            env = {**os.environ, "LLMOPS_PROCESS_INDEX": str(index), "LLMOPS_SERVER_PROCESSES": str(count)}
            fileno = sockets[index].fileno()
            # daphne's fd endpoint (twisted/plugins/fd_endpoint.py) takes the address family's number.
            endpoint = f"fd:fileno={fileno}" + (f":domain={int(socket.AF_INET6)}" if ":" in host else "")
            # daphne's command line, on uvloop unless LLMOPS_UVLOOP is off (llmops/server.py).
            command = [sys.executable, "-m", "llmops.server", "-e", endpoint, *access_log, app]
            return subprocess.Popen(command, env=env, pass_fds=[fileno], preexec_fn=die_with_parent)

        def stop(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        children = [start(index) for index in range(count)]
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Serving on http://{host}:{port} with {count} daphne process(es): " + ", ".join(
            str(child.pid) for child in children
        ))  # fmt: skip
        self.stdout.flush()
        try:
            while not stopping:
                for index, child in enumerate(children):
                    code = child.poll()
                    if code is not None and not stopping:
                        self.stderr.write(f"Server process {index} (pid {child.pid}) exited with {code}: restarting it")
                        time.sleep(RESTART_PAUSE_S)
                        if not stopping:
                            children[index] = start(index)
                time.sleep(0.2)
        finally:
            deadline = time.monotonic() + STOP_GRACE_S
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            for sock in sockets:
                sock.close()
