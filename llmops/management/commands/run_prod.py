"""`manage.py run_prod` (`make run-prod`): the whole production profile on one machine, to try it.

It checks that the profile's services are configured (a PostgreSQL DATABASE_URL, REDIS_URL,
CELERY_BROKER_URL), naming each one missing; migrates and seeds the catalog; then starts and
watches the three kinds of process a deployment runs:

- the server: `manage.py serve`, one daphne per core on one port;
- a Celery worker, which runs the batches;
- Celery beat, alone: the schedule (resuming batches whose worker died, the regression
  checks, the metrics prune) comes from one process for the whole deployment.

    manage.py run_prod [--processes N] [--host 127.0.0.1] [--port 8000] [--beat-schedule FILE]

SIGINT or SIGTERM stops them all: the server finishes the requests in hand, the worker the
batch slice it runs (LLMOPS_BATCH_TASK_SLICE_S); a second signal, a second or more later,
stops the worker at once (the next worker to start resumes its batch). When one of them exits
of its own accord, the others are stopped and so is this command, with status 1: on one
machine a gateway whose worker died would take batches that never run. In production each
is a service of its own that its service manager restarts (docs/operations.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from llmops.management.commands.serve import die_with_parent

# Signals closer together than this are one request to stop (a Ctrl-C reaches make and this
# command at once, and make passes a SIGTERM on to this command).
SAME_STOP_S = 1.0
# After a second signal, what still runs this long later is killed.
KILL_AFTER_S = 10.0
SETUP = (
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmops REDIS_URL=redis://127.0.0.1:6379/0 "
    "CELERY_BROKER_URL=redis://127.0.0.1:6379/1 make run-prod"
)


def services_missing(*, database_engine: str, redis_url: str, broker_url: str) -> list[str]:
    """The production profile's settings that are not set."""
    missing = []
    if database_engine != "django.db.backends.postgresql":
        missing.append("DATABASE_URL (a PostgreSQL database, not SQLite)")
    if not redis_url:
        missing.append("REDIS_URL")
    if not broker_url:
        missing.append("CELERY_BROKER_URL")
    return missing


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    # What stops it at once when asked twice: celery's cold shutdown, or a kill.
    hard_stop: signal.Signals = signal.SIGKILL

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def kill_group(self) -> None:
        # Its process group: the server's daphnes or the worker's pool processes, should one
        # have outlived its parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Command(BaseCommand):
    help = "Run the production profile on this machine: the server on every core, a Celery worker and Celery beat."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--processes", type=int, default=None, help="server processes (LLMOPS_SERVER_PROCESSES)")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--beat-schedule", default="celerybeat-schedule", help="beat's schedule file")

    def handle(
        self, *args: Any, processes: int | None, host: str, port: int, beat_schedule: str, **options: Any
    ) -> None:
        if settings.DEBUG:
            raise CommandError("DEBUG is on: the production profile runs with it off (unset DEBUG).")
        missing = services_missing(
            database_engine=settings.DATABASES["default"]["ENGINE"],
            redis_url=settings.REDIS_URL,
            broker_url=settings.CELERY_BROKER_URL,
        )
        if missing:
            raise CommandError(
                f"The production profile needs PostgreSQL and Redis: set {', '.join(missing)}. "
                f"On this machine, for instance: {SETUP}"
            )
        if settings.LLMOPS_BATCH_EXECUTOR != "celery":
            raise CommandError(
                f"LLMOPS_BATCH_EXECUTOR={settings.LLMOPS_BATCH_EXECUTOR}: the production profile runs batches on "
                "its Celery worker (leave LLMOPS_BATCH_EXECUTOR unset)."
            )
        call_command("migrate", interactive=False, verbosity=options["verbosity"])
        call_command("seed_catalog")
        for connection in connections.all():
            connection.close()
            if hasattr(connection, "close_pool"):
                connection.close_pool()  # the pool's connections too: no child inherits them

        serve = [sys.executable, str(settings.BASE_DIR / "manage.py"), "serve", "--host", host, "--port", str(port)]
        if processes is not None:
            serve += ["--processes", str(processes)]
        celery = [sys.executable, "-m", "celery", "-A", "llmops"]
        plan = [
            ("server", serve, signal.SIGKILL),
            ("worker", [*celery, "worker", "--loglevel=INFO", "--hostname=run-prod@%h"], signal.SIGQUIT),
            ("beat", [*celery, "beat", "--loglevel=INFO", f"--schedule={beat_schedule}"], signal.SIGKILL),
        ]
        requests: list[float] = []

        def stop_requested(signum: int, _frame: Any) -> None:
            requests.append(time.monotonic())

        signal.signal(signal.SIGTERM, stop_requested)
        signal.signal(signal.SIGINT, stop_requested)
        # Each child in a process group of its own: a Ctrl-C at the terminal reaches this
        # command alone, which passes each child one SIGTERM (two would be celery's cold shutdown).
        children = [
            Child(name, subprocess.Popen(command, cwd=settings.BASE_DIR, process_group=0, preexec_fn=die_with_parent),
                  hard_stop)
            for name, command, hard_stop in plan
        ]  # fmt: skip
        self.stdout.write("run-prod: " + ", ".join(f"{c.name} (pid {c.process.pid})" for c in children))
        self.stdout.flush()
        failed: Child | None = None
        try:
            while not requests and failed is None:
                failed = next((child for child in children if not child.running()), None)
                time.sleep(0.2)
        finally:
            if failed is not None:
                self.stderr.write(f"run-prod: the {failed.name} exited with {failed.process.returncode}: stopping")
            for child in children:
                child.signal(signal.SIGTERM)
            if any(child.running() for child in children):
                self.stdout.write("run-prod: stopping (a running batch slice ends first; a second Ctrl-C stops it now)")
                self.stdout.flush()
            self._wait(children, requests)
        if failed is not None:
            sys.exit(1)

    def _wait(self, children: list[Child], requests: list[float]) -> None:
        first = requests[0] if requests else time.monotonic()
        killed_at: float | None = None
        while any(child.running() for child in children):
            if killed_at is None and any(when - first >= SAME_STOP_S for when in requests):
                killed_at = time.monotonic()
                for child in children:
                    child.signal(child.hard_stop)
            if killed_at is not None and time.monotonic() - killed_at > KILL_AFTER_S:
                for child in children:
                    child.signal(signal.SIGKILL)
            time.sleep(0.1)
        for child in children:
            child.kill_group()
        self.stdout.write("run-prod: stopped (" + ", ".join(f"{c.name} {c.process.returncode}" for c in children) + ")")
        self.stdout.flush()
