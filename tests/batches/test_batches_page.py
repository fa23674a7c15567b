"""The batches page for staff: drawn by the server with every key's batches, then kept
current over ws/batches by the progress the engine publishes as it really runs a batch."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.utils import timezone

from llmops.auth import api_key_create
from llmops.batches.files import file_create
from llmops.batches.models import Batch, BatchStatus
from llmops.batches.pages import time_left, usd
from llmops.batches.progress import batch_progress
from llmops.batches.runner import batch_run
from llmops.batches.services import batch_create
from tests.batches.conftest import batch_line, jsonl

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/batches"
PAGE = "/batches/"


@pytest.fixture(autouse=True)
def _nothing_else_runs_batches(settings):
    # The tests run each batch themselves, in their own loop, and watch what it publishes.
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    settings.LLMOPS_BATCH_POLL_S = 0.05


@pytest.fixture
def staff_client(client, transactional_db):
    client.force_login(get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only"))
    return client


@pytest.fixture
def member_client(client, transactional_db):
    """Signed in, but an app developer, not staff."""
    client.force_login(get_user_model().objects.create_user("app-dev", "dev@example.com", "pw-for-tests-only"))
    return client


def session_cookie(client) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), (b"origin", b"http://testserver")]


def batch_submitted(key_name: str, count: int = 3) -> Batch:
    """A batch as a client submits one: its file uploaded, then the batch created."""
    key, _ = api_key_create(name=key_name)
    lines = [batch_line(f"{key_name}-{i}", f"{key_name} question {i}", max_tokens=8) for i in range(count)]
    stored = file_create(api_key_id=key.id, upload=io.BytesIO(jsonl(lines)), filename="requests.jsonl", purpose="batch")
    return batch_create(
        api_key_id=key.id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def row_html(html: str, batch_id: str) -> str:
    found = re.search(rf'<tr data-batch="{batch_id}".*?</tr>', html, re.S)
    assert found, f"no row for {batch_id}"
    return found[0]


def test_staff_see_every_keys_batches_newest_first_with_their_numbers(staff_client, seeded):
    older = batch_submitted("mobile-app")
    running = batch_submitted("search-indexer")
    # Where a runner stands halfway (the engine gets there on its own; the test needs it still).
    Batch.objects.filter(id=running.id).update(
        status=BatchStatus.IN_PROGRESS,
        model="sim-small",
        total=20,
        completed=7,
        failed=1,
        cost_usd=Decimal("0.0001234567"),
        estimated_cost_usd=Decimal("0.0003"),
        in_progress_at=timezone.now() - timedelta(seconds=40),
    )
    page = staff_client.get(PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index(f'data-batch="{running.id}"') < html.index(f'data-batch="{older.id}"')
    row = row_html(html, running.id)
    assert '<td class="key">search-indexer</td>' in row
    assert '<span class="badge status-in_progress">in_progress</span>' in row
    assert '<td class="model">sim-small</td>' in row and '<td class="execution">gateway</td>' in row
    assert 'aria-valuenow="40"' in row and '<span class="percent">40%</span>' in row  # 8 of 20
    assert '<span class="completed">7</span>' in row and '<span class="failed">1</span>' in row
    assert '<span class="total">20</span>' in row
    assert "$0.000123</span>" in row and "of ~$0.000300 estimated" in row
    # 40 s for 8 items: 12 more take about a minute.
    eta = re.search(r'<td class="eta">1 min (\d+) s</td>', row)
    assert eta and int(eta[1]) < 5, row
    assert f'href="/admin/llmops/batch/{quote(running.id)}/change/"' in row
    row = row_html(html, older.id)
    assert '<td class="key">mobile-app</td>' in row and "validating" in row
    assert '<td class="eta">—</td>' in row and '<span class="percent">0%</span>' in row
    assert '<div id="empty" hidden>' in html and '<table id="batches">' in html
    assert "/ws/batches" in html


def test_a_batch_whose_id_reads_as_an_escape_opens_from_its_link(staff_client, seeded):
    # The admin reads "_" and two hex digits in a key as an escaped character ("_23" is "#"),
    # which a random id begins with once in about forty batches.
    submitted = batch_submitted("nightly-eval")
    misread = f"batch_2340{submitted.id[10:]}"
    Batch.objects.filter(id=submitted.id).update(id=misread)
    link = re.search(r'href="([^"]+)"', row_html(staff_client.get(PAGE).content.decode(), misread))[1]
    page = staff_client.get(link)
    assert page.status_code == 200 and misread in page.content.decode()


def test_staff_see_an_empty_state_when_there_are_no_batches(staff_client):
    html = staff_client.get(PAGE).content.decode()
    assert '<div id="empty">' in html and "No batches yet" in html
    assert '<table id="batches" hidden>' in html
    assert "<tr data-batch=" not in html


def test_the_page_sends_visitors_who_are_not_signed_in_to_the_login(client, transactional_db):
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"] == f"/admin/login/?next={PAGE}"


def test_the_page_is_not_for_signed_in_users_who_are_not_staff(member_client):
    response = member_client.get(PAGE)
    assert response.status_code == 302 and response["Location"] == f"/admin/login/?next={PAGE}"


def test_live_rows_are_formatted_as_the_server_formats_them():
    # The page's script mirrors these: what they print is what a live row must print.
    assert usd("0.0001234567") == "0.000123" and usd("0.0000005000") == "0.000001"
    assert usd("12.5") == "12.500000" and usd(None) is None
    assert [time_left(s) for s in (None, 0.0, 24.1, 61.0, 3725.0)] == ["—", "0 s", "25 s", "1 min 1 s", "1 h 2 min"]


async def test_the_feed_refuses_a_socket_without_a_session(asgi_app):
    socket = WebsocketCommunicator(asgi_app, PATH, headers=[(b"origin", b"http://testserver")])
    ok, _ = await socket.connect()
    assert ok
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_the_feed_refuses_a_signed_in_user_who_is_not_staff(asgi_app, member_client):
    socket = WebsocketCommunicator(asgi_app, PATH, headers=session_cookie(member_client))
    ok, _ = await socket.connect()
    assert ok
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4403}


async def test_the_feed_refuses_a_staff_session_sent_from_another_site(asgi_app, staff_client):
    headers = [session_cookie(staff_client)[0], (b"origin", b"https://elsewhere.example")]
    socket = WebsocketCommunicator(asgi_app, PATH, headers=headers)
    ok, _ = await socket.connect()
    assert not ok


async def test_a_staff_socket_receives_a_batchs_progress_as_the_engine_runs_it(asgi_app, seeded, staff_client):
    socket = WebsocketCommunicator(asgi_app, PATH, headers=session_cookie(staff_client))
    ok, _ = await socket.connect()
    assert ok
    try:
        assert await socket.receive_json_from() == {"type": "batch.snapshot", "batches": []}
        # Submitted after the page's socket joined: a row the page must add when it hears of it.
        batch = await sync_to_async(batch_submitted)("nightly-eval", 4)
        assert await batch_run(batch.id) == "ended"
        seen = []
        while not seen or seen[-1]["status"] != "completed":
            event = await socket.receive_json_from(timeout=5)
            assert event["type"] == "batch.progress"
            seen.append(event["batch"])
        ended = await Batch.objects.aget(id=batch.id)
        assert seen[-1] == {**batch_progress(ended), "api_key": "nightly-eval"}
        assert (seen[-1]["total"], seen[-1]["completed"], seen[-1]["failed"]) == (4, 4, 0)
        assert Decimal(seen[-1]["cost_usd"]) > 0 and seen[-1]["estimated_cost_usd"] is not None
        assert "in_progress" in [b["status"] for b in seen] and {b["id"] for b in seen} == {batch.id}
        done = [b["completed"] + b["failed"] for b in seen]
        assert done == sorted(done) and all(b["api_key"] == "nightly-eval" for b in seen)
    finally:
        await socket.disconnect()

    # A page opened (or reconnected) later is brought up to date as it joins.
    late = WebsocketCommunicator(asgi_app, PATH, headers=session_cookie(staff_client))
    ok, _ = await late.connect()
    assert ok
    try:
        snapshot = await late.receive_json_from()
        assert snapshot == {"type": "batch.snapshot", "batches": [seen[-1]]}
    finally:
        await late.disconnect()
