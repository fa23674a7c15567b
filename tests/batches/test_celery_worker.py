"""The production path, for real: the gateway under daphne hands each batch to the Redis
broker, and `celery -A llmops worker -B` processes (prefork pool, embedded beat) run it
against this test's PostgreSQL database. A worker killed with SIGKILL mid-batch, or only
the pool process running the batch, loses no item and answers none twice: the batch's task
comes back (redelivered, or sent again by the next worker's sweep) and its new runner takes
the dead one's items once their leases lapse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openai
import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from llmops.auth import api_key_create
from llmops.batches.executor import batches_unattended
from llmops.batches.models import Batch, BatchFile, BatchItem, BatchStatus, ItemStatus
from monitoring.models import QueryMetric
from tests.batches.conftest import batch_line, jsonl
from tests.test_live_server import Gateway

ROOT = Path(__file__).resolve().parents[2]
# A Redis database of these tests' own (the broker, and the processes' cache), emptied first.
BROKER_URL = "redis://127.0.0.1:6379/14"
TOTAL = 200
# A short lease, so that a dead runner's items are taken over within seconds; ten items at a
# time, so that when it dies some items are answered, some in flight and some not yet taken.
TAKEOVER = {"LLMOPS_BATCH_LEASE_S": "2", "LLMOPS_BATCH_RUNNER_ITEMS": "10"}


def database_url() -> str:
    """The database this test runs on (pytest-django's test database), for the processes."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("Celery workers need the PostgreSQL database of the services profile")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    return f"postgres://{quote(db['USER'] or '', safe='')}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """`celery -A llmops worker -B` in a process group of its own, so that a SIGKILL takes its
    pool's processes and its beat with it, as when its machine dies."""

    def __init__(self, env: dict[str, str], directory: Path, name: str) -> None:
        self.log_path = directory / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "llmops", "worker", "-B", "--loglevel=INFO"),
                    *("--concurrency=2", "--without-mingle", "--without-gossip", f"--hostname={name}@%h"),
                    f"--schedule={directory / f'{name}-beat'}",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while " ready." not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"the worker did not start:\n{self.log()}"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        # Whatever of its group is left (a pool process, its beat) holds database sessions.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


@pytest.fixture
def services_env(transactional_db, seeded) -> dict[str, str]:
    """The environment of the gateway and the workers: this test's database (its rows
    committed, so that other processes see them) and the tests' own Redis database."""
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=BROKER_URL,
        CELERY_BROKER_URL=BROKER_URL,
        LLMOPS_ALLOW_INSECURE_SECRET_KEY="true",
        LLMOPS_BATCH_POLL_S="0.1",
        # Beat's first sweep comes a minute after a worker starts: within a test, only the
        # next worker's start and the broker's redelivery can resume a batch.
        LLMOPS_BATCH_SWEEP_S="60",
    )
    return env


@pytest.fixture
def client(services_env, api_key):
    gateway = Gateway(services_env)
    yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0)
    gateway.stop()


@pytest.fixture
def workers(services_env, tmp_path):
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker({**services_env, **env}, tmp_path, f"w{len(started) + 1}")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def batch_submit(client: openai.OpenAI, count: int, *, latency_ms: int) -> str:
    """A batch of `count` distinct questions to sim-small (none answered from the cache),
    uploaded and created through the gateway's API as a client does."""
    lines = [
        batch_line(f"req-{i}", f"Question {i}", max_tokens=8, simulate={"latency_ms": latency_ms * (2 + i % 3) // 3})
        for i in range(count)
    ]
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id


def batch_waited(batch_id: str, done: Callable[[Batch], bool], *, timeout: float, workers: list[Worker]) -> Batch:
    """The batch once `done(batch)` holds, read from the database every few milliseconds."""
    deadline = time.monotonic() + timeout
    while not done(batch := Batch.objects.get(id=batch_id)):
        logs = "\n".join(worker.log()[-3000:] for worker in workers)
        assert time.monotonic() < deadline, f"batch {batch.status}, {batch.completed} completed\n{logs}"
        time.sleep(0.02)
    return batch


def half_answered_with_items_in_flight(batch: Batch) -> bool:
    return (
        batch.completed >= TOTAL // 2
        and BatchItem.objects.filter(batch_id=batch.id, status=ItemStatus.RUNNING).exclude(lease_owner="").exists()
    )


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def ended_once_each(client: openai.OpenAI, batch_id: str) -> dict[str, BatchItem]:
    """The ended batch as the API shows it, checked: completed, every custom_id once in its
    output, none in an error file, every item answered; its items by custom_id."""
    ended = client.batches.retrieve(batch_id)
    assert ended.status == "completed", ended.errors
    counts = ended.request_counts
    assert (counts.total, counts.completed, counts.failed) == (TOTAL, TOTAL, 0)
    output = file_lines(client, ended.output_file_id)
    assert ended.error_file_id is None
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(TOTAL))
    items = {item.custom_id: item for item in BatchItem.objects.filter(batch_id=batch_id)}
    assert {item.status for item in items.values()} == {ItemStatus.SUCCEEDED}
    assert all(item.lease_owner == "" and item.lease_until is None for item in items.values())
    # The output holds the answer that was recorded, once: no item was answered twice.
    assert {line["custom_id"]: line["response"]["request_id"] for line in output} == {
        cid: item.request_id for cid, item in items.items()
    }
    return items


@pytest.mark.services
@pytest.mark.live_server
def test_a_worker_runs_a_batch_from_the_api_to_its_output_file_and_metrics(client, workers):
    # No background writer in the worker: only the task's own flush can write the metrics.
    worker = workers(LLMOPS_METRICS_FLUSH_INTERVAL_S="0")
    batch_id = batch_submit(client, 50, latency_ms=20)

    # Polled as a client polls: every request hands its database connection back.
    deadline = time.monotonic() + 30
    while (ended := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {ended.status}\n{worker.log()[-3000:]}"
        time.sleep(0.1)
    assert ended.status == "completed", ended.errors
    assert (ended.request_counts.total, ended.request_counts.completed, ended.request_counts.failed) == (50, 50, 0)
    assert ended.error_file_id is None
    output = file_lines(client, ended.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(50))
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)

    # The task ends just after the batch does, and writes every item's metric as it ends.
    deadline = time.monotonic() + 10
    while QueryMetric.objects.filter(endpoint="batch").count() < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics = list(QueryMetric.objects.filter(endpoint="batch"))
    assert len(metrics) == 50, worker.log()[-3000:]
    assert {m.request_id for m in metrics} == {line["response"]["request_id"] for line in output}
    assert {m.model for m in metrics} == {"sim-small"}


@pytest.mark.services
@pytest.mark.live_server
def test_a_batch_whose_worker_is_killed_completes_on_the_next_with_no_item_lost_or_answered_twice(client, workers):
    first = workers(**TAKEOVER)
    batch_id = batch_submit(client, TOTAL, latency_ms=200)
    batch_waited(batch_id, half_answered_with_items_in_flight, timeout=30, workers=[first])
    first.kill()

    # What the dead worker left, which nothing changes until the next worker starts.
    left = {item.custom_id: item for item in BatchItem.objects.filter(batch_id=batch_id)}
    answered = {cid for cid, item in left.items() if item.status == ItemStatus.SUCCEEDED}
    in_flight = {cid for cid, item in left.items() if item.status == ItemStatus.RUNNING}
    untaken = {cid for cid, item in left.items() if item.status == ItemStatus.QUEUED}
    assert len(left) == TOTAL and answered | in_flight | untaken == set(left)
    assert TOTAL // 2 <= len(answered) < TOTAL and in_flight and untaken
    assert {left[cid].attempts for cid in answered | in_flight} == {1}
    assert {left[cid].attempts for cid in untaken} == {0}

    second = workers(**TAKEOVER)
    batch_waited(batch_id, lambda batch: batch.ended, timeout=40, workers=[first, second])
    items = ended_once_each(client, batch_id)
    # An answer recorded before the kill is the one kept; only the items in flight ran twice.
    assert all(items[cid].request_id == left[cid].request_id for cid in answered)
    assert {cid: item.attempts for cid, item in items.items()} == {cid: 2 if cid in in_flight else 1 for cid in left}


@pytest.mark.services
@pytest.mark.live_server
def test_a_batch_whose_pool_process_is_killed_is_redelivered_to_another(client, workers):
    worker = workers(**TAKEOVER)
    batch_id = batch_submit(client, TOTAL, latency_ms=200)
    batch_waited(batch_id, half_answered_with_items_in_flight, timeout=30, workers=[worker])
    # The runner's name holds its process id: that pool process alone dies, its worker lives.
    running = BatchItem.objects.filter(batch_id=batch_id, status=ItemStatus.RUNNING).exclude(lease_owner="")
    owner = running.values_list("lease_owner", flat=True).first()
    os.kill(int(owner.split(":")[1]), signal.SIGKILL)
    time.sleep(0.2)
    # Its items stay leased to it until the lease lapses: those are the ones it had in flight.
    in_flight = set(BatchItem.objects.filter(batch_id=batch_id, lease_owner=owner).values_list("custom_id", flat=True))
    assert in_flight

    batch_waited(batch_id, lambda batch: batch.ended, timeout=40, workers=[worker])
    items = ended_once_each(client, batch_id)
    assert {cid: item.attempts for cid, item in items.items()} == {cid: 2 if cid in in_flight else 1 for cid in items}
    # The broker gave the same task (acknowledged late, rejected on the lost process) again.
    log = worker.log()
    assert "WorkerLostError" in log, log[-3000:]
    received = [line for line in log.splitlines() if "llmops.batches.run[" in line and line.endswith(" received")]
    assert len(received) == 2 and len({line.split("[")[-1].split("]")[0] for line in received}) == 1, log[-3000:]


def test_the_sweep_leaves_a_new_batch_to_the_task_sent_for_it_until_that_task_is_a_lease_late(db, settings):
    settings.LLMOPS_BATCH_LEASE_S = 60
    key, _ = api_key_create(name="sweep")
    stored = BatchFile.objects.create(api_key=key, purpose="batch", filename="requests.jsonl")
    now = timezone.now()
    fields = {"api_key": key, "input_file": stored, "endpoint": "/v1/chat/completions", "expires_at": now}
    just_created = Batch.objects.create(**fields, created_at=now - timedelta(seconds=5))
    waited_a_lease = Batch.objects.create(**fields, created_at=now - timedelta(seconds=90))
    runner_died = Batch.objects.create(
        **fields, status=BatchStatus.IN_PROGRESS, created_at=now, heartbeat_at=now - timedelta(seconds=90)
    )
    runner_alive = Batch.objects.create(**fields, status=BatchStatus.IN_PROGRESS, created_at=now, heartbeat_at=now)
    Batch.objects.create(**fields, status=BatchStatus.COMPLETED, created_at=now - timedelta(seconds=90))

    assert set(batches_unattended(dispatched=True)) == {waited_a_lease.id, runner_died.id}
    # The embedded executor, which runs what it finds itself, starts a new batch at once.
    assert set(batches_unattended()) == {just_created.id, waited_a_lease.id, runner_died.id}
    # A worker that starts gives a runner to every batch not ended.
    assert set(batches_unattended(stale_only=False, dispatched=True)) == {
        just_created.id,
        waited_a_lease.id,
        runner_died.id,
        runner_alive.id,
    }
