"""Writes kept off the request path: the hot path appends an item to memory and returns;
a background thread hands the buffer to `write_batch` every LLMOPS_METRICS_FLUSH_INTERVAL_S
seconds, or as soon as LLMOPS_METRICS_BATCH_SIZE items wait, on its own database connection.
Metrics and cache records each have one."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

logger = logging.getLogger(__name__)


class BufferedWriter:
    def __init__(self, name: str, write_batch: Callable[[list[Any]], int]) -> None:
        """`write_batch` writes what it can and returns how many; it raises OperationalError
        or InterfaceError when the database is unreachable, and the batch is kept."""
        self.name = name
        self.write_batch = write_batch
        self.buffer: deque[Any] = deque()
        self.dropped = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        atexit.register(self._at_exit)

    def add(self, item: Any) -> None:
        """Queue one item. Never blocks and never touches the database."""
        if len(self.buffer) >= settings.LLMOPS_METRICS_MAX_BUFFER:
            # The database is down or far behind: shed rows rather than memory.
            self.dropped += 1
            return
        self.buffer.append(item)
        if len(self.buffer) >= settings.LLMOPS_METRICS_BATCH_SIZE:
            self._wake.set()
        if self._thread is None:
            self._start()

    def flush(self) -> int:
        """Write what is buffered when it is called, in the calling thread. Returns how many
        were written. Items added meanwhile wait for the next flush (at once if a full batch
        of them waits): chased one by one as they arrived, they were written a batch of one
        or two at a time, each with its transaction and statements, and a writer behind for
        a moment never caught up (on PostgreSQL at about 220 requests/s, 441 batches and up
        to 3 s of CPU in one flush)."""
        written = 0
        with self._flush_lock:
            left = len(self.buffer)
            while left > 0 and self.buffer:
                batch: list[Any] = []
                while self.buffer and len(batch) < min(left, settings.LLMOPS_METRICS_BATCH_SIZE):
                    batch.append(self.buffer.popleft())
                left -= len(batch)
                try:
                    written += self.write_batch(batch)
                except (OperationalError, InterfaceError):
                    # The database is unreachable or restarting: keep the rows for the next try.
                    self.buffer.extendleft(reversed(batch))
                    raise
        return written

    def pending(self) -> int:
        return len(self.buffer)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread after it wrote what is buffered (process exit, tests)."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(timeout)
        self._stopping.clear()

    def _start(self) -> None:
        if settings.LLMOPS_METRICS_FLUSH_INTERVAL_S <= 0:
            return  # interval 0: no background thread, items wait for flush()
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.name}-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Interval 0 (tests): sleep until a full batch wakes the thread, never spin.
            self._wake.wait(settings.LLMOPS_METRICS_FLUSH_INTERVAL_S or None)
            self._wake.clear()
            if not self.buffer:
                continue
            try:
                close_old_connections()
                self.flush()
            except Exception:
                logger.exception("Writing %d buffered %s rows failed; retrying shortly", len(self.buffer), self.name)
                connection.close()
                time.sleep(1.0)
        connection.close()

    def _at_exit(self) -> None:
        self.stop()
        if not self.buffer:
            return
        try:
            self.flush()
        except Exception:
            logger.exception("Could not write %d buffered %s rows at exit", len(self.buffer), self.name)
