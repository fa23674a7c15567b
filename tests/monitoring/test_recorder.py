from __future__ import annotations

import threading
import time

import pytest
from django.utils import timezone

from monitoring import recorder
from monitoring.models import QueryMetric

pytestmark = pytest.mark.django_db(transaction=True)


def row(n: int) -> dict:
    return {"request_id": f"req-{n}", "created_at": timezone.now(), "model": "sim-small", "status": "ok"}


def test_recording_buffers_without_writing():
    recorder.metric_record(**row(1))
    assert recorder.metrics_pending() == 1
    assert QueryMetric.objects.count() == 0
    assert recorder.metrics_flush() == 1
    assert QueryMetric.objects.get().request_id == "req-1"


def test_flush_writes_in_batches(settings):
    settings.LLMOPS_METRICS_BATCH_SIZE = 7
    for n in range(30):
        recorder.metric_record(**row(n))
    assert recorder.metrics_flush() == 30
    assert QueryMetric.objects.count() == 30


def test_a_full_buffer_sheds_metrics_instead_of_memory(settings):
    settings.LLMOPS_METRICS_MAX_BUFFER = 5
    before = recorder.METRICS.dropped
    for n in range(8):
        recorder.metric_record(**row(n))
    assert recorder.metrics_pending() == 5
    assert recorder.METRICS.dropped - before == 3


def test_the_background_writer_flushes_on_its_own(settings):
    settings.LLMOPS_METRICS_FLUSH_INTERVAL_S = 0.05
    recorder.metric_record(**row(1))
    deadline = time.monotonic() + 5
    while QueryMetric.objects.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert QueryMetric.objects.count() == 1
    assert any(t.name == "metric-writer" for t in threading.enumerate())
    recorder.METRICS.stop()
    assert not any(t.name == "metric-writer" for t in threading.enumerate())


def test_a_row_the_database_refuses_does_not_hold_back_the_others():
    from llmops.auth import api_key_create

    key, _ = api_key_create(name="short-lived")
    recorder.metric_record(**row(1))
    recorder.metric_record(**row(2), api_key_id=key.id)
    recorder.metric_record(**row(3))
    key.delete()  # its buffered metric now points at a key that is gone
    assert recorder.metrics_flush() == 3
    assert recorder.metrics_pending() == 0
    kept = {m.request_id: m.api_key_id for m in QueryMetric.objects.all()}
    assert kept == {"req-1": None, "req-2": None, "req-3": None}


def test_a_row_that_cannot_be_written_at_all_is_dropped_and_counted():
    recorder.metric_record(**row(1))
    recorder.metric_record(**{**row(2), "status": None})  # NOT NULL
    recorder.metric_record(**row(3))
    before = recorder.METRICS.dropped
    assert recorder.metrics_flush() == 2
    assert set(QueryMetric.objects.values_list("request_id", flat=True)) == {"req-1", "req-3"}
    assert recorder.METRICS.dropped - before == 1


def test_a_batch_that_fails_for_a_reason_of_ours_is_dropped_and_counted():
    recorder.metric_record(**{**row(1), "created_at": "not a moment"})  # rollups cannot place it
    before = recorder.METRICS.dropped
    assert recorder.metrics_flush() == 0
    assert recorder.metrics_pending() == 0
    assert recorder.METRICS.dropped - before == 1


def test_a_flush_writes_what_waited_when_it_began_and_leaves_later_arrivals_for_the_next(settings):
    """Rows that arrive while a batch is being written wait and go in one batch later, not
    one at a time as they come (which kept a writer that fell behind writing batches of one)."""
    from llmops.buffered import BufferedWriter

    settings.LLMOPS_METRICS_BATCH_SIZE = 4
    batches: list[list[int]] = []

    def write_batch(batch: list[int]) -> int:
        batches.append(batch)
        if len(batches) <= 10:  # (bounded: a flush that chased arrivals would never end)
            writer.add(100 + len(batches))  # a request finishing meanwhile
        return len(batch)

    writer = BufferedWriter("test", write_batch)
    for n in range(6):
        writer.add(n)
    assert writer.flush() == 6
    assert batches == [[0, 1, 2, 3], [4, 5]]
    assert writer.pending() == 2
    assert writer.flush() == 2
    assert batches[2] == [101, 102]
