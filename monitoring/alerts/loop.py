"""Where the regression checks and the metrics prune run on the embedded default (no broker,
so no Celery beat): a daemon thread of the server process (llmops/asgi.py starts it),
checking every LLMOPS_ALERTS_CHECK_INTERVAL_S and pruning every
LLMOPS_METRICS_PRUNE_INTERVAL_S. A pass that fails is logged and the next runs on time; each
pass closes its database connection (the thread is long-lived, a connection may not be).
Several server processes may each run one: an alert is opened and resolved once whatever
the number of checkers (monitoring.alerts.checks)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections

from monitoring.alerts.checks import regressions_check
from monitoring.services import metrics_prune

logger = logging.getLogger(__name__)


class MonitoringLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.passes = 0  # checks and prunes run, failed ones included

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._main, name="llmops-monitoring", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            thread = self._thread
            self._stopping.set()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = None

    def _main(self) -> None:
        # The first of each one interval after start: a server starting does its own work first.
        next_check = next_prune = time.monotonic() + settings.LLMOPS_ALERTS_CHECK_INTERVAL_S
        while not self._stopping.wait(max(0.0, min(next_check, next_prune) - time.monotonic())):
            if time.monotonic() >= next_check:
                self._pass("regression check", regressions_check)
                next_check = time.monotonic() + settings.LLMOPS_ALERTS_CHECK_INTERVAL_S
            if time.monotonic() >= next_prune and not self._stopping.is_set():
                self._pass("metrics prune", metrics_prune)
                next_prune = time.monotonic() + settings.LLMOPS_METRICS_PRUNE_INTERVAL_S

    def _pass(self, name: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:
            logger.exception("The %s failed; the next runs on schedule", name)
        finally:
            self.passes += 1
            connections.close_all()


MONITORING = MonitoringLoop()
