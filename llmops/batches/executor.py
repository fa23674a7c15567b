"""Where batches run on the embedded default (no broker): a thread of the server process
with an event loop of its own, not Celery's eager mode (which would run a whole batch
inside the request that created it). It starts with the server and resumes every batch left
unfinished (a restart), and is woken when a batch is created or cancelled. Several
processes may each run one: a batch whose runner shows signs of life elsewhere (its
heartbeat) is left to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from llmops.batches.models import Batch, BatchStatus
from llmops.batches.runner import batch_run
from llmops.batches.store import BatchStore

logger = logging.getLogger(__name__)

RUNNABLE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING)


def batches_unattended(
    running: frozenset[str] = frozenset(), *, stale_only: bool = True, dispatched: bool = False
) -> list[str]:
    """Batches not ended that need a runner: every one, or (stale_only) those that no runner
    has touched for a lease's time: their runner died, or they are new. With `dispatched`
    (each batch was sent to a runner as it was created: the Celery sweep), a new one counts
    only once it has waited a lease's time for that runner (its task lost, say): a second
    runner sent while the first is on its way would validate the batch beside it."""
    found = Batch.objects.filter(status__in=RUNNABLE).exclude(id__in=running)
    if stale_only:
        horizon = timezone.now() - timedelta(seconds=settings.LLMOPS_BATCH_LEASE_S)
        new = found.filter(heartbeat_at__isnull=True)
        if dispatched:
            new = new.filter(created_at__lt=horizon)
        found = new | found.filter(heartbeat_at__lt=horizon)
    return list(found.order_by("created_at").values_list("id", flat=True))


class EmbeddedExecutor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._ready = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._stopping = False
            self._ready.clear()
            self._thread = threading.Thread(target=self._main, name="llmops-batches", daemon=True)
            self._thread.start()
        self._ready.wait(10)

    def wake(self) -> None:
        """A batch was created or cancelled: look now (starting the executor if need be)."""
        self.start()
        self._signal()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the runners (their items go back to the queue) and the thread."""
        with self._lock:
            thread = self._thread
            self._stopping = True
        if thread is None:
            return
        self._signal()
        thread.join(timeout)
        with self._lock:
            self._thread = None

    def _signal(self) -> None:
        """Wake the executor's loop to look at the batches (or at `_stopping`) now."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        # A loop closing meanwhile refuses the call: it is stopping, and looks no more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            logger.exception("The embedded batch executor stopped")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = self._wake = None

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._ready.set()
        store = BatchStore("llmops-batches-store")
        runners: dict[str, asyncio.Task[str]] = {}
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    found = await store.call(batches_unattended, frozenset(runners))
                except Exception:
                    logger.warning("The embedded batch executor could not read the batches", exc_info=True)
                    found = []
                for batch_id in found:
                    # Each runner with a store (a thread and connection) of its own: one batch's big
                    # write (its validation, its output files) holds back no other's claims and leases.
                    runners[batch_id] = asyncio.ensure_future(batch_run(batch_id))
                for batch_id, task in list(runners.items()):
                    if task.done():
                        del runners[batch_id]
                        if not task.cancelled() and task.exception() is not None:
                            logger.error("Batch %s: its runner failed", batch_id, exc_info=task.exception())
                # Until woken (a batch created or cancelled), or the next look at the batches.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(settings.LLMOPS_BATCH_POLL_S, 0.05) * 2)
        finally:
            for task in runners.values():
                task.cancel()
            if runners:
                await asyncio.wait(runners.values())
            await asyncio.to_thread(store.close)


EXECUTOR = EmbeddedExecutor()
