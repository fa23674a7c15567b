"""Streaming chat over the WebSocket, with the real consumer, pipeline and channel routing."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator

from tests.conftest import flushed_metrics

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/v1/chat"


def chat(chat_id, text: str = "Hello there", **extra) -> dict:
    return {
        "type": "chat",
        "id": chat_id,
        "model": "sim-small",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def connected(asgi_app, key: str | None = None, origin: bytes | None = None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    if origin:
        headers.append((b"origin", origin))
    socket = WebsocketCommunicator(asgi_app, PATH, headers=headers)
    ok, _ = await socket.connect()
    assert ok
    return socket


async def events_until_done(socket: WebsocketCommunicator, chat_id, timeout: float = 5) -> list[dict]:
    events = []
    while True:
        event = await socket.receive_json_from(timeout=timeout)
        if event.get("id") == chat_id:
            events.append(event)
            if event["type"] in ("done", "error", "cancelled"):
                return events


async def test_a_chat_streams_deltas_then_done(asgi_app, seeded, api_key):
    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("a", simulate={"output_tokens": 4, "ttft_ms": 0, "tokens_per_s": 0}))
    events = await events_until_done(socket, "a")
    deltas = [e["text"] for e in events if e["type"] == "delta"]
    assert "".join(deltas) == "Simulated answer from the"
    done = events[-1]
    assert done["type"] == "done" and done["model"] == "sim-small" and done["cache"] == "miss"
    assert done["usage"]["completion_tokens"] == 4 and float(done["cost_usd"]) > 0
    assert done["ttft_ms"] is not None and done["latency_ms"] >= done["ttft_ms"]
    await socket.disconnect()
    [metric] = await flushed_metrics()
    assert (metric.endpoint, metric.stream, metric.status) == ("ws.chat", True, "ok")
    assert metric.ttft_ms is not None


async def test_a_browser_authenticates_with_its_first_message(asgi_app, seeded, api_key):
    socket = await connected(asgi_app, origin=b"http://127.0.0.1:8000")
    await socket.send_json_to({"type": "auth", "key": api_key})
    assert await socket.receive_json_from() == {"type": "ready"}
    await socket.send_json_to(chat(1, simulate={"output_tokens": 2}))
    assert (await events_until_done(socket, 1))[-1]["type"] == "done"
    await socket.disconnect()


@pytest.mark.parametrize("first", [chat("x"), {"type": "auth", "key": "llmops-wrong"}, {"type": "auth"}])
async def test_an_unauthenticated_socket_is_closed_with_4401_before_any_model_is_called(asgi_app, seeded, first):
    socket = await connected(asgi_app)
    await socket.send_json_to(first)
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}
    assert await flushed_metrics() == []


async def test_a_wrong_key_on_the_handshake_is_closed_with_4401(asgi_app, seeded):
    socket = await connected(asgi_app, "llmops-wrong")
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_a_page_from_another_site_cannot_open_the_socket(asgi_app, seeded, api_key):
    socket = WebsocketCommunicator(asgi_app, PATH, headers=[(b"origin", b"https://evil.example")])
    ok, _ = await socket.connect()
    assert not ok


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (json.dumps({"type": "sing"}), "unknown_type"),
        (json.dumps({"type": "chat", "model": "sim-small", "messages": []}), "missing_id"),
        (json.dumps({"type": "chat", "id": "m", "model": "sim-small"}), "invalid_request_error"),
        (json.dumps(chat("t", temperature="hot")), "invalid_request_error"),
        (json.dumps({**chat("u"), "model": "nope"}), "model_not_found"),
        (json.dumps({"type": "cancel", "id": "never"}), "unknown_id"),
    ],
)
async def test_bad_input_gets_an_error_event_and_the_socket_stays_usable(asgi_app, seeded, api_key, message, code):
    socket = await connected(asgi_app, api_key)
    await socket.send_to(text_data=message)
    error = await socket.receive_json_from()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await socket.send_json_to(chat("after", simulate={"output_tokens": 1}))
    assert (await events_until_done(socket, "after"))[-1]["type"] == "done"
    await socket.disconnect()


async def test_an_oversize_message_is_refused(asgi_app, seeded, api_key, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2048
    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("big", "x" * 5000))
    assert (await socket.receive_json_from())["code"] == "request_too_large"
    await socket.disconnect()


async def test_several_chats_run_at_once_told_apart_by_id(asgi_app, seeded, api_key):
    socket = await connected(asgi_app, api_key)
    slow = {"ttft_ms": 0, "tokens_per_s": 40, "output_tokens": 6}
    await socket.send_json_to(chat("one", "first question", simulate=slow))
    await socket.send_json_to(chat("two", "second question", simulate=slow))
    seen: dict[str, list[str]] = {"one": [], "two": []}
    done = set()
    order = []
    while len(done) < 2:
        event = await socket.receive_json_from(timeout=5)
        order.append(event["id"])
        if event["type"] == "delta":
            seen[event["id"]].append(event["text"])
        elif event["type"] == "done":
            done.add(event["id"])
    assert len(seen["one"]) == len(seen["two"]) == 6
    assert order.index("two") < max(i for i, chat_id in enumerate(order) if chat_id == "one")  # interleaved
    await socket.disconnect()


async def test_too_many_chats_on_one_socket_are_refused(asgi_app, seeded, api_key, settings):
    settings.LLMOPS_WS_MAX_CHATS = 1
    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("one", simulate={"latency_ms": 500}))
    await socket.send_json_to(chat("two"))
    error = await socket.receive_json_from()
    assert (error["id"], error["code"]) == ("two", "too_many_chats")
    assert (await events_until_done(socket, "one"))[-1]["type"] == "done"
    await socket.disconnect()


async def test_cancel_stops_the_answer_and_the_upstream_call(asgi_app, seeded, api_key):
    from llmops.upstream import InFlight

    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("c", simulate={"ttft_ms": 0, "tokens_per_s": 20, "output_tokens": 200}))
    first = await socket.receive_json_from()
    assert first["type"] == "delta"
    await socket.send_json_to({"type": "cancel", "id": "c"})
    events = await events_until_done(socket, "c")
    assert events[-1] == {"type": "cancelled", "id": "c"}
    assert InFlight.current == 0
    await socket.disconnect()
    [metric] = await flushed_metrics()
    assert metric.status == "cancelled" and 0 < metric.output_tokens < 20


async def test_a_client_that_disconnects_cancels_its_answers(asgi_app, seeded, api_key):
    from llmops.upstream import InFlight

    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("d", simulate={"ttft_ms": 0, "tokens_per_s": 20, "output_tokens": 200}))
    assert (await socket.receive_json_from())["type"] == "delta"
    await socket.disconnect()
    assert InFlight.current == 0
    [metric] = await flushed_metrics()
    # Stopped at once: 200 tokens at 20 a second were due; only the first few were generated.
    assert metric.status == "cancelled" and metric.output_tokens < 12


async def test_an_upstream_failure_is_an_error_event(asgi_app, seeded, api_key):
    socket = await connected(asgi_app, api_key)
    await socket.send_json_to(chat("f", simulate={"error_rate": 1}))
    error = (await events_until_done(socket, "f"))[-1]
    assert error["type"] == "error" and error["code"] == "upstream_error"
    await socket.send_json_to(chat("g", simulate={"output_tokens": 1}))
    assert (await events_until_done(socket, "g"))[-1]["type"] == "done"
    await socket.disconnect()


@pytest.fixture
def staff_cookie(client, transactional_db) -> bytes:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only")
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def test_the_playground_is_for_staff_only(client, seeded):
    response = client.get("/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_playground_lists_the_enabled_models(client, seeded, staff_cookie):
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<option value="sim-small">' in html and '<option value="smollm2-135m">' in html
    assert "/ws/v1/chat" in html


async def test_a_staff_session_streams_on_its_own_playground_key(asgi_app, seeded, staff_cookie):
    from llmops.models import ApiKey

    socket = WebsocketCommunicator(
        asgi_app, PATH, headers=[(b"cookie", staff_cookie), (b"origin", b"http://testserver")]
    )
    ok, _ = await socket.connect()
    assert ok
    assert await socket.receive_json_from() == {"type": "ready"}
    await socket.send_json_to(chat("p", simulate={"output_tokens": 2}))
    assert (await events_until_done(socket, "p"))[-1]["type"] == "done"
    await socket.disconnect()
    [metric] = await flushed_metrics()
    key = await ApiKey.objects.aget(pk=metric.api_key_id)
    assert key.name == "playground:staff"


async def test_the_channel_layer_of_this_profile_carries_messages(settings):
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    expected = "channels_redis" if settings.REDIS_URL else "channels.layers"
    assert type(layer).__module__.startswith(expected)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.delta", "text": "hello"})
    assert await layer.receive(channel) == {"type": "chat.delta", "text": "hello"}
